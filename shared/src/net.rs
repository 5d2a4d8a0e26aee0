//! Outbound-address policy for targets a tenant chooses (webhook URLs, SMTP relays):
//! targets on loopback, private, link-local, site-local, shared (CGNAT), multicast or
//! cloud-metadata addresses, and IPv6 forms that embed such an IPv4 address
//! (IPv4-mapped, IPv4-compatible, NAT64, 6to4, Teredo), are refused unless explicitly
//! allowed (`PUSHGATE_WEBHOOK_ALLOW_PRIVATE=true`, the local dev stack). Checked twice:
//! on the URL at ingest, and on every resolved address at connect time, so DNS that
//! points a public name at a private address (or rebinds) is refused too.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use url::{Host, Url};

/// Is this address one a tenant's target may reach without the private-address override?
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = embedded_v4(v6) {
                return is_public_v4(v4);
            }
            let seg = v6.segments();
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || seg[..6] == [0; 6] // IPv4-compatible ::a.b.c.d (deprecated; never global)
                || (seg[0] & 0xfe00) == 0xfc00 // unique local, incl. fd00:ec2::254 (metadata)
                || (seg[0] & 0xffc0) == 0xfe80 // link-local
                || (seg[0] & 0xffc0) == 0xfec0 // site-local (deprecated, still routed on some LANs)
                || seg[..3] == [0x64, 0xff9b, 1] // local-use NAT64 64:ff9b:1::/48
                || seg[0] == 0x2001 && seg[1] == 0x0db8) // documentation
        }
    }
}

/// The IPv4 address an IPv6 address stands for, for the forms that reach it:
/// IPv4-mapped `::ffff:a.b.c.d`, well-known NAT64 `64:ff9b::a.b.c.d`, 6to4
/// `2002:AABB:CCDD::/48` and Teredo `2001:0::/32` (the client address, inverted).
fn embedded_v4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    let seg = v6.segments();
    let v4 = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    if let Some(v4) = v6.to_ipv4_mapped() {
        return Some(v4);
    }
    if seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return Some(v4(seg[6], seg[7]));
    }
    if seg[0] == 0x2002 {
        return Some(v4(seg[1], seg[2]));
    }
    if seg[0] == 0x2001 && seg[1] == 0 {
        return Some(v4(!seg[6], !seg[7]));
    }
    None
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
    if url.port() == Some(0) {
        // Nothing listens on port 0: refused now, not retried until dead-lettered.
        return Err("must not use port 0".into());
    }
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

/// Resolves `host` and keeps the addresses the policy allows, with `port`, so a connection
/// can only go to an address that passed it (no rebinding between check and use).
/// [`TargetError::Blocked`] when the host has addresses but none is allowed.
pub async fn allowed_addrs(host: &str, port: u16, allow_private: bool) -> Result<Vec<SocketAddr>, TargetError> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(TargetError::Resolve)?
        .filter(|a| allow_private || is_public(a.ip()))
        .collect();
    if addrs.is_empty() {
        return Err(TargetError::Blocked(BlockedAddress(host.to_string())));
    }
    Ok(addrs)
}

/// Why a tenant's target cannot be connected to.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// The name did not resolve (possibly transient).
    #[error("cannot resolve the host: {0}")]
    Resolve(#[source] std::io::Error),
    /// It resolved only to addresses the policy refuses (permanent).
    #[error(transparent)]
    Blocked(BlockedAddress),
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
            match allowed_addrs(name.as_str(), 0, allow_private).await {
                Ok(addrs) => Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs),
                Err(TargetError::Resolve(e)) => Err(Box::new(e) as Box<dyn std::error::Error + Send + Sync>),
                Err(TargetError::Blocked(b)) => Err(Box::new(b) as Box<dyn std::error::Error + Send + Sync>),
            }
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

/// An HTTP client for targets a tenant chooses (webhooks, status event endpoints): no
/// redirects, a total timeout, the address guard, and no proxy from the environment
/// (`HTTP_PROXY`, `HTTPS_PROXY`, `ALL_PROXY`): through a proxy the guard would check the
/// proxy's address, not the target's, and the proxy could reach whatever it refuses.
pub fn guarded_client(
    timeout: std::time::Duration,
    allow_private: bool,
    user_agent: &str,
) -> Result<reqwest::Client, reqwest::Error> {
    crate::tls::http_client_builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(timeout)
        .connect_timeout(timeout.min(std::time::Duration::from_secs(3)))
        .dns_resolver(guarded_resolver(allow_private))
        .no_proxy()
        .user_agent(user_agent)
        .build()
}

/// Whether a request failed because its target resolves only to disallowed addresses.
pub fn is_blocked(e: &reqwest::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if s.downcast_ref::<BlockedAddress>().is_some() {
            return true;
        }
        source = s.source();
    }
    false
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

    /// IPv6 forms that reach a blocked IPv4 address, or are never global, are refused;
    /// the same forms around a public IPv4 address are not.
    #[test]
    fn ipv6_forms_embedding_ipv4_are_judged_by_the_ipv4_address() {
        let table: &[(&str, bool, &str)] = &[
            ("::127.0.0.1", false, "IPv4-compatible loopback"),
            ("::169.254.169.254", false, "IPv4-compatible metadata"),
            ("::8.8.8.8", false, "IPv4-compatible, deprecated even when public"),
            ("::ffff:10.0.0.1", false, "IPv4-mapped private"),
            ("::ffff:8.8.8.8", true, "IPv4-mapped public"),
            ("64:ff9b::169.254.169.254", false, "NAT64 metadata"),
            ("64:ff9b::127.0.0.1", false, "NAT64 loopback"),
            ("64:ff9b::10.1.2.3", false, "NAT64 private"),
            ("64:ff9b::8.8.8.8", true, "NAT64 public"),
            ("64:ff9b:1::a00:1", false, "local-use NAT64"),
            ("2002:a9fe:a9fe::1", false, "6to4 of 169.254.169.254"),
            ("2002:7f00:1::", false, "6to4 of 127.0.0.1"),
            ("2002:c0a8:101::1", false, "6to4 of 192.168.1.1"),
            ("2002:808:808::1", true, "6to4 of 8.8.8.8"),
            ("2001:0:4136:e378:8000:63bf:80ff:fffe", false, "Teredo of 127.0.0.1"),
            ("2001:0:4136:e378:8000:63bf:f7f7:f7f7", true, "Teredo of 8.8.8.8"),
            ("fec0::1", false, "site-local"),
            ("feff::1", false, "site-local, top of the range"),
            ("fe80::1", false, "link-local"),
            ("2001:db8::1", false, "documentation"),
            ("2606:4700::1111", true, "global"),
        ];
        for (ip, public, why) in table {
            assert_eq!(is_public(ip.parse().unwrap()), *public, "{ip}: {why}");
            let url = format!("https://[{ip}]/hook");
            assert_eq!(check_webhook_url(&url, false).is_ok(), *public, "{url}: {why}");
        }
    }

    #[tokio::test]
    async fn allowed_addresses_drop_private_ones() {
        assert!(matches!(
            allowed_addrs("127.0.0.1", 25, false).await,
            Err(TargetError::Blocked(_))
        ));
        let addrs = allowed_addrs("127.0.0.1", 25, true).await.unwrap();
        assert_eq!(addrs, vec!["127.0.0.1:25".parse().unwrap()]);
    }

    #[test]
    fn urls_are_checked() {
        assert!(check_webhook_url("https://hooks.example.com/x", false).is_ok());
        assert!(check_webhook_url("http://[::1]:80/", false).is_err());
        assert!(check_webhook_url("http://user:pw@example.com/", false).is_err());
        assert!(check_webhook_url("http://127.0.0.1:9/", true).is_ok());
        assert!(check_webhook_url("file:///etc/passwd", true).is_err());
        assert!(check_webhook_url("http://example.com:0/", true).is_err());
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
