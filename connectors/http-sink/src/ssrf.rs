//! The SSRF guard: refuse targets on private, loopback, link-local and similar addresses.
//!
//! Checked on literal IP hosts directly and, for names, inside the DNS resolver the HTTP
//! client uses, so a name that resolves (or re-resolves) to a private address is refused
//! at connect time too.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// A target the guard refuses.
#[derive(Debug, thiserror::Error)]
pub enum SsrfError {
    /// The address is private, loopback, link-local, or otherwise internal.
    #[error("target address {0} is private, loopback or link-local (connector.deny_private_targets)")]
    Private(IpAddr),
    /// The host name is `localhost` or under `.localhost`.
    #[error("target host {0} is local (connector.deny_private_targets)")]
    Localhost(String),
    /// Every address the name resolves to is refused.
    #[error("target host {0} resolves only to private addresses (connector.deny_private_targets)")]
    ResolvesPrivate(String),
}

/// Whether `ip` is one the guard refuses.
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_internal_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = embedded_v4(v6) {
                return is_internal_v4(v4);
            }
            let first = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00 // unique local fc00::/7
                || (first & 0xffc0) == 0xfe80 // link-local fe80::/10
                || (first & 0xffc0) == 0xfec0 // site-local fec0::/10 (deprecated)
                || v6.segments()[..3] == [0x64, 0xff9b, 0x1] // local-use NAT64 64:ff9b:1::/48
        }
    }
}

/// The IPv4 address an IPv6 address stands for, when it embeds one the network would
/// reach: IPv4-mapped `::ffff:a.b.c.d`, IPv4-compatible `::a.b.c.d` (deprecated), NAT64
/// `64:ff9b::a.b.c.d` (the well-known /96 prefix) and 6to4 `2002:AABB:CCDD::/48`.
fn embedded_v4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = v6.segments();
    let from = |high: u16, low: u16| Ipv4Addr::from((u32::from(high) << 16) | u32::from(low));
    if let Some(v4) = v6.to_ipv4_mapped() {
        return Some(v4);
    }
    match s {
        // `::` and `::1` are the IPv6 unspecified and loopback addresses, not IPv4 ones.
        [0, 0, 0, 0, 0, 0, high, low] if (high, low) != (0, 0) && (high, low) != (0, 1) => Some(from(high, low)),
        [0x64, 0xff9b, 0, 0, 0, 0, high, low] => Some(from(high, low)),
        [0x2002, high, low, ..] => Some(from(high, low)),
        _ => None,
    }
}

fn is_internal_v4(v4: Ipv4Addr) -> bool {
    let [a, b, ..] = v4.octets();
    v4.is_private()
        || v4.is_loopback()
        || v4.is_link_local()
        || v4.is_unspecified()
        || v4.is_broadcast()
        || v4.is_multicast()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // carrier-grade NAT 100.64/10
        || (a == 192 && b == 0 && v4.octets()[2] == 0) // IETF protocol assignments
        || a >= 240 // reserved
}

/// Checks a URL host: literal addresses and `localhost` names (other names are checked
/// when resolved).
pub fn check_host(host: &url::Host<String>) -> Result<(), SsrfError> {
    match host {
        url::Host::Ipv4(v4) if is_internal(IpAddr::V4(*v4)) => Err(SsrfError::Private(IpAddr::V4(*v4))),
        url::Host::Ipv6(v6) if is_internal(IpAddr::V6(*v6)) => Err(SsrfError::Private(IpAddr::V6(*v6))),
        url::Host::Domain(name) => {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            if name == "localhost" || name.ends_with(".localhost") {
                Err(SsrfError::Localhost(name))
            } else {
                Ok(())
            }
        }
        _ => Ok(()),
    }
}

/// A resolver that drops internal addresses (and fails when none is left).
#[derive(Debug, Clone, Default)]
pub struct GuardedResolver;

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        Box::pin(async move {
            let host = name.as_str().to_string();
            let resolved = tokio::net::lookup_host((host.as_str(), 0)).await?;
            let allowed: Vec<SocketAddr> = resolved.filter(|addr| !is_internal(addr.ip())).collect();
            if allowed.is_empty() {
                return Err(Box::new(SsrfError::ResolvesPrivate(host)) as Box<dyn std::error::Error + Send + Sync>);
            }
            let addrs: Addrs = Box::new(allowed.into_iter());
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_ranges_are_refused_and_public_ones_allowed() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(is_internal(ip.parse().expect("ip")), "{ip}");
        }
        for ip in ["93.184.215.14", "1.1.1.1", "2606:4700::1111"] {
            assert!(!is_internal(ip.parse().expect("ip")), "{ip}");
        }
    }

    #[test]
    fn ipv6_addresses_embedding_an_ipv4_one_are_judged_by_it() {
        // NAT64 (the whole 64:ff9b::/96), IPv4-mapped, IPv4-compatible, 6to4.
        for ip in [
            "64:ff9b::",
            "64:ff9b::7f00:1",
            "64:ff9b::127.0.0.1",
            "64:ff9b::10.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "::ffff:127.0.0.1",
            "::ffff:10.1.2.3",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "::10.0.0.1",
            "2002:7f00:1::",
            "2002:c0a8:101::1",
            "64:ff9b:1::1",
            "fec0::1",
        ] {
            assert!(is_internal(ip.parse().expect("ip")), "{ip}");
        }
        for ip in ["64:ff9b::1.1.1.1", "64:ff9b::5db8:d70e", "::ffff:1.1.1.1", "2002:5db8:d70e::1"] {
            assert!(!is_internal(ip.parse().expect("ip")), "{ip}");
        }
        assert!(is_internal("::1".parse().expect("ip")) && is_internal("::".parse().expect("ip")));
        let host = url::Host::Ipv6("64:ff9b::7f00:1".parse().expect("ip"));
        assert!(matches!(check_host(&host), Err(SsrfError::Private(_))));
    }

    #[test]
    fn localhost_names_are_refused() {
        assert!(check_host(&url::Host::Domain("localhost".into())).is_err());
        assert!(check_host(&url::Host::Domain("api.localhost.".into())).is_err());
        assert!(check_host(&url::Host::Domain("example.com".into())).is_ok());
    }

    #[tokio::test]
    async fn resolver_refuses_names_that_resolve_to_loopback() {
        let err = match GuardedResolver.resolve("localhost".parse().expect("name")).await {
            Ok(_) => panic!("localhost must be refused"),
            Err(err) => err,
        };
        assert!(err.to_string().contains("private"), "{err}");
    }
}
