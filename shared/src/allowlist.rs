//! Per-provider IP allow-lists for callbacks (`PUSHGATE_CALLBACK_ALLOWED_IPS`): a second,
//! optional check for vendors that sign nothing (Aliyun, Tencent), whose push servers'
//! ranges the operator takes from the vendor's documentation or console. A provider with
//! no list is not restricted; one with a list refuses any other address, and a call whose
//! address is unknown.

use std::collections::HashMap;
use std::net::IpAddr;

/// One `address/prefix` range (a bare address is a /32 or /128).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum AllowListError {
    #[error("PUSHGATE_CALLBACK_ALLOWED_IPS is not a JSON object of provider -> [cidr]: {0}")]
    Json(String),
    #[error("not an IP range: {0}")]
    Cidr(String),
}

impl std::str::FromStr for Cidr {
    type Err = AllowListError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || AllowListError::Cidr(s.to_string());
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p.parse::<u8>().map_err(|_| bad())?)),
            None => (s, None),
        };
        let net: IpAddr = addr.trim().parse().map_err(|_| bad())?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        if prefix > max {
            return Err(bad());
        }
        Ok(Self { net, prefix })
    }
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let bits = |ip: IpAddr| -> (u128, u32) {
            match ip {
                IpAddr::V4(v) => (u128::from(u32::from(v)), 32),
                IpAddr::V6(v) => (u128::from(v), 128),
            }
        };
        let ip = match (self.net, ip) {
            (IpAddr::V4(_), IpAddr::V6(v)) => match v.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => return false,
            },
            _ => ip,
        };
        let ((net, width), (addr, addr_width)) = (bits(self.net), bits(ip));
        if width != addr_width {
            return false;
        }
        let shift = width - u32::from(self.prefix);
        shift >= width || (net >> shift) == (addr >> shift)
    }
}

/// The allow-lists by provider name.
#[derive(Debug, Clone, Default)]
pub struct AllowLists(HashMap<String, Vec<Cidr>>);

impl AllowLists {
    /// From `{"aliyun": ["203.0.113.0/24"], "tencent": [...]}`.
    pub fn parse(json: &str) -> Result<Self, AllowListError> {
        let raw: HashMap<String, Vec<String>> =
            serde_json::from_str(json).map_err(|e| AllowListError::Json(e.to_string()))?;
        raw.into_iter()
            .map(|(p, list)| Ok((p, list.iter().map(|c| c.parse()).collect::<Result<_, _>>()?)))
            .collect::<Result<_, _>>()
            .map(Self)
    }

    /// From `PUSHGATE_CALLBACK_ALLOWED_IPS` (unset or empty: no lists).
    pub fn from_env() -> Result<Self, AllowListError> {
        match std::env::var("PUSHGATE_CALLBACK_ALLOWED_IPS") {
            Ok(v) if !v.trim().is_empty() => Self::parse(&v),
            _ => Ok(Self::default()),
        }
    }

    /// Whether `provider` may call from `ip`.
    pub fn allows(&self, provider: &str, ip: Option<IpAddr>) -> bool {
        match self.0.get(provider) {
            None => true,
            Some(list) => ip.is_some_and(|ip| list.iter().any(|c| c.contains(ip))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_match_by_prefix() {
        let c: Cidr = "203.0.113.0/24".parse().unwrap();
        assert!(c.contains("203.0.113.77".parse().unwrap()));
        assert!(c.contains("::ffff:203.0.113.77".parse().unwrap()));
        assert!(!c.contains("203.0.114.1".parse().unwrap()));
        assert!(!c.contains("2001:db8::1".parse().unwrap()));
        let any: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(any.contains("8.8.8.8".parse().unwrap()));
        let one: Cidr = "2001:db8::1".parse().unwrap();
        assert!(one.contains("2001:db8::1".parse().unwrap()) && !one.contains("2001:db8::2".parse().unwrap()));
        for bad in ["203.0.113.0/33", "nope", "1.2.3.4/x", "::/129"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn only_listed_providers_are_restricted() {
        let lists = AllowLists::parse(r#"{"aliyun": ["203.0.113.0/24"]}"#).unwrap();
        assert!(lists.allows("tencent", None));
        assert!(lists.allows("aliyun", Some("203.0.113.9".parse().unwrap())));
        assert!(!lists.allows("aliyun", Some("198.51.100.1".parse().unwrap())));
        assert!(!lists.allows("aliyun", None), "an unknown address is refused");
        assert!(AllowLists::parse(r#"{"aliyun": ["bad"]}"#).is_err());
    }
}
