//! Addresses a callback must never reach: loopback, private, link-local (cloud metadata),
//! multicast, reserved, and their IPv6 forms. The worker applies it to every address a webhook
//! host resolves to (`gpu_worker::ssrf`); the API applies it to literal addresses at creation.

use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;

/// `host:port` entries (`WEBHOOK_ALLOW_HOSTS`, comma-separated, case-insensitive) that callbacks
/// may name although they are plain http or internal: a receiver on loopback in tests and
/// local runs. The API checks callbacks at creation with it, the worker before each delivery.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowHosts(Vec<String>);

impl AllowHosts {
    /// Whether `host:port` is listed (`host` as written in a URL, IPv6 in brackets).
    pub fn contains(&self, host: &str, port: u16) -> bool {
        let wanted = format!("{}:{port}", host.to_ascii_lowercase());
        self.0.contains(&wanted)
    }
}

impl FromStr for AllowHosts {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(AllowHosts(s.split(',').map(str::trim).filter(|e| !e.is_empty()).map(str::to_ascii_lowercase).collect()))
    }
}

impl<S: AsRef<str>> FromIterator<S> for AllowHosts {
    fn from_iter<I: IntoIterator<Item = S>>(entries: I) -> Self {
        AllowHosts(entries.into_iter().map(|e| e.as_ref().trim().to_ascii_lowercase()).collect())
    }
}

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

/// Whether a host name is internal by its name alone: `localhost` and its subdomains
/// (RFC 6761), `.local` (mDNS, RFC 6762) and `.internal` (private use; AWS's and GCP's internal
/// DNS names, e.g. `ip-10-0-0-1.ec2.internal`, `metadata.google.internal`). Case and a
/// trailing dot do not matter.
pub fn is_internal_name(host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    host == "localhost"
        || [".localhost", ".local", ".internal"].iter().any(|suffix| host.ends_with(suffix))
        || host == "local"
        || host == "internal"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_names() {
        for h in [
            "localhost",
            "LOCALHOST.",
            "a.localhost",
            "printer.local",
            "ip-10-0-0-1.ec2.internal",
            "metadata.google.internal",
        ] {
            assert!(is_internal_name(h), "{h}");
        }
        for h in ["example.com", "localhost.example.com", "internal.example.com", "locals", "mylocal"] {
            assert!(!is_internal_name(h), "{h}");
        }
    }
}
