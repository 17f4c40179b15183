//! Free loopback ports.
//!
//! A server started by the test kit (PostgreSQL, ClickHouse, Mosquitto, tansu, the real
//! Danube broker) binds its port some time after [`free_port`] found it free. A port of the
//! kernel's ephemeral range (`net.ipv4.ip_local_port_range`, 32768-60999 by default) can be
//! taken meanwhile by any outgoing connection of a test running beside it, which made a
//! server fail with "Address already in use". So ports are picked below that range, where
//! the kernel never puts a client socket, and this process never hands one port out twice.

use std::collections::HashSet;
use std::net::{SocketAddr, TcpListener};
use std::sync::{Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

/// The lowest port picked: above the well-known and most registered service ports.
const LOWEST: u16 = 20_000;

/// Ports this process handed out (a test's server may not have bound its port yet).
static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A port that was free on 127.0.0.1 a moment ago, below the ephemeral range when there is
/// room there (else an ephemeral one), and not handed out before by this process.
pub fn free_port() -> u16 {
    let mut handed = HANDED_OUT.lock().unwrap_or_else(PoisonError::into_inner);
    let handed = handed.get_or_insert_with(HashSet::new);
    let below = ephemeral_low().saturating_sub(1);
    if below > LOWEST {
        let span = u64::from(below - LOWEST);
        let mut state = seed();
        for _ in 0..200 {
            state = next(state);
            let port = LOWEST + (state % span) as u16;
            if !handed.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
                handed.insert(port);
                return port;
            }
        }
    }
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("bind an ephemeral loopback port");
        if handed.insert(port) {
            return port;
        }
    }
}

/// `127.0.0.1:{free port}`.
pub fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// The first port of the kernel's ephemeral range (Linux's default when unreadable).
fn ephemeral_low() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next().and_then(|low| low.parse().ok()))
        .unwrap_or(32_768)
}

/// A seed that differs between processes and calls.
fn seed() -> u64 {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    ((u64::from(std::process::id()) << 32) ^ u64::from(nanos) ^ 0x9e37_79b9_7f4a_7c15) | 1
}

/// One xorshift64 step.
fn next(mut x: u64) -> u64 {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_free_below_the_ephemeral_range_and_never_handed_out_twice() {
        let ports: Vec<u16> = (0..200).map(|_| free_port()).collect();
        let distinct: HashSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), ports.len(), "a port handed out twice");
        let low = ephemeral_low();
        assert!(ports.iter().all(|p| *p >= LOWEST && *p < low), "outside {LOWEST}..{low}: {ports:?}");
        for port in ports.iter().take(20) {
            TcpListener::bind(("127.0.0.1", *port)).expect("the port is free");
        }
    }
}
