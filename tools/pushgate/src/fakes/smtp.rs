//! A fake SMTP relay (RFC 5321 subset, plain TCP, no TLS) for the SMTP email provider:
//! greeting, EHLO/HELO (advertising `AUTH PLAIN LOGIN`, `8BITMIME`, `SMTPUTF8`, no
//! `STARTTLS`), AUTH PLAIN/LOGIN against [`USERNAME`]/[`PASSWORD`], MAIL FROM, RCPT TO,
//! DATA (until CRLF.CRLF, dot-unstuffed), RSET, NOOP, QUIT. Unauthenticated clients may
//! send too (as to a local relay); each mail records whether its session authenticated.
//!
//! Magic recipients make it answer the provider's error paths:
//! - [`BUSY_RCPT`]: `450 4.2.1` at RCPT (transient: the mail was not taken);
//! - [`THROTTLED_RCPT`]: `451 4.7.1 … rate limit exceeded` at RCPT;
//! - [`REJECTED_RCPT`]: `550 5.1.1` at RCPT (mailbox unavailable);
//! - [`SILENT_RCPT`]: the message is received (and recorded) but the final reply to DATA
//!   never comes, like a connection lost after the message was sent;
//! - wrong credentials: `535 5.7.8`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use crate::BoxError;

/// The account the fake accepts.
pub const USERNAME: &str = "relay-user";
pub const PASSWORD: &str = "relay-password";
/// Answered `450 4.2.1 Mailbox busy` at RCPT.
pub const BUSY_RCPT: &str = "busy@smtp.test";
/// Answered `451 4.7.1 Rate limit exceeded` at RCPT.
pub const THROTTLED_RCPT: &str = "throttled@smtp.test";
/// Answered `550 5.1.1 Mailbox unavailable` at RCPT.
pub const REJECTED_RCPT: &str = "nobody@smtp.test";
/// Accepted, but the reply to the end of DATA never comes.
pub const SILENT_RCPT: &str = "silent@smtp.test";

/// Longest command line or message accepted (bytes).
const MAX_LINE: usize = 64 * 1024;
const MAX_MESSAGE: usize = 10 * 1024 * 1024;

/// One message the fake took (or, for [`SILENT_RCPT`], received without answering).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedMail {
    /// The MAIL FROM address (without angle brackets).
    pub from: String,
    /// The accepted RCPT TO addresses.
    pub to: Vec<String>,
    /// The message as transmitted (headers and body, dot-unstuffed, CRLF line ends).
    pub data: String,
    /// Whether the session had authenticated.
    pub authenticated: bool,
}

/// The running fake.
#[derive(Clone)]
pub struct SmtpFake {
    pub addr: SocketAddr,
    mails: Arc<Mutex<Vec<ReceivedMail>>>,
    connections: Arc<AtomicUsize>,
}

impl SmtpFake {
    /// Every message received so far.
    pub fn received(&self) -> Vec<ReceivedMail> {
        self.mails.lock().map(|m| m.clone()).unwrap_or_default()
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// Serves the fake on `addr` (port 0 = a free one) until the runtime stops.
pub async fn start(addr: SocketAddr) -> Result<SmtpFake, BoxError> {
    let listener = TcpListener::bind(addr).await?;
    let fake = SmtpFake {
        addr: listener.local_addr()?,
        mails: Arc::default(),
        connections: Arc::default(),
    };
    let state = fake.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            state.connections.fetch_add(1, Ordering::SeqCst);
            let mails = state.mails.clone();
            tokio::spawn(async move {
                let _ = Session::new(stream, mails).run().await;
            });
        }
    });
    Ok(fake)
}

/// One client connection.
struct Session {
    reader: BufReader<tokio::net::tcp::OwnedReadHalf>,
    writer: tokio::net::tcp::OwnedWriteHalf,
    mails: Arc<Mutex<Vec<ReceivedMail>>>,
    authenticated: bool,
    from: Option<String>,
    to: Vec<String>,
}

type Io<T> = Result<T, std::io::Error>;

impl Session {
    fn new(stream: TcpStream, mails: Arc<Mutex<Vec<ReceivedMail>>>) -> Self {
        let (r, w) = stream.into_split();
        Self {
            reader: BufReader::new(r),
            writer: w,
            mails,
            authenticated: false,
            from: None,
            to: Vec::new(),
        }
    }

    async fn reply(&mut self, text: &str) -> Io<()> {
        self.writer.write_all(text.as_bytes()).await?;
        self.writer.write_all(b"\r\n").await?;
        self.writer.flush().await
    }

    /// One line without its CRLF; `None` at end of stream or on an over-long line.
    async fn line(&mut self) -> Io<Option<String>> {
        let mut buf = Vec::new();
        let n = (&mut self.reader)
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut buf)
            .await?;
        if n == 0 || !buf.ends_with(b"\n") {
            return Ok(None);
        }
        while buf.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            buf.pop();
        }
        Ok(Some(String::from_utf8_lossy(&buf).into_owned()))
    }

    fn reset(&mut self) {
        self.from = None;
        self.to.clear();
    }

    async fn run(mut self) -> Io<()> {
        self.reply("220 fake.smtp.test ESMTP Pushgate fake").await?;
        while let Some(line) = self.line().await? {
            let (verb, arg) = match line.split_once(' ') {
                Some((v, a)) => (v.to_ascii_uppercase(), a.trim().to_string()),
                None => (line.trim().to_ascii_uppercase(), String::new()),
            };
            match verb.as_str() {
                "EHLO" => {
                    self.reset();
                    self.reply("250-fake.smtp.test greets you").await?;
                    self.reply("250-AUTH PLAIN LOGIN").await?;
                    self.reply("250-8BITMIME").await?;
                    self.reply("250 SMTPUTF8").await?;
                }
                "HELO" => {
                    self.reset();
                    self.reply("250 fake.smtp.test").await?;
                }
                "AUTH" => self.auth(&arg).await?,
                "MAIL" => match path(&arg, "FROM:") {
                    Some(from) => {
                        self.reset();
                        self.from = Some(from);
                        self.reply("250 2.1.0 OK").await?;
                    }
                    None => self.reply("501 5.5.4 Syntax: MAIL FROM:<address>").await?,
                },
                "RCPT" => self.rcpt(&arg).await?,
                "DATA" => {
                    if !self.data().await? {
                        return Ok(());
                    }
                }
                "RSET" => {
                    self.reset();
                    self.reply("250 2.0.0 OK").await?;
                }
                "NOOP" => self.reply("250 2.0.0 OK").await?,
                "QUIT" => {
                    self.reply("221 2.0.0 Bye").await?;
                    return Ok(());
                }
                "STARTTLS" => self.reply("502 5.5.1 STARTTLS not offered").await?,
                _ => self.reply("500 5.5.2 Command not recognized").await?,
            }
        }
        Ok(())
    }

    async fn auth(&mut self, arg: &str) -> Io<()> {
        if self.authenticated {
            return self.reply("503 5.5.1 Already authenticated").await;
        }
        let mut parts = arg.split_whitespace();
        let mechanism = parts.next().unwrap_or_default().to_ascii_uppercase();
        let initial = parts.next().map(str::to_string);
        let ok = match mechanism.as_str() {
            "PLAIN" => {
                let response = match initial {
                    Some(r) => r,
                    None => {
                        self.reply("334 ").await?;
                        self.line().await?.unwrap_or_default()
                    }
                };
                // authzid NUL authcid NUL password
                let decoded = decode(&response);
                let mut fields = decoded.split(|b| *b == 0);
                let _authzid = fields.next();
                let user = fields.next().unwrap_or_default();
                let pass = fields.next().unwrap_or_default();
                user == USERNAME.as_bytes() && pass == PASSWORD.as_bytes()
            }
            "LOGIN" => {
                let user = match initial {
                    Some(u) => decode(&u),
                    None => {
                        self.reply("334 VXNlcm5hbWU6").await?; // "Username:"
                        decode(&self.line().await?.unwrap_or_default())
                    }
                };
                self.reply("334 UGFzc3dvcmQ6").await?; // "Password:"
                let pass = decode(&self.line().await?.unwrap_or_default());
                user == USERNAME.as_bytes() && pass == PASSWORD.as_bytes()
            }
            _ => return self.reply("504 5.5.4 Unrecognized authentication type").await,
        };
        if ok {
            self.authenticated = true;
            self.reply("235 2.7.0 Authentication successful").await
        } else {
            self.reply("535 5.7.8 Authentication credentials invalid").await
        }
    }

    async fn rcpt(&mut self, arg: &str) -> Io<()> {
        if self.from.is_none() {
            return self.reply("503 5.5.1 Need MAIL command").await;
        }
        let Some(to) = path(arg, "TO:") else {
            return self.reply("501 5.5.4 Syntax: RCPT TO:<address>").await;
        };
        match to.to_ascii_lowercase().as_str() {
            BUSY_RCPT => self.reply("450 4.2.1 Mailbox busy, try again later").await,
            THROTTLED_RCPT => self.reply("451 4.7.1 Rate limit exceeded, slow down").await,
            REJECTED_RCPT => self.reply("550 5.1.1 Mailbox unavailable").await,
            _ => {
                self.to.push(to);
                self.reply("250 2.1.5 OK").await
            }
        }
    }

    /// DATA: returns false when the session should end (silent recipient, lost client).
    async fn data(&mut self) -> Io<bool> {
        let Some(from) = self.from.clone() else {
            self.reply("503 5.5.1 Need MAIL command").await?;
            return Ok(true);
        };
        if self.to.is_empty() {
            self.reply("554 5.5.1 No valid recipients").await?;
            return Ok(true);
        }
        self.reply("354 End data with <CR><LF>.<CR><LF>").await?;
        let mut data = String::new();
        loop {
            let Some(line) = self.line().await? else {
                return Ok(false);
            };
            if line == "." {
                break;
            }
            let line = line.strip_prefix('.').unwrap_or(&line);
            data.push_str(line);
            data.push_str("\r\n");
            if data.len() > MAX_MESSAGE {
                self.reply("552 5.3.4 Message too big").await?;
                return Ok(false);
            }
        }
        let to = std::mem::take(&mut self.to);
        self.from = None;
        let silent = to.iter().any(|t| t.eq_ignore_ascii_case(SILENT_RCPT));
        if let Ok(mut mails) = self.mails.lock() {
            mails.push(ReceivedMail {
                from,
                to,
                data,
                authenticated: self.authenticated,
            });
        }
        if silent {
            // Hold the connection without answering until the client gives up.
            let mut sink = Vec::new();
            let _ = self.reader.read_to_end(&mut sink).await;
            return Ok(false);
        }
        let n = self.mails.lock().map(|m| m.len()).unwrap_or_default();
        self.reply(&format!("250 2.0.0 OK queued as FAKE{n:06}")).await?;
        Ok(true)
    }
}

/// The address of `FROM:<a@b> PARAMS` / `TO:<a@b>` (empty for the null sender `<>`).
fn path(arg: &str, prefix: &str) -> Option<String> {
    let rest = arg
        .get(..prefix.len())?
        .eq_ignore_ascii_case(prefix)
        .then(|| &arg[prefix.len()..])?;
    let rest = rest.trim_start();
    let inner = rest.strip_prefix('<')?;
    let end = inner.find('>')?;
    Some(inner[..end].to_string())
}

fn decode(s: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Speaks raw SMTP: `(line to send, expected reply prefix)`; `None` sends nothing.
    async fn converse(steps: &[(Option<&str>, &str)]) -> SmtpFake {
        let fake = start("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let stream = TcpStream::connect(fake.addr).await.unwrap();
        let (r, mut w) = stream.into_split();
        let mut r = BufReader::new(r);
        for (send, expect) in steps {
            if let Some(line) = send {
                w.write_all(format!("{line}\r\n").as_bytes()).await.unwrap();
            }
            if expect.is_empty() {
                continue;
            }
            let mut reply = String::new();
            loop {
                reply.clear();
                r.read_line(&mut reply).await.unwrap();
                if reply.as_bytes().get(3) != Some(&b'-') {
                    break;
                }
            }
            assert!(reply.starts_with(expect), "{send:?}: {reply:?}");
        }
        fake
    }

    #[tokio::test]
    async fn auth_login_and_dot_stuffing() {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let (user, pass) = (b64(USERNAME), b64(PASSWORD));
        let fake = converse(&[
            (None, "220"),
            (Some("EHLO client"), "250"),
            (Some("AUTH LOGIN"), "334 VXNlcm5hbWU6"),
            (Some(&user), "334 UGFzc3dvcmQ6"),
            (Some(&pass), "235"),
            (Some("MAIL FROM:<a@b.test>"), "250"),
            (Some("RCPT TO:<c@d.test>"), "250"),
            (Some("DATA"), "354"),
            (Some("Subject: x"), ""),
            (Some(""), ""),
            (Some("..leading dot"), ""),
            (Some("."), "250"),
            (Some("QUIT"), "221"),
        ])
        .await;
        let mails = fake.received();
        assert_eq!(mails.len(), 1);
        assert!(mails[0].authenticated);
        assert_eq!(mails[0].data, "Subject: x\r\n\r\n.leading dot\r\n");
    }

    #[tokio::test]
    async fn wrong_credentials_and_out_of_order_commands_are_refused() {
        let bad = base64::engine::general_purpose::STANDARD.encode(format!("\0{USERNAME}\0nope"));
        let fake = converse(&[
            (None, "220"),
            (Some("HELO client"), "250"),
            (Some(&format!("AUTH PLAIN {bad}")), "535"),
            (Some("RCPT TO:<c@d.test>"), "503"),
            (Some("MAIL FROM:<a@b.test>"), "250"),
            (Some("DATA"), "554"),
            (Some(&format!("RCPT TO:<{BUSY_RCPT}>")), "450"),
            (Some(&format!("RCPT TO:<{REJECTED_RCPT}>")), "550"),
            (Some("RSET"), "250"),
            (Some("NOOP"), "250"),
            (Some("QUIT"), "221"),
        ])
        .await;
        assert!(fake.received().is_empty());
    }

    #[test]
    fn paths() {
        assert_eq!(path("FROM:<a@b.c> BODY=8BITMIME", "FROM:").as_deref(), Some("a@b.c"));
        assert_eq!(path("to: <x@y.z>", "TO:").as_deref(), Some("x@y.z"));
        assert_eq!(path("FROM:<>", "FROM:").as_deref(), Some(""));
        assert_eq!(path("FROM:a@b.c", "FROM:"), None);
    }
}
