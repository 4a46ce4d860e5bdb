//! Helpers for Starling's integration tests: isolated meshes on loopback.

use std::net::{Ipv4Addr, UdpSocket};
use std::time::{Duration, Instant};

/// A multicast group and port no other test uses: a random organisation-local group and a port
/// the OS just handed out, so tests running in parallel never hear each other.
pub fn isolated_mesh() -> (Ipv4Addr, u16) {
    let mut r = [0u8; 2];
    getrandom::fill(&mut r).expect("OS randomness");
    let group = Ipv4Addr::new(239, 255, r[0], r[1].max(1));
    let port = UdpSocket::bind("127.0.0.1:0").and_then(|s| s.local_addr()).expect("a free port").port();
    (group, port)
}

/// A random network key.
pub fn random_key() -> starling::NetworkKey {
    let mut k = [0u8; 32];
    getrandom::fill(&mut k).expect("OS randomness");
    starling::NetworkKey::from_bytes(k)
}

/// Polls `check` every 20 ms until it returns true or `limit` passes; returns whether it did.
pub async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}
