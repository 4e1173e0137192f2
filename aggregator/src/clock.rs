//! The time source, shared with the agent: see [`duban_proto::clock`].

pub use duban_proto::clock::{Clock, ManualClock, SystemClock};
