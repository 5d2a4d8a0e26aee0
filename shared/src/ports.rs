//! Ports: the small traits through which the dispatcher's shell carries out its
//! verdicts, one per concern, so that the handler can be driven by fakes in unit tests
//! and by the DynamoDB and SQS adapters (`store/`, `queue`) in production.

use crate::message::{Message, Status};

/// Result of creating a record.
#[derive(Debug)]
pub enum Created {
    Created,
    /// A live record already holds this key; it is returned as stored.
    Exists(Box<Message>),
}

/// Result of claiming a record for sending.
#[derive(Debug)]
pub enum Claim {
    /// The caller holds the lease. `takeover` is true when a previous claim's lease
    /// expired mid-send: whether that send reached the provider is unknown.
    Claimed { message: Box<Message>, takeover: bool },
    /// Already past sending (sent, delivered, failed…): acknowledge without sending.
    Done(Status),
    /// Another worker holds a live lease: try again later.
    Leased,
    /// No such record (e.g. ingest rolled it back): nothing to send.
    Missing,
}

/// Result of charging a message to its app's balance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Charge {
    /// One unit taken, and the message marked paid.
    Charged,
    /// The balance is spent: nothing taken.
    Exhausted,
    /// The caller no longer holds the lease, or the message was already paid: nothing taken.
    NotHeld,
}
