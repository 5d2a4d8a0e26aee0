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
    /// A replay guard (not a message) holds this key: the signature it derives from was
    /// already used by a request that carried an `Idempotency-Key`, or was refused.
    Guarded,
}

/// Result of writing the separate replay guard of a v1-signed request that carries an
/// `Idempotency-Key` (which v1 does not sign).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureGuard {
    /// First use of this signature.
    Fresh,
    /// The signature was used before. `same_key` tells an exact repeat (same
    /// `Idempotency-Key`, a harmless idempotent retry) from a replay with the header
    /// added, changed or removed.
    Seen { same_key: bool },
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
    /// A job that came before the message's `send_at` (a duplicate, a redrive): not
    /// claimed. `scheduled`: a Scheduler schedule will queue it when due.
    Early { send_at: i64, scheduled: bool },
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

/// A port call that failed for a reason outside the domain (the store or queue is
/// unreachable, an item is malformed): the dispatcher backs off and tries again later.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PortError(pub String);

/// Giving a claimed message back without finishing it: the lease is released so the next
/// delivery of its job may claim at once, with a history note. One write covers every
/// way an attempt can end without a send: a retry after a failure, a deferral by the
/// provider, a wait for an open circuit or a balance, a park in a reserved rate slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    pub note: String,
    /// Give the attempt back: a deferral, a wait or a park is not a failed attempt.
    pub refund: bool,
    /// A rate-bucket slot reserved for the message's next attempt (`{account}@{unix ms}`);
    /// any release without one gives up whatever slot it held.
    pub slot: Option<String>,
    /// Replace the providers given up on (a new round of the plan after transient
    /// failures keeps only those given up on for good).
    pub tried: Option<Vec<String>>,
    /// When the job should be visible again.
    pub after: std::time::Duration,
}

/// The message ledger: every write of a message's lifecycle the dispatcher makes.
#[async_trait::async_trait]
pub trait Ledger: Send + Sync {
    /// Writes a new message record unless a live one holds its key (one conditional
    /// write): how a recurring schedule's occurrence becomes a message, at most once.
    async fn create(&self, message: &Message, now_ms: i64) -> Result<Created, PortError>;
    /// Takes the lease on a message (one conditional write returning the record).
    /// `charge_first`: this attempt must charge the message before any send (its app is
    /// metered), recorded so that a takeover can tell an unpaid interrupted attempt never
    /// sent ([`crate::message::Message::charge_first`]).
    async fn claim(
        &self,
        pk: &str,
        id: &str,
        owner: &str,
        now_ms: i64,
        lease_until_ms: i64,
        charge_first: bool,
    ) -> Result<Claim, PortError>;
    /// Takes one unit of the app's balance and marks the message paid, atomically.
    async fn charge(&self, pk: &str, app: &str, owner: &str) -> Result<Charge, PortError>;
    /// Records, before a send that is not the plan's first choice, where it goes (`via`)
    /// and what was given up on (`tried`, `spent`), so a takeover knows.
    async fn route_step(&self, pk: &str, owner: &str, step: &RouteStep, now_ms: i64) -> Result<(), PortError>;
    /// Gives the lease back (see [`Release`]).
    async fn release(&self, pk: &str, owner: &str, release: &Release, now_ms: i64) -> Result<bool, PortError>;
    /// Records the final outcome if the lease is still held; `refund_app` gives the
    /// app's unit back in the same write.
    async fn finish(
        &self,
        pk: &str,
        owner: &str,
        finish: crate::delivery::Finish,
        refund_app: Option<&str>,
        now_ms: i64,
    ) -> Result<bool, PortError>;
}

/// What a route step records (see [`Ledger::route_step`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteStep {
    pub via: String,
    pub tried: Vec<String>,
    pub spent: Vec<String>,
    pub notes: Vec<String>,
}

/// Circuit breakers per provider account, shared by every dispatcher instance.
#[async_trait::async_trait]
pub trait Circuits: Send + Sync {
    async fn state(&self, account: &str, now_ms: i64) -> Result<crate::shaping::Circuit, PortError>;
    /// Reports a send's outcome on the provider's side (`failed`: retryable or
    /// ambiguous); `probe` when the send was the half-open probe.
    async fn report(&self, account: &str, failed: bool, probe: bool, now_ms: i64) -> Result<(), PortError>;
}

/// Rate buckets per provider account.
#[async_trait::async_trait]
pub trait Buckets: Send + Sync {
    async fn take(
        &self,
        account: &str,
        rate: crate::shaping::Rate,
        now_ms: i64,
    ) -> Result<crate::shaping::Throttle, PortError>;
}

/// The queues the dispatcher writes to besides acknowledging.
#[async_trait::async_trait]
pub trait JobQueue: Send + Sync {
    /// Sets when each left-over job (by receipt handle) becomes visible again.
    async fn delay(&self, handles: &[(String, std::time::Duration)]) -> Result<(), PortError>;
    /// Moves a job whose attempts are spent to the dead-letter queue.
    async fn dead_letter(&self, job: &crate::message::Job) -> Result<(), PortError>;
}
