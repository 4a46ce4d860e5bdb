//! The deep one: a PSK node driven by a program of steps (`starling_fuzz::Op`): frames *validly
//! sealed* by two fixed peers that hold the network key, carrying fuzzed records past the AEAD,
//! with chosen packet numbers (next, skipped ahead, old/replayed), exact replays, raw datagrams,
//! Echo answers to the node's freshness challenges, application commands (publish, reliable
//! publish, subscribe, call, respond, close) and time passing so every timer fires.
//!
//! The first byte configures the node (bit 0: freshness challenges on; bit 1: embedded bounds).
//! Invariants are the harness's (`starling_fuzz::harness`): no panic or livelock, every datagram
//! counted once, every frame the node sends well-formed with a fresh packet number.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use starling_fuzz::psk::Psk;
use starling_fuzz::{Driver, Op};

fuzz_target!(|data: &[u8]| {
    let Some((&flags, program)) = data.split_first() else { return };
    let mut d = Driver::new(Psk::default(), flags);
    d.run(&Op::decode_all(program));
    // Let every retransmission, heartbeat, challenge retry and expiry run out.
    d.advance(Duration::from_secs(70));
});
