//! `PersistedState::decode` (the 32-byte state record, PROTOCOL.md §8) on arbitrary bytes:
//! whatever decodes re-encodes to the same fields and checksum and decodes back equal.
#![no_main]

use libfuzzer_sys::fuzz_target;
use starling::PersistedState;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = PersistedState::decode(data) {
        let bytes = s.encode();
        assert_eq!(&bytes[..24], &data[..24], "magic, id, epoch or lease end changed");
        assert_eq!(PersistedState::decode(&bytes), Ok(s), "encode -> decode changed the state");
    }
});
