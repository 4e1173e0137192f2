//! The fault-injection scenarios of docs/RELIABILITY.md in their quick form: each injects its
//! faults, prints what it injected and what the oracle found, and fails on any report lost,
//! doubled or wrong, any process that crashed, or any behaviour the scenario expects and did
//! not see. `duban-faults` runs the full forms and the soak.

use duban_e2e::faults::{Size, scenarios};

fn quick(name: &str) {
    let (_, scenario) = scenarios::ALL
        .iter()
        .find(|(n, _)| *n == name)
        .expect("a scenario of that name");
    scenario(Size::Quick).assert_clean();
}

#[test]
fn a_slow_stalling_resetting_link_delays_and_never_loses_or_doubles() {
    quick("link");
}

#[test]
fn postgres_restarted_and_down_for_a_while_loses_nothing() {
    quick("postgres-restart");
}

#[test]
fn two_replicas_racing_one_killed_store_one_copy_of_everything() {
    quick("replicas");
}

#[test]
fn a_thousand_units_returning_at_once_are_paced_and_lose_nothing() {
    quick("returning-agents");
}

#[test]
fn sigterm_keeps_the_outbox_in_an_outage_and_drains_it_when_healthy() {
    quick("sigterm");
}

#[test]
fn an_agent_clock_an_hour_off_loses_nothing() {
    quick("clock");
}

#[test]
fn the_agents_disk_full_refuses_collection_and_resumes() {
    quick("agent-disk-full");
}

#[test]
fn the_aggregators_disk_full_answers_unavailable_and_recovers() {
    quick("aggregator-disk-full");
}

#[test]
fn a_damaged_database_is_refused_at_start() {
    quick("corrupt-database");
}

/// Found by the link scenario: an agent whose connection was black-holed (accepted, never
/// answered, never closed: a middlebox that dropped it silently) retried on that same
/// connection for ever, long after the link was back. Each retry now goes on a new one.
#[test]
fn an_agent_whose_connection_was_black_holed_delivers_once_the_link_is_back() {
    use duban_e2e::faults::field::FieldAgent;
    use duban_e2e::faults::oracle::check_agent;
    use duban_e2e::faults::proxy::{FaultProxy, LinkFault};
    use duban_e2e::faults::{Stage, eventually};
    use std::time::Duration;

    let stage = Stage::new(1, None);
    let aggregator = stage.start(&[]);
    let proxy = FaultProxy::start(aggregator.grpc);
    proxy.set(LinkFault::BlackHole);
    let agent = FieldAgent::new(
        &stage,
        0,
        &format!("http://{}", proxy.addr),
        "timeout = \"1s\"",
        "",
    );
    let _daemon = agent.spawn(&[]);
    assert!(
        eventually(Duration::from_secs(30), || {
            agent.setup.log().matches("delivery failed").count() >= 2
        }),
        "{}",
        agent.setup.log()
    );
    proxy.set(LinkFault::None);
    let expected = agent.expected();
    let delivered = eventually(Duration::from_secs(60), || {
        check_agent(&stage.url, &agent.setup, &expected, &mut Vec::new()).is_empty()
    });
    let problems = check_agent(&stage.url, &agent.setup, &expected, &mut Vec::new());
    assert!(
        delivered && problems.is_empty(),
        "{problems:?}\n{}",
        agent.setup.log()
    );
}
