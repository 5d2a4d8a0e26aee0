//! The dispatcher's decisions, with no I/O: [`plan`] lists the ways to send a message
//! (channel × provider × account, minus those given up on), and [`attempt`] is the state
//! machine of one delivery attempt: given the message, the plan and each outcome, it
//! answers with the next thing to do, up to a verdict that ends the attempt. The handler
//! (`handlers::dispatch`) is the shell that carries these out through the ports.
//! [`receipt`] decides what a failed delivery receipt does (fall back to the next leg,
//! or not), for the receipt path (`handlers::receipt`).

pub mod attempt;
pub mod plan;
pub mod receipt;

pub use attempt::{Attempt, End, Next, Policy, Settled};
pub use plan::{Candidate, Step};
