//! `wire::Inner::parse` (Publish, Request, Response carried by streams and fragments) on
//! arbitrary bytes: whatever parses survives encode -> parse unchanged and encodes stably.
#![no_main]

use libfuzzer_sys::fuzz_target;
use starling::wire::{Inner, MAX_METHOD_LEN};

fuzz_target!(|data: &[u8]| {
    let Ok(msg) = Inner::parse(data) else { return };
    if let Inner::Request { method, .. } = &msg {
        assert!(!method.is_empty() && method.len() <= MAX_METHOD_LEN);
    }
    let bytes = msg.encode();
    assert_eq!(bytes[0], data[0], "the code byte changed");
    let again = Inner::parse(&bytes).expect("an encoded message parses");
    assert_eq!(again, msg, "encode -> parse changed the message");
    assert_eq!(again.encode(), bytes, "encode is not stable");
});
