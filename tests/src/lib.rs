//! duban-e2e: helpers shared by the end-to-end tests in `tests/tests/`, which start the real
//! `duban-aggregator` and `duban-agent` binaries as separate processes.
