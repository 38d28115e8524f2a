//! Where a webhook may go: never to loopback, private, link-local (cloud metadata),
//! multicast or otherwise special addresses, judged after DNS resolution.

use std::net::{IpAddr, SocketAddr};

use async_trait::async_trait;
use ocr_core::net::AllowHosts;
/// Whether an address is one a webhook must never reach (shared with the API's check of
/// literal addresses at job creation).
pub use ocr_core::net::is_forbidden;

/// Turns a host name into addresses (the system resolver in production, a table in tests).
#[async_trait]
pub trait Resolver: Send + Sync {
    async fn resolve(&self, host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>>;
}

/// The system resolver, with a time limit: a name server that does not answer must not hold
/// a delivery slot for the resolver's own (long) retries.
pub struct SystemResolver {
    pub timeout: std::time::Duration,
}

#[async_trait]
impl Resolver for SystemResolver {
    async fn resolve(&self, host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
        match tokio::time::timeout(self.timeout, tokio::net::lookup_host((host, port))).await {
            Ok(found) => Ok(found?.collect()),
            Err(_) => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "name look-up timed out")),
        }
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
    allow: AllowHosts,
}

impl Policy {
    pub fn new(allow: AllowHosts) -> Self {
        Policy { allow }
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
        let allowed = self.allow.contains(host, port);
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
