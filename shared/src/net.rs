//! Outbound-address policy for webhooks: targets on loopback, private, link-local,
//! shared (CGNAT), multicast or cloud-metadata addresses are refused unless explicitly
//! allowed (`PUSHGATE_WEBHOOK_ALLOW_PRIVATE=true`, the local dev stack). Checked twice:
//! on the URL at ingest, and on every resolved address at connect time, so DNS that
//! points a public name at a private address (or rebinds) is refused too.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use url::{Host, Url};

/// Is this address one a webhook may reach without the private-address override?
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public_v4(v4);
            }
            let seg0 = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (seg0 & 0xfe00) == 0xfc00 // unique local, incl. fd00:ec2::254 (metadata)
                || (seg0 & 0xffc0) == 0xfe80 // link-local
                || seg0 == 0x2001 && v6.segments()[1] == 0x0db8 // documentation
                || v6 == Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0xa9fe, 0xa9fe))
        }
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    !(ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local() // 169.254/16, incl. 169.254.169.254 metadata
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || o[0] == 0
        || (o[0] == 100 && (o[1] & 0xc0) == 64) // 100.64/10 shared address space
        || (o[0] == 192 && o[1] == 0 && o[2] == 0) // 192.0.0/24 IETF
        || (o[0] == 198 && (o[1] & 0xfe) == 18) // 198.18/15 benchmarking
        || o[0] >= 240)
}

/// Checks a webhook URL: http(s) only, no credentials, and (unless `allow_private`) no
/// literal private address or local host name.
pub fn check_webhook_url(raw: &str, allow_private: bool) -> Result<Url, String> {
    let url = Url::parse(raw).map_err(|_| "must be an absolute http(s) URL".to_string())?;
    if url.scheme() != "https" && url.scheme() != "http" {
        return Err("must be an http or https URL".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not carry credentials".into());
    }
    if raw.len() > 2048 {
        return Err("must be at most 2048 characters".into());
    }
    let host = url.host().ok_or_else(|| "must have a host".to_string())?;
    if !allow_private {
        let blocked = match host {
            Host::Ipv4(ip) => !is_public(IpAddr::V4(ip)),
            Host::Ipv6(ip) => !is_public(IpAddr::V6(ip)),
            Host::Domain(d) => {
                let d = d.trim_end_matches('.').to_ascii_lowercase();
                d == "localhost"
                    || d.ends_with(".localhost")
                    || d.ends_with(".internal")
                    || d == "metadata.google.internal"
            }
        };
        if blocked {
            return Err("must not point at a loopback, private, link-local or metadata address".into());
        }
    }
    Ok(url)
}

/// A DNS resolver for reqwest that drops disallowed addresses, so the connection can
/// only go to an address that passed the policy (no rebinding between check and use).
#[derive(Debug, Clone, Copy)]
pub struct GuardedResolver {
    pub allow_private: bool,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow_private = self.allow_private;
        Box::pin(async move {
            let host = name.as_str().to_string();
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| allow_private || is_public(a.ip()))
                .collect();
            if addrs.is_empty() {
                return Err(Box::new(BlockedAddress(host)) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// No address of the host is allowed.
#[derive(Debug, thiserror::Error)]
#[error("{0} resolves only to disallowed addresses")]
pub struct BlockedAddress(pub String);

/// A resolver handle ready for `reqwest::ClientBuilder::dns_resolver`.
pub fn guarded_resolver(allow_private: bool) -> Arc<GuardedResolver> {
    Arc::new(GuardedResolver { allow_private })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_addresses() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fe80::1",
            "fd00:ec2::254",
            "::ffff:127.0.0.1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["93.184.216.34", "8.8.8.8", "2606:4700::1111"] {
            assert!(is_public(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn urls_are_checked() {
        assert!(check_webhook_url("https://hooks.example.com/x", false).is_ok());
        assert!(check_webhook_url("http://[::1]:80/", false).is_err());
        assert!(check_webhook_url("http://user:pw@example.com/", false).is_err());
        assert!(check_webhook_url("http://127.0.0.1:9/", true).is_ok());
        assert!(check_webhook_url("file:///etc/passwd", true).is_err());
    }

    #[tokio::test]
    async fn resolver_refuses_names_of_private_addresses() {
        use reqwest::dns::Resolve;
        let name: reqwest::dns::Name = "localhost".parse().unwrap();
        assert!(GuardedResolver { allow_private: false }.resolve(name).await.is_err());
        let name: reqwest::dns::Name = "localhost".parse().unwrap();
        assert!(GuardedResolver { allow_private: true }.resolve(name).await.is_ok());
    }
}
