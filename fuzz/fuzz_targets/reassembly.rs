//! `reassembly::Reassembler` (best-effort fragments, PROTOCOL.md §6.5) fed arbitrary fragments
//! from a few senders over advancing time. Checks its bounds (buffered bytes, partial messages,
//! message size) after every call, and that a completed message holds the completing fragment
//! where its index says.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use starling::reassembly::{FragmentOutcome, Reassembler, ReassemblyLimits};
use starling::Instant;
use starling_fuzz::Reader;

fuzz_target!(|data: &[u8]| {
    let mut r = Reader::new(data);
    let limits = ReassemblyLimits {
        max_message: 1 + usize::from(r.u16() % 8192),
        max_partial: usize::from(r.u8() % 8),
        max_bytes: usize::from(r.u16() % 8192),
        timeout: Duration::from_millis(2000),
    };
    let mut re: Reassembler<u8> = Reassembler::new(limits);
    let mut now = Instant::ZERO;
    while !r.is_empty() {
        let op = r.u8();
        now += Duration::from_millis(u64::from(r.u8()) * 4);
        match op % 8 {
            0 => {
                re.expire(now);
                assert!(re.next_expiry().is_none_or(|t| t > now), "expire left an expired message");
            }
            1 => re.forget(r.u8() % 4),
            _ => {
                let sender = r.u8() % 4;
                let msg_id = u32::from(r.u8() % 4);
                let count = u32::from(r.u8());
                let index = u32::from(r.u8());
                let chunk = r.short();
                if let FragmentOutcome::Complete(msg) = re.insert(now, sender, msg_id, index, count, chunk) {
                    assert!(msg.len() <= limits.max_message, "a message over max_message");
                    if index + 1 == count {
                        assert!(msg.ends_with(chunk), "the last fragment is not at the end");
                    } else {
                        let at = index as usize * chunk.len();
                        assert_eq!(msg.get(at..at + chunk.len()), Some(chunk), "fragment {index} misplaced");
                    }
                }
            }
        }
        assert!(re.buffered_bytes() <= limits.max_bytes, "buffered {} > {}", re.buffered_bytes(), limits.max_bytes);
        assert!(re.partial_count() <= limits.max_partial, "{} partial messages", re.partial_count());
        assert_eq!(re.next_expiry().is_some(), re.partial_count() > 0);
    }
});
