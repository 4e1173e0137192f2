//! What a duban program takes from the machine it runs on, so that both sides (and the demo,
//! which runs both on one simulated calendar) take it the same way:
//!
//! - [`clock`]: the time, behind a trait that tests and the demo set by hand;
//! - [`cli`]: standard output and error, where a closed pipe ends the program quietly.

pub mod cli;
pub mod clock;
