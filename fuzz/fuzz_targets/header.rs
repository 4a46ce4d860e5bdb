//! `wire::Header::parse` on arbitrary bytes: never panics, refuses by the documented rule
//! (size first, then version and suite: PSK multicast or unicast, or one of identity mode's), and what it accepts emits back to the same 16 bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use starling::wire::{Header, WireError, FRAME_OVERHEAD, HEADER_LEN, MAX_DATAGRAM, SUITE_PSK_UNICAST, VERSION};

fuzz_target!(|data: &[u8]| {
    match Header::parse(data) {
        Ok(h) => {
            assert!((FRAME_OVERHEAD..=MAX_DATAGRAM).contains(&data.len()));
            assert!(h.suite <= SUITE_PSK_UNICAST, "suite {} accepted", h.suite);
            let mut out = [0u8; HEADER_LEN];
            h.emit(&mut out);
            assert_eq!(&out[..], &data[..HEADER_LEN], "emit(parse(x)) differs from x's header");
        }
        Err(WireError::Oversized) => assert!(data.len() > MAX_DATAGRAM),
        Err(WireError::Truncated) => assert!(data.len() < FRAME_OVERHEAD),
        Err(WireError::UnsupportedVersion) => {
            assert!((FRAME_OVERHEAD..=MAX_DATAGRAM).contains(&data.len()));
            assert!(data[0] >> 4 != VERSION || data[0] & 0x0f > SUITE_PSK_UNICAST, "refused {:#04x}", data[0]);
        }
        Err(e) => panic!("unexpected header error {e:?}"),
    }
});
