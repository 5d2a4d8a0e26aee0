//! Starts a moto server (the local AWS) on loopback and waits until it answers.

use std::io::Write;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::BoxError;

/// A running moto server. It stops when this is dropped, and also when the owning
/// process dies (it watches our end of a pipe), so no server outlives a test run.
pub struct Moto {
    child: Child,
    pub port: u16,
}

impl Moto {
    /// The endpoint to use as `AWS_ENDPOINT_URL`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Starts moto server through `infra/moto_local.py`, with the Python beside
    /// `moto_server` (from `PUSHGATE_MOTO_SERVER`, else `.pushgate/venv/bin`)
    /// on `port` (0 = a free one).
    pub fn start(port: u16) -> Result<Moto, BoxError> {
        let port = if port == 0 { free_port()? } else { port };
        let bin = server_binary();
        if !bin.exists() {
            return Err(format!(
                "{} not found: run `make venv` (or set PUSHGATE_MOTO_SERVER)",
                bin.display()
            )
            .into());
        }
        // moto_server's own interpreter runs our launcher (DynamoDB made atomic).
        let python = bin.with_file_name("python3");
        let launcher = crate::workspace_root().join("infra/moto_local.py");
        // `read` returns when our end of stdin closes, i.e. when this process exits.
        let script = format!(
            "'{}' '{}' -H 127.0.0.1 -p {port} >/dev/null 2>&1 & pid=$!; read _ignored; kill $pid 2>/dev/null; wait $pid 2>/dev/null",
            python.display(),
            launcher.display()
        );
        let child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let moto = Moto { child, port };
        moto.wait_ready(Duration::from_secs(60))?;
        Ok(moto)
    }

    fn wait_ready(&self, limit: Duration) -> Result<(), BoxError> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) {
                let _ = s.write_all(b"GET /moto-api/ HTTP/1.0\r\n\r\n");
                let mut buf = [0u8; 12];
                if std::io::Read::read(&mut s, &mut buf).is_ok_and(|n| n >= 12 && buf.starts_with(b"HTTP/1.")) {
                    return Ok(());
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(format!("moto server did not answer on port {} within {:?}", self.port, limit).into())
    }

    /// Every model moto holds (`/moto-api/data.json`), for assertions on what was sent.
    pub async fn data(&self) -> Result<serde_json::Value, BoxError> {
        Ok(reqwest::get(format!("{}/moto-api/data.json", self.endpoint()))
            .await?
            .json()
            .await?)
    }

    /// Emails moto's SES accepted, as (destinations, subject) pairs.
    pub async fn sent_emails(&self) -> Result<Vec<serde_json::Value>, BoxError> {
        let data = self.data().await?;
        Ok(data
            .pointer("/ses/Message")
            .and_then(|v| v.as_array())
            .cloned()
            .unwrap_or_default())
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

fn server_binary() -> PathBuf {
    std::env::var_os("PUSHGATE_MOTO_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::workspace_root().join(".pushgate/venv/bin/moto_server"))
}

/// A free loopback port.
pub fn free_port() -> Result<u16, BoxError> {
    Ok(TcpListener::bind(("127.0.0.1", 0))?.local_addr()?.port())
}
