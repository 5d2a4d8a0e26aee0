//! Email through an SMTP relay (the app's own account: `providers.smtp`), the second email
//! provider for failover. The message is built like SES's (subject, text and/or html as
//! `multipart/alternative`) and carries a `Message-ID` derived from our id
//! ([`message_id`]), which is the provider id: SMTP relays have no other.
//!
//! The SMTP conversation is driven step by step on lettre's connection rather than through
//! its transport, so each failure is classified by where it happened: nothing the server
//! saw before the end of `DATA` can have been delivered (retry), while a connection lost
//! after the message was sent may or may not have been accepted (ambiguous). Idle
//! authenticated connections are kept per account (host, port, security, user, password
//! digest) for the next message of a warm Lambda, checked with `NOOP` before reuse.
//!
//! Reply classes (RFC 5321 §4.2.1): 4xx means the server did not take the mail → retryable
//! (deferrable when the text says rate limit / too many); 5xx → permanent (quota when the
//! text says the account's sending quota is spent); authentication failures (535) →
//! permanent. Passwords never reach errors or logs.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use lettre::message::{Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{AsyncSmtpConnection, TlsParameters};
use lettre::transport::smtp::commands::{Data, Mail, Rcpt};
use lettre::transport::smtp::extension::{ClientId, Extension, MailBodyParameter, MailParameter};
use lettre::transport::smtp::Error as SmtpError;
use sha2::{Digest, Sha256};

use super::Provider;
use crate::apps::{AppConfig, SmtpAccount};
use crate::delivery::{Ambiguity, ErrorClass, ProviderError, Sent};
use crate::message::{Channel, Message};
use crate::net::TargetError;

/// Idle connections kept per account.
const MAX_IDLE: usize = 8;
/// Idle connections older than this are closed rather than checked: relays commonly drop
/// idle clients after a minute or so.
const MAX_IDLE_AGE: Duration = Duration::from_secs(50);
/// Bound on the courtesy `QUIT` sent when giving a connection up.
const QUIT_TIMEOUT: Duration = Duration::from_millis(500);

/// The `Message-ID` (with its angle brackets) of the email for our message `id`; also the
/// provider message id recorded for it.
pub fn message_id(id: &str) -> String {
    format!("<{id}@pushgate>")
}

/// How the connection is secured (`SmtpAccount.security`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Security {
    /// Plain TCP upgraded with `STARTTLS` (required).
    StartTls,
    /// Implicit TLS from the first byte (port 465).
    Tls,
    /// Plain TCP (local relays only).
    None,
}

impl Security {
    fn parse(s: &str) -> Option<Security> {
        match s.to_ascii_lowercase().as_str() {
            "starttls" => Some(Security::StartTls),
            "tls" | "ssl" | "smtps" => Some(Security::Tls),
            "none" | "plain" => Some(Security::None),
            _ => None,
        }
    }
}

/// What identifies a reusable connection. The password is kept as a digest only, so a
/// rotated password opens new connections.
#[derive(Clone, PartialEq, Eq, Hash)]
struct AccountKey {
    host: String,
    port: u16,
    security: Security,
    username: Option<String>,
    password_digest: [u8; 32],
}

impl AccountKey {
    fn of(account: &SmtpAccount, security: Security) -> Self {
        Self {
            host: account.host.clone(),
            port: account.port,
            security,
            username: account.username.clone(),
            password_digest: Sha256::digest(account.password.as_deref().unwrap_or_default().as_bytes()).into(),
        }
    }
}

struct Idle {
    conn: AsyncSmtpConnection,
    since: Instant,
}

/// Where in the conversation a failure happened, which decides whether the mail may have
/// been accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Connecting, greeting, EHLO, STARTTLS, AUTH: no mail yet.
    Connect,
    /// MAIL, RCPT, DATA up to the 354 go-ahead: the server holds no complete message.
    Envelope,
    /// The message and its final reply: the server may have accepted it.
    Message,
}

/// `{app}.{host}:{port}` (escaped, see [`super::key_part`]) of the app's SMTP relay: the
/// relay is the tenant's choice (often a shared one such as a mail provider's), so two
/// apps' accounts on one relay keep separate circuits and rate buckets.
pub fn account_id(app: &AppConfig, _to: &str) -> Option<String> {
    let relay = app.providers.smtp.as_ref()?;
    let origin = format!("{}:{}", relay.host.to_ascii_lowercase(), relay.port);
    Some(format!("{}.{}", super::key_part(&app.key), super::key_part(&origin)))
}

/// The SMTP provider. One per process; it caches idle connections per account.
pub struct Smtp {
    default_from: String,
    timeout: Duration,
    /// Whether relays on private addresses may be reached (see [`crate::net`]).
    allow_private: bool,
    hello: ClientId,
    idle: Mutex<HashMap<AccountKey, Vec<Idle>>>,
}

impl Smtp {
    /// `default_from` is used when the app has no `email_from`; `timeout` bounds the
    /// whole send (checking an idle connection or connecting, every command, the message
    /// and the courtesy `QUIT`): the dispatcher's lease fence allows one provider timeout
    /// per call, and a relay answering each step just in time must not stretch a send past
    /// it (another dispatcher could then take the message over and send it again).
    ///
    /// The relay's host is the tenant's choice, so it passes the same address guard as
    /// webhook targets: it is resolved, and only addresses the policy allows are
    /// connected to, unless `allow_private` (`PUSHGATE_WEBHOOK_ALLOW_PRIVATE`, the local
    /// dev stack).
    pub fn new(default_from: String, timeout: std::time::Duration, allow_private: bool) -> Self {
        Self {
            default_from,
            timeout,
            allow_private,
            hello: ClientId::default(),
            idle: Mutex::new(HashMap::new()),
        }
    }

    /// Runs one step, to end by the send's `deadline`, classifying its failure by `phase`.
    async fn step<T>(
        &self,
        phase: Phase,
        deadline: Instant,
        fut: impl Future<Output = Result<T, SmtpError>>,
    ) -> Result<T, ProviderError> {
        match tokio::time::timeout_at(deadline.into(), fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(classify(&e, phase)),
            Err(_) => Err(timed_out(phase)),
        }
    }

    /// An idle connection for `key` that still answers, if any.
    async fn take_idle(&self, key: &AccountKey, deadline: Instant) -> Option<AsyncSmtpConnection> {
        loop {
            let idle = {
                let mut map = self.idle.lock().ok()?;
                let list = map.get_mut(key)?;
                let idle = list.pop();
                if list.is_empty() {
                    map.remove(key);
                }
                idle?
            };
            if idle.since.elapsed() > MAX_IDLE_AGE {
                continue;
            }
            let mut conn = idle.conn;
            if let Ok(true) = tokio::time::timeout_at(deadline.into(), conn.test_connected()).await {
                return Some(conn);
            }
        }
    }

    fn put_idle(&self, key: AccountKey, conn: AsyncSmtpConnection) {
        if conn.has_broken() {
            return;
        }
        if let Ok(mut map) = self.idle.lock() {
            let list = map.entry(key).or_default();
            if list.len() < MAX_IDLE {
                list.push(Idle {
                    conn,
                    since: Instant::now(),
                });
            }
        }
    }

    /// Opens, secures and authenticates a connection.
    async fn connect(
        &self,
        account: &SmtpAccount,
        security: Security,
        deadline: Instant,
    ) -> Result<AsyncSmtpConnection, ProviderError> {
        let tls = |host: &str| {
            TlsParameters::new(host.to_string())
                .map_err(|_| ProviderError::new(ErrorClass::Permanent, "tls_config", "cannot set up TLS for the host"))
        };
        let implicit = match security {
            Security::Tls => Some(tls(&account.host)?),
            _ => None,
        };
        let addrs = self.allowed_addrs(account, deadline).await?;
        let mut conn = self
            .step(
                Phase::Connect,
                deadline,
                AsyncSmtpConnection::connect_tokio1(
                    addrs.as_slice(),
                    Some(deadline.saturating_duration_since(Instant::now())),
                    &self.hello,
                    implicit,
                    None,
                ),
            )
            .await?;
        if security == Security::StartTls {
            if !conn.server_info().supports_feature(Extension::StartTls) {
                quit(conn, deadline).await;
                return Err(ProviderError::new(
                    ErrorClass::Permanent,
                    "starttls_unsupported",
                    "the server does not offer STARTTLS",
                ));
            }
            let params = tls(&account.host)?;
            self.step(Phase::Connect, deadline, conn.starttls(params, &self.hello))
                .await?;
        }
        if let Some(username) = &account.username {
            let credentials = Credentials::new(username.clone(), account.password.clone().unwrap_or_default());
            let auth = self
                .step(
                    Phase::Connect,
                    deadline,
                    conn.auth(&[Mechanism::Plain, Mechanism::Login], &credentials),
                )
                .await;
            if let Err(e) = auth {
                quit(conn, deadline).await;
                return Err(e);
            }
        }
        Ok(conn)
    }

    /// The relay's addresses that the outbound-address policy allows (resolved once, so
    /// the connection goes to an address that was checked).
    async fn allowed_addrs(
        &self,
        account: &SmtpAccount,
        deadline: Instant,
    ) -> Result<Vec<std::net::SocketAddr>, ProviderError> {
        let resolved = tokio::time::timeout_at(
            deadline.into(),
            crate::net::allowed_addrs(&account.host, account.port, self.allow_private),
        )
        .await;
        match resolved {
            Ok(Ok(addrs)) => Ok(addrs),
            Ok(Err(TargetError::Blocked(_))) => Err(ProviderError::new(
                ErrorClass::Permanent,
                "target_not_allowed",
                "the SMTP host resolves to a disallowed address",
            )),
            Ok(Err(TargetError::Resolve(e))) => Err(ProviderError::new(
                ErrorClass::Retryable,
                "connect",
                format!("cannot resolve the SMTP host: {e}"),
            )),
            Err(_) => Err(timed_out(Phase::Connect)),
        }
    }

    /// MAIL, RCPT, DATA and the message on `conn`. On error the connection is spent.
    async fn transaction(
        &self,
        conn: &mut AsyncSmtpConnection,
        envelope: &lettre::address::Envelope,
        email: &[u8],
        deadline: Instant,
    ) -> Result<(), ProviderError> {
        let mut params = Vec::new();
        let non_ascii_address = envelope.from().is_some_and(|a| !AsRef::<str>::as_ref(a).is_ascii())
            || envelope.to().iter().any(|a| !AsRef::<str>::as_ref(a).is_ascii());
        if non_ascii_address {
            if !conn.server_info().supports_feature(Extension::SmtpUtfEight) {
                return Err(ProviderError::new(
                    ErrorClass::Permanent,
                    "smtputf8_unsupported",
                    "non-ASCII address but the server does not support SMTPUTF8",
                ));
            }
            params.push(MailParameter::SmtpUtfEight);
        }
        if !email.is_ascii() {
            if !conn.server_info().supports_feature(Extension::EightBitMime) {
                return Err(ProviderError::new(
                    ErrorClass::Permanent,
                    "8bitmime_unsupported",
                    "8-bit message but the server does not support 8BITMIME",
                ));
            }
            params.push(MailParameter::Body(MailBodyParameter::EightBitMime));
        }
        self.step(
            Phase::Envelope,
            deadline,
            conn.command(Mail::new(envelope.from().cloned(), params)),
        )
        .await?;
        for to in envelope.to() {
            self.step(Phase::Envelope, deadline, conn.command(Rcpt::new(to.clone(), vec![])))
                .await?;
        }
        self.step(Phase::Envelope, deadline, conn.command(Data)).await?;
        self.step(Phase::Message, deadline, conn.message(email)).await?;
        Ok(())
    }
}

/// Gives a connection up politely (`QUIT`, bounded by [`QUIT_TIMEOUT`] and the send's
/// `deadline`).
async fn quit(mut conn: AsyncSmtpConnection, deadline: Instant) {
    let by = deadline.min(Instant::now() + QUIT_TIMEOUT);
    let _ = tokio::time::timeout_at(by.into(), conn.abort()).await;
}

fn timed_out(phase: Phase) -> ProviderError {
    match phase {
        Phase::Connect => ProviderError::new(ErrorClass::Retryable, "timeout", "no answer in time while connecting"),
        Phase::Envelope => ProviderError::new(
            ErrorClass::Retryable,
            "timeout",
            "no answer in time before the message was sent",
        ),
        Phase::Message => ProviderError::new(
            ErrorClass::Ambiguous,
            "timeout",
            "no answer in time after the message was sent",
        ),
    }
}

/// Words in a 4xx reply that mean "slow down" rather than "try again".
const THROTTLE_WORDS: [&str; 7] = [
    "rate limit",
    "rate-limit",
    "ratelimit",
    "too many",
    "throttl",
    "slow down",
    "limit exceeded",
];
/// Words in a 5xx reply that mean the sending account's quota is spent (not the
/// recipient's mailbox being full).
const QUOTA_WORDS: [&str; 3] = ["sending quota", "sending limit", "daily user sending"];

/// Classifies a failed step. Reply codes decide on their own; other failures by phase.
fn classify(e: &SmtpError, phase: Phase) -> ProviderError {
    let text = std::error::Error::source(e).map(|s| s.to_string()).unwrap_or_default();
    if let Some(code) = e.status() {
        let n = u16::from(code);
        let lower = text.to_ascii_lowercase();
        let class = match n {
            400..=499 if THROTTLE_WORDS.iter().any(|w| lower.contains(w)) => ErrorClass::Deferrable,
            400..=499 => ErrorClass::Retryable,
            _ if QUOTA_WORDS.iter().any(|w| lower.contains(w)) => ErrorClass::Quota,
            _ => ErrorClass::Permanent,
        };
        let message = if text.is_empty() {
            format!("server replied {n}")
        } else {
            text
        };
        let code = match n {
            530 | 534 | 535 | 538 if phase == Phase::Connect => format!("auth_{n}"),
            _ => format!("smtp_{n}"),
        };
        return ProviderError::new(class, code, message);
    }
    if e.is_client() {
        // Refused by lettre before anything was sent (no usable AUTH mechanism, a bad
        // command argument): the same next time.
        return ProviderError::new(ErrorClass::Permanent, "client", e.to_string());
    }
    let code = if e.is_tls() {
        "tls"
    } else if e.is_timeout() {
        "timeout"
    } else {
        match phase {
            Phase::Connect => "connect",
            _ => "network",
        }
    };
    let class = match phase {
        Phase::Connect | Phase::Envelope => ErrorClass::Retryable,
        Phase::Message => ErrorClass::Ambiguous,
    };
    let message = match phase {
        Phase::Connect => format!("connection failed: {e}"),
        Phase::Envelope => format!("connection lost before the message was sent: {e}"),
        Phase::Message => format!("connection lost after the message was sent: {e}"),
    };
    ProviderError::new(class, code, message)
}

fn address(what: &str, s: &str) -> Result<Mailbox, ProviderError> {
    s.parse::<Mailbox>()
        .map_err(|e| ProviderError::new(ErrorClass::Permanent, "invalid_address", format!("{what} {s:?}: {e}")))
}

/// The RFC 5322 message for `message`: From, To, Subject, Message-ID, and text and/or
/// html (both → `multipart/alternative`).
fn build(message: &Message, from: &str) -> Result<lettre::Message, ProviderError> {
    let c = &message.content;
    let builder = lettre::Message::builder()
        .from(address("from", from)?)
        .to(address("to", &message.to)?)
        .subject(c.subject.clone().unwrap_or_default())
        .message_id(Some(message_id(&message.id)));
    let built = match (&c.text, &c.html) {
        (Some(text), Some(html)) => builder.multipart(MultiPart::alternative_plain_html(text.clone(), html.clone())),
        (None, Some(html)) => builder.singlepart(SinglePart::html(html.clone())),
        (text, None) => builder.singlepart(SinglePart::plain(text.clone().unwrap_or_default())),
    };
    built.map_err(|e| ProviderError::new(ErrorClass::Permanent, "build", e.to_string()))
}

#[async_trait::async_trait]
impl Provider for Smtp {
    /// See [`account_id`].
    fn account(&self, app: &AppConfig, to: &str) -> Option<String> {
        account_id(app, to)
    }

    fn name(&self) -> &'static str {
        "smtp"
    }

    fn channel(&self) -> Channel {
        Channel::Email
    }

    fn on_ambiguous(&self) -> Ambiguity {
        // SMTP has no idempotency: a second DATA is a second email.
        Ambiguity::MarkUnknown
    }

    async fn send(&self, message: &Message, app: &AppConfig) -> Result<Sent, ProviderError> {
        let Some(account) = &app.providers.smtp else {
            return Err(ProviderError::new(
                ErrorClass::Permanent,
                "no_account",
                "the app has no SMTP account",
            ));
        };
        let security = Security::parse(&account.security).ok_or_else(|| {
            ProviderError::new(
                ErrorClass::Permanent,
                "bad_config",
                format!("unknown SMTP security {:?} (starttls, tls or none)", account.security),
            )
        })?;
        let from = app.email_from.as_deref().unwrap_or(&self.default_from);
        let email = build(message, from)?;
        let formatted = email.formatted();

        let deadline = Instant::now() + self.timeout;
        let key = AccountKey::of(account, security);
        let mut conn = match self.take_idle(&key, deadline).await {
            Some(conn) => conn,
            None => self.connect(account, security, deadline).await?,
        };
        match self
            .transaction(&mut conn, email.envelope(), &formatted, deadline)
            .await
        {
            Ok(()) => {
                self.put_idle(key, conn);
                Ok(Sent {
                    provider_message_id: Some(message_id(&message.id)),
                    delivered: false,
                })
            }
            Err(e) => {
                // A refused transaction leaves the connection mid-way: give it up
                // (politely when the server is still talking).
                if e.code.starts_with("smtp_") {
                    quit(conn, deadline).await;
                } else {
                    drop(conn);
                }
                tracing::info!(code = %e.code, class = ?e.class, host = %account.host, "smtp send failed");
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn security_names() {
        assert_eq!(Security::parse("STARTTLS"), Some(Security::StartTls));
        assert_eq!(Security::parse("tls"), Some(Security::Tls));
        assert_eq!(Security::parse("none"), Some(Security::None));
        assert_eq!(Security::parse("maybe"), None);
    }

    #[test]
    fn timeouts_are_ambiguous_only_after_the_message() {
        assert_eq!(timed_out(Phase::Connect).class, ErrorClass::Retryable);
        assert_eq!(timed_out(Phase::Envelope).class, ErrorClass::Retryable);
        assert_eq!(timed_out(Phase::Message).class, ErrorClass::Ambiguous);
    }

    #[test]
    fn message_id_is_bracketed() {
        assert_eq!(message_id("01J"), "<01J@pushgate>");
    }
}
