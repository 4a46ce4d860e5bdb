//! Identity mode (Noise IK sessions, per-sender multicast keys, allowlist): the node under test
//! and a real peer over a network the fuzzer controls (`starling_fuzz::identity::Pair`): it
//! delivers, drops, duplicates, corrupts and reorders their datagrams, injects raw ones, lets time
//! pass and makes either side publish, call, revoke or restore the other's key, or close.
//! The first byte configures the nodes (bit 0: freshness challenges on).
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use starling_fuzz::identity::Pair;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, program)) = data.split_first() else { return };
    let mut pair = Pair::new(flags);
    pair.run(program);
    pair.advance(Duration::from_secs(30));
});
