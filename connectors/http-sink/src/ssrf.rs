//! The SSRF guard: by default, refuse targets on private, loopback, link-local, metadata
//! and other internal or special-purpose addresses.
//!
//! Checked where the connection is made, not only on the URL text:
//! - a literal IP host is checked before the request ([`TargetPolicy::check_host`]);
//! - a name is checked inside the DNS resolver the HTTP client connects with
//!   ([`GuardedResolver`]): refused addresses are dropped from the answer, so the client can
//!   only connect to permitted ones, and a name that re-resolves (DNS rebinding) to an
//!   internal address is refused at that connect;
//! - through a proxy (`connector.proxy`) the proxy resolves the target, so the target's
//!   name is resolved here before each request and refused when any of its addresses is
//!   not permitted; the proxy's own address is not checked (it is configured, not chosen
//!   by a record).
//!
//! Opt-outs: `connector.allow_private_targets = true` (no check at all) or
//! `connector.allowed_target_networks = ["10.20.0.0/16", ...]` (these networks are
//! permitted, the rest of the guard stays).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// The settings that opt out of the guard, named in every refusal.
const OPT_OUT: &str = "connector.allow_private_targets or connector.allowed_target_networks";

/// A target the guard refuses.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SsrfError {
    /// The address is private, loopback, link-local, or otherwise internal.
    #[error(
        "target address {0} is private, loopback, link-local or otherwise internal (refused by default; see {OPT_OUT})"
    )]
    Private(IpAddr),
    /// The host name is `localhost` or under `.localhost`.
    #[error("target host {0} is local (refused by default; see {OPT_OUT})")]
    Localhost(String),
    /// Every address the name resolves to is refused.
    #[error("target host {0} resolves only to internal addresses, e.g. {1} (refused by default; see {OPT_OUT})")]
    ResolvesPrivate(String, IpAddr),
    /// Through a proxy: one of the addresses the name resolves to is refused.
    #[error("target host {0} resolves to the internal address {1}, and the proxy could pick it (refused by default; see {OPT_OUT})")]
    MayResolvePrivate(String, IpAddr),
}

/// Which target addresses may be reached.
#[derive(Debug, Clone, Default)]
pub struct TargetPolicy {
    /// `allow_private_targets`: every address.
    allow_all: bool,
    /// `allowed_target_networks`: these too.
    allowed: Vec<IpNet>,
}

impl TargetPolicy {
    /// A policy permitting public addresses, plus every address when `allow_all`, plus
    /// the `allowed` networks.
    pub fn new(allow_all: bool, allowed: Vec<IpNet>) -> Self {
        Self { allow_all, allowed }
    }

    /// Whether no address is refused (`allow_private_targets = true`).
    pub fn allows_all(&self) -> bool {
        self.allow_all
    }

    /// Whether a connection to `ip` is permitted.
    pub fn permits(&self, ip: IpAddr) -> bool {
        if self.allow_all || !is_internal(ip) {
            return true;
        }
        let mapped = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4),
            IpAddr::V4(_) => None,
        };
        self.allowed.iter().any(|net| net.contains(&ip) || mapped.is_some_and(|v4| net.contains(&v4)))
    }

    /// Checks a URL host: literal addresses and `localhost` names (other names are checked
    /// when resolved).
    pub fn check_host(&self, host: &url::Host<String>) -> Result<(), SsrfError> {
        match host {
            url::Host::Ipv4(v4) if !self.permits(IpAddr::V4(*v4)) => Err(SsrfError::Private(IpAddr::V4(*v4))),
            url::Host::Ipv6(v6) if !self.permits(IpAddr::V6(*v6)) => Err(SsrfError::Private(IpAddr::V6(*v6))),
            url::Host::Domain(name) => {
                let name = name.trim_end_matches('.').to_ascii_lowercase();
                let local = name == "localhost" || name.ends_with(".localhost");
                if local
                    && !self.permits(IpAddr::V4(Ipv4Addr::LOCALHOST))
                    && !self.permits(IpAddr::V6(Ipv6Addr::LOCALHOST))
                {
                    Err(SsrfError::Localhost(name))
                } else {
                    Ok(())
                }
            }
            _ => Ok(()),
        }
    }

    /// Through a proxy: resolves `host` here and refuses it when any address is not
    /// permitted (the proxy, not this process, picks the address it connects to). `Ok`
    /// for literal addresses (see [`check_host`](Self::check_host)) and when all is
    /// permitted. A failed lookup is an I/O error (worth retrying).
    pub async fn check_proxied(&self, host: &url::Host<String>) -> Result<Result<(), SsrfError>, std::io::Error> {
        let url::Host::Domain(name) = host else { return Ok(Ok(())) };
        if self.allow_all {
            return Ok(Ok(()));
        }
        for addr in tokio::net::lookup_host((name.as_str(), 0)).await? {
            if !self.permits(addr.ip()) {
                return Ok(Err(SsrfError::MayResolvePrivate(name.clone(), addr.ip())));
            }
        }
        Ok(Ok(()))
    }
}

/// Whether `ip` is internal or special-purpose: refused unless permitted explicitly.
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_internal_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = embedded_v4(v6) {
                return is_internal_v4(v4);
            }
            let s = v6.segments();
            v6.is_loopback()
                || v6.is_unspecified()
                || (s[0] & 0xff00) == 0xff00 // multicast ff00::/8
                || (s[0] & 0xfe00) == 0xfc00 // unique local fc00::/7 (AWS metadata fd00:ec2::254)
                || (s[0] & 0xffc0) == 0xfe80 // link-local fe80::/10
                || (s[0] & 0xffc0) == 0xfec0 // site-local fec0::/10 (deprecated)
                || s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] // NAT64 well-known 64:ff9b::/96
                || s[..3] == [0x64, 0xff9b, 0x1] // local-use NAT64 64:ff9b:1::/48
                || s[..4] == [0x100, 0, 0, 0] // discard-only 100::/64
                || s[..2] == [0x2001, 0] // Teredo 2001::/32
                || (s[0] == 0x2001 && (s[1] & 0xffe0) == 0x0020) // ORCHIDv2 2001:20::/28
                || (s[0] == 0x2001 && (s[1] & 0xfff0) == 0x0010) // ORCHID 2001:10::/28
                || s[..3] == [0x2001, 0x2, 0] // benchmarking 2001:2::/48
                || s[..2] == [0x2001, 0xdb8] // documentation 2001:db8::/32
                || (s[0] == 0x3fff && (s[1] & 0xf000) == 0) // documentation 3fff::/20
                || s[0] == 0x5f00 // SRv6 SIDs 5f00::/16
        }
    }
}

/// The IPv4 address an IPv6 address stands for, when it embeds one the network would
/// reach: IPv4-mapped `::ffff:a.b.c.d`, IPv4-compatible `::a.b.c.d` (deprecated) and 6to4
/// `2002:AABB:CCDD::/48`. (NAT64 prefixes are refused as a whole.)
fn embedded_v4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = v6.segments();
    let from = |high: u16, low: u16| Ipv4Addr::from((u32::from(high) << 16) | u32::from(low));
    if let Some(v4) = v6.to_ipv4_mapped() {
        return Some(v4);
    }
    match s {
        // `::` and `::1` are the IPv6 unspecified and loopback addresses, not IPv4 ones.
        [0, 0, 0, 0, 0, 0, high, low] if (high, low) != (0, 0) && (high, low) != (0, 1) => Some(from(high, low)),
        [0x2002, high, low, ..] => Some(from(high, low)),
        _ => None,
    }
}

fn is_internal_v4(v4: Ipv4Addr) -> bool {
    let [a, b, c, _] = v4.octets();
    a == 0 // "this network" 0/8
        || a == 10 // private 10/8
        || (a == 100 && (64..128).contains(&b)) // carrier-grade NAT 100.64/10
        || a == 127 // loopback 127/8
        || (a == 169 && b == 254) // link-local 169.254/16, cloud metadata 169.254.169.254
        || (a == 172 && (16..32).contains(&b)) // private 172.16/12
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments 192.0.0/24
        || (a == 192 && b == 0 && c == 2) // documentation TEST-NET-1
        || (a == 192 && b == 88 && c == 99) // 6to4 relay anycast 192.88.99/24
        || (a == 192 && b == 168) // private 192.168/16
        || (a == 198 && (b == 18 || b == 19)) // benchmarking 198.18/15
        || (a == 198 && b == 51 && c == 100) // documentation TEST-NET-2
        || (a == 203 && b == 0 && c == 113) // documentation TEST-NET-3
        || a >= 224 // multicast 224/4, reserved 240/4, broadcast
}

/// A resolver that drops addresses the policy refuses (and fails when none is left). The
/// proxy's host, when there is one, is resolved unfiltered.
#[derive(Debug, Clone)]
pub struct GuardedResolver {
    policy: Arc<TargetPolicy>,
    proxy_host: Option<String>,
}

impl GuardedResolver {
    /// A resolver enforcing `policy`, except for `proxy_host`.
    pub fn new(policy: Arc<TargetPolicy>, proxy_host: Option<String>) -> Self {
        Self { policy, proxy_host: proxy_host.map(|h| h.to_ascii_lowercase()) }
    }
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        let exempt = self.proxy_host.as_deref().is_some_and(|proxy| name.as_str().eq_ignore_ascii_case(proxy));
        Box::pin(async move {
            let host = name.as_str().to_string();
            let resolved: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if exempt {
                let addrs: Addrs = Box::new(resolved.into_iter());
                return Ok(addrs);
            }
            let refused = resolved.iter().find(|addr| !policy.permits(addr.ip())).map(|addr| addr.ip());
            let allowed: Vec<SocketAddr> = resolved.into_iter().filter(|addr| policy.permits(addr.ip())).collect();
            match (allowed.is_empty(), refused) {
                (true, Some(ip)) => {
                    Err(Box::new(SsrfError::ResolvesPrivate(host, ip)) as Box<dyn std::error::Error + Send + Sync>)
                }
                _ => {
                    let addrs: Addrs = Box::new(allowed.into_iter());
                    Ok(addrs)
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn internal(ip: &str) -> bool {
        is_internal(ip.parse().expect("ip"))
    }

    #[test]
    fn internal_ranges_are_refused_and_public_ones_allowed() {
        for ip in [
            "127.0.0.1",
            "127.255.0.9",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "0.1.2.3",
            "100.64.0.1",
            "100.127.255.254",
            "192.0.0.8",
            "192.0.2.1",
            "192.88.99.1",
            "198.18.0.1",
            "198.19.255.255",
            "198.51.100.7",
            "203.0.113.9",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fd00::1",
            "fd00:ec2::254",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::ffff:198.18.0.1",
            "100::1",
            "2001::1",
            "2001:db8::1",
            "2001:20::1",
            "3fff::1",
        ] {
            assert!(internal(ip), "{ip}");
        }
        for ip in ["93.184.215.14", "1.1.1.1", "8.8.8.8", "172.32.0.1", "100.128.0.1", "198.20.0.1", "2606:4700::1111"]
        {
            assert!(!internal(ip), "{ip}");
        }
    }

    #[test]
    fn ipv6_addresses_embedding_an_ipv4_one_are_judged_by_it_and_nat64_is_refused() {
        for ip in [
            "64:ff9b::",
            "64:ff9b::7f00:1",
            "64:ff9b::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b::1.1.1.1",
            "64:ff9b:1::1",
            "::ffff:10.1.2.3",
            "::127.0.0.1",
            "::10.0.0.1",
            "2002:7f00:1::",
            "2002:c0a8:101::1",
            "fec0::1",
        ] {
            assert!(internal(ip), "{ip}");
        }
        for ip in ["::ffff:1.1.1.1", "2002:5db8:d70e::1"] {
            assert!(!internal(ip), "{ip}");
        }
        let policy = TargetPolicy::default();
        let host = url::Host::Ipv6("64:ff9b::7f00:1".parse().expect("ip"));
        assert!(matches!(policy.check_host(&host), Err(SsrfError::Private(_))));
    }

    #[test]
    fn the_opt_outs_permit_what_they_name() {
        let ip = |s: &str| -> IpAddr { s.parse().expect("ip") };
        let strict = TargetPolicy::default();
        assert!(!strict.permits(ip("10.20.1.1")) && strict.permits(ip("1.1.1.1")));
        let open = TargetPolicy::new(true, Vec::new());
        assert!(open.permits(ip("127.0.0.1")) && open.permits(ip("169.254.169.254")));
        let listed = TargetPolicy::new(false, vec!["10.20.0.0/16".parse().expect("net")]);
        assert!(listed.permits(ip("10.20.1.1")) && listed.permits(ip("::ffff:10.20.1.1")));
        assert!(!listed.permits(ip("10.21.0.1")) && !listed.permits(ip("169.254.169.254")));
        assert!(listed.check_host(&url::Host::Domain("localhost".into())).is_err());
        let loopback = TargetPolicy::new(false, vec!["127.0.0.0/8".parse().expect("net")]);
        assert!(loopback.check_host(&url::Host::Domain("localhost".into())).is_ok());
    }

    #[test]
    fn localhost_names_are_refused() {
        let policy = TargetPolicy::default();
        assert!(policy.check_host(&url::Host::Domain("localhost".into())).is_err());
        assert!(policy.check_host(&url::Host::Domain("api.localhost.".into())).is_err());
        assert!(policy.check_host(&url::Host::Domain("example.com".into())).is_ok());
    }

    #[tokio::test]
    async fn resolver_refuses_names_that_resolve_to_loopback_except_the_proxy() {
        let policy = Arc::new(TargetPolicy::default());
        let err = match GuardedResolver::new(policy.clone(), None).resolve("localhost".parse().expect("name")).await {
            Ok(_) => panic!("localhost must be refused"),
            Err(err) => err,
        };
        assert!(err.to_string().contains("internal"), "{err}");
        let proxy = GuardedResolver::new(policy.clone(), Some("LOCALHOST".into()));
        assert!(proxy.resolve("localhost".parse().expect("name")).await.is_ok(), "the proxy host is not checked");
        let through = policy.check_proxied(&url::Host::Domain("localhost".into())).await.expect("lookup");
        assert!(matches!(through, Err(SsrfError::MayResolvePrivate(..))), "{through:?}");
    }
}
