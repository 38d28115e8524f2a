//! Where a webhook may go: never to loopback, private, link-local (cloud metadata),
//! multicast or otherwise special addresses, judged after DNS resolution.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use async_trait::async_trait;

/// Whether an address is one a webhook must never reach.
pub fn is_forbidden(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_forbidden_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_forbidden_v4(v4);
            }
            let s = v6.segments();
            // NAT64 (64:ff9b::/96) carries an IPv4 address in its last 32 bits.
            if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
                return is_forbidden_v4(Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8));
            }
            v6.is_unspecified()
                || v6.is_loopback()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local fc00::/7 (AWS metadata fd00:ec2::254)
                || (s[0] & 0xffc0) == 0xfe80 // link-local fe80::/10
                || (s[0] & 0xffc0) == 0xfec0 // site-local fec0::/10 (deprecated)
                || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
                || (s[0..6] == [0, 0, 0, 0, 0, 0]) // IPv4-compatible ::a.b.c.d (deprecated)
        }
    }
}

fn is_forbidden_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local() // 169.254/16: instance metadata
        || ip.is_multicast()
        || ip.is_broadcast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // shared address space 100.64/10
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || a >= 240 // reserved
}

/// Turns a host name into addresses (the system resolver in production, a table in tests).
#[async_trait]
pub trait Resolver: Send + Sync {
    async fn resolve(&self, host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>>;
}

/// The system resolver.
pub struct SystemResolver;

#[async_trait]
impl Resolver for SystemResolver {
    async fn resolve(&self, host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
        Ok(tokio::net::lookup_host((host, port)).await?.collect())
    }
}

/// Why a target was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("not an http(s) URL with a host")]
    BadUrl,
    #[error("{0} does not resolve")]
    NoAddress(String),
    #[error("{host} resolves to {ip}, a loopback, private, link-local or reserved address")]
    Forbidden { host: String, ip: IpAddr },
}

/// The policy: forbidden ranges, except for `host:port` entries allowed explicitly (tests).
#[derive(Debug, Clone, Default)]
pub struct Policy {
    allow: HashSet<String>,
}

impl Policy {
    /// `allow` is a comma-separated list of `host:port` (e.g. `127.0.0.1:18080`).
    pub fn new(allow: &str) -> Self {
        Policy {
            allow: allow.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_ascii_lowercase).collect(),
        }
    }

    /// The address to connect to for `url`, pinned so the connection goes where the check
    /// looked (no second lookup that DNS rebinding could answer differently).
    pub async fn vet(&self, url: &url::Url, resolver: &dyn Resolver) -> Result<SocketAddr, Refusal> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(Refusal::BadUrl);
        }
        let host = url.host_str().filter(|h| !h.is_empty()).ok_or(Refusal::BadUrl)?;
        let port = url.port_or_known_default().ok_or(Refusal::BadUrl)?;
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let allowed = self.allow.contains(&format!("{}:{port}", host.to_ascii_lowercase()));
        let addrs = match bare.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, port)],
            Err(_) => resolver.resolve(bare, port).await.map_err(|_| Refusal::NoAddress(host.to_owned()))?,
        };
        if addrs.is_empty() {
            return Err(Refusal::NoAddress(host.to_owned()));
        }
        if !allowed {
            // Every answer must be public: a name with one private answer is refused whole.
            if let Some(bad) = addrs.iter().find(|a| is_forbidden(a.ip())) {
                return Err(Refusal::Forbidden { host: host.to_owned(), ip: bad.ip() });
            }
        }
        Ok(addrs[0])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forbidden_ranges() {
        for ip in [
            "127.0.0.1",
            "127.8.9.10",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fe80::1",
            "fc00::1",
            "fd00:ec2::254",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
            "::127.0.0.1",
        ] {
            assert!(is_forbidden(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["93.184.216.34", "8.8.8.8", "172.32.0.1", "2606:4700::1111", "::ffff:8.8.8.8"] {
            assert!(!is_forbidden(ip.parse().unwrap()), "{ip}");
        }
    }
}
