//! Real-socket tests: a multicast group and port no other test uses, so tests running in
//! parallel never hear each other.
#![allow(dead_code)] // each test crate uses what it needs

use std::net::{Ipv4Addr, UdpSocket};

/// A random organisation-local group and a port the OS just handed out.
pub fn isolated_mesh() -> (Ipv4Addr, u16) {
    let mut r = [0u8; 2];
    getrandom::fill(&mut r).expect("OS randomness");
    let group = Ipv4Addr::new(239, 255, r[0], r[1].max(1));
    let port = UdpSocket::bind("127.0.0.1:0").and_then(|s| s.local_addr()).expect("a free port").port();
    (group, port)
}
