//! A PSK node fed arbitrary datagrams (each a two-byte little-endian length, then its bytes),
//! 1 ms apart. Checks, per datagram, the cheap-first rejection order of PROTOCOL.md §2.6 (size,
//! version and suite, network tag, each mapped to its counter, before any cryptography), and after every
//! datagram the harness's invariants (each counted once, the node's own output well-formed).
//! Seeds are genuine frames, so mutations of them also reach the replay window and the AEAD.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use starling::wire::{Header, WireError, SUITE_PSK, SUITE_PSK_UNICAST};
use starling_fuzz::psk::Psk;
use starling_fuzz::{Driver, Reader};

fuzz_target!(|data: &[u8]| {
    let psk = Psk::default();
    let tag = psk.net_tag();
    let mut d = Driver::new(psk, 0);
    let mut r = Reader::new(data);
    while !r.is_empty() {
        let datagram = r.long().to_vec();
        let before = d.node().stats().clone();
        d.deliver(0, datagram.clone());
        let after = d.node().stats().clone();
        let delta = |f: fn(&starling::Stats) -> u64| f(&after) - f(&before);
        match Header::parse(&datagram) {
            Err(WireError::Oversized) => assert_eq!(delta(|s| s.drop_oversized), 1),
            Err(WireError::UnsupportedVersion) => assert_eq!(delta(|s| s.drop_version), 1),
            Err(_) => assert_eq!(delta(|s| s.drop_truncated), 1),
            Ok(h) if h.suite != SUITE_PSK && h.suite != SUITE_PSK_UNICAST => {
                assert_eq!(delta(|s| s.drop_version), 1, "an identity-mode suite")
            }
            Ok(h) if h.net_tag != tag => assert_eq!(delta(|s| s.drop_foreign_network), 1),
            Ok(_) => assert_eq!(
                delta(|s| s.drop_truncated) + delta(|s| s.drop_oversized) + delta(|s| s.drop_version),
                0,
                "a well-formed header refused as malformed"
            ),
        }
        d.advance(Duration::from_millis(1));
    }
});
