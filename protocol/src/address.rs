//! Addresses one process gives another: `host:port`, where the host is a
//! DNS name, an IPv4 address or a bracketed IPv6 address. Nodes advertise
//! them (`--gossip-advertise`), discovery lists them, gateways and peers
//! dial them. A name is kept as a name and resolved at each dial, so a
//! member that comes back with a new IP behind the same name (a
//! Kubernetes pod) is found again.
use core::fmt;
use core::str::FromStr;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// Longest accepted `host:port`, in bytes (a DNS name is at most 253).
pub const MAX_ADDRESS_LEN: usize = 261;

/// A syntactically valid `host:port`, port not 0.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct HostPort(String);

/// Why an address was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("address {text:?} {reason}")]
pub struct InvalidAddress {
    /// The refused text (cut to a readable length).
    pub text: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl HostPort {
    /// The host part: a name, an IPv4 address, or `[v6]` with brackets.
    pub fn host(&self) -> &str {
        let colon = self.0.rfind(':').unwrap_or(self.0.len());
        &self.0[..colon]
    }

    /// The port.
    pub fn port(&self) -> u16 {
        let colon = self.0.rfind(':').unwrap_or(0);
        self.0[colon + 1..].parse().unwrap_or(0)
    }

    /// The address as text, ready to dial.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether the host is a literal unspecified IP (`0.0.0.0`, `[::]`):
    /// bindable, but nobody can dial it.
    pub fn is_unspecified(&self) -> bool {
        self.0
            .parse::<SocketAddr>()
            .is_ok_and(|addr| addr.ip().is_unspecified())
    }
}

impl From<SocketAddr> for HostPort {
    fn from(addr: SocketAddr) -> Self {
        Self(addr.to_string())
    }
}

impl FromStr for HostPort {
    type Err = InvalidAddress;

    fn from_str(text: &str) -> Result<Self, InvalidAddress> {
        let refuse = |reason| {
            Err(InvalidAddress {
                text: text.chars().take(80).collect(),
                reason,
            })
        };
        if text.len() > MAX_ADDRESS_LEN {
            return refuse("is too long");
        }
        if let Ok(addr) = text.parse::<SocketAddr>() {
            if addr.port() == 0 {
                return refuse("needs a port other than 0");
            }
            return Ok(Self(addr.to_string()));
        }
        let Some((host, port)) = text.rsplit_once(':') else {
            return refuse("needs a port, as in host:9000");
        };
        match port.parse::<u16>() {
            Ok(0) | Err(_) => return refuse("needs a port from 1 to 65535 after the last ':'"),
            Ok(_) => {}
        }
        if !is_dns_name(host) {
            return refuse("has a host that is neither an IP address nor a DNS name");
        }
        Ok(Self(text.to_ascii_lowercase()))
    }
}

impl TryFrom<String> for HostPort {
    type Error = InvalidAddress;

    fn try_from(text: String) -> Result<Self, InvalidAddress> {
        text.parse()
    }
}

impl From<HostPort> for String {
    fn from(address: HostPort) -> Self {
        address.0
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Letters, digits, `-` and `_` in dot-separated labels of 1–63 bytes,
/// none starting or ending with `-` (RFC 1123, with `_` as used by SRV-style
/// names); a trailing dot is allowed.
fn is_dns_name(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_ips_with_ports_are_addresses() {
        for (text, host, port) in [
            ("127.0.0.1:9000", "127.0.0.1", 9000),
            ("[::1]:80", "[::1]", 80),
            (
                "tally-0.tally.default.svc.cluster.local:9000",
                "tally-0.tally.default.svc.cluster.local",
                9000,
            ),
            ("N1.Tally.Test:8010", "n1.tally.test", 8010),
            ("localhost:1", "localhost", 1),
        ] {
            let address: HostPort = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!((address.host(), address.port()), (host, port), "{text}");
        }
    }

    #[test]
    fn malformed_addresses_are_refused_with_a_reason() {
        for text in [
            "",
            "host",
            "host:",
            "host:0",
            "host:65536",
            "host:x",
            ":9000",
            "-bad:1",
            "a..b:1",
            "a b:1",
            "http://host:1",
            "1.2.3.4:0",
            "[::1]",
            "host:9000/path",
        ] {
            assert!(text.parse::<HostPort>().is_err(), "{text:?} accepted");
        }
        let long = format!("{}:1", "a.".repeat(200));
        assert!(long.parse::<HostPort>().is_err());
    }

    #[test]
    fn unspecified_ips_are_told_apart() {
        assert!("0.0.0.0:9000".parse::<HostPort>().unwrap().is_unspecified());
        assert!("[::]:9000".parse::<HostPort>().unwrap().is_unspecified());
        assert!(!"10.0.0.1:9000"
            .parse::<HostPort>()
            .unwrap()
            .is_unspecified());
        assert!(!"host:9000".parse::<HostPort>().unwrap().is_unspecified());
    }

    #[test]
    fn addresses_travel_as_plain_strings() {
        let address: HostPort = "n1.tally.test:9000".parse().unwrap();
        let json = serde_json::to_string(&address).unwrap();
        assert_eq!(json, "\"n1.tally.test:9000\"");
        assert_eq!(serde_json::from_str::<HostPort>(&json).unwrap(), address);
        assert!(serde_json::from_str::<HostPort>("\"nope\"").is_err());
    }
}
