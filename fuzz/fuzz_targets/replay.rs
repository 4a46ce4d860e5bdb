//! `replay::ReplayWindow` (PROTOCOL.md §3.4) against a naive model that remembers every accepted
//! packet number in a set: after any sequence of checks and accepts, both agree on every answer
//! (accept, `TooOld` or `Duplicate`) and on the highest number. Packet numbers are drawn near the
//! current highest (forward, backward, around the 1024-bit edge) or anywhere in the 48-bit space.
#![no_main]

use std::collections::BTreeSet;

use libfuzzer_sys::fuzz_target;
use starling::replay::{ReplayError, ReplayWindow, WINDOW_BITS};
use starling::wire::MAX_PN;
use starling_fuzz::Reader;

struct Model {
    seen: BTreeSet<u64>,
}

impl Model {
    fn highest(&self) -> Option<u64> {
        self.seen.last().copied()
    }

    fn check(&self, pn: u64) -> Result<(), ReplayError> {
        match self.highest() {
            Some(h) if pn <= h && h - pn >= WINDOW_BITS => Err(ReplayError::TooOld),
            _ if self.seen.contains(&pn) => Err(ReplayError::Duplicate),
            _ => Ok(()),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut r = Reader::new(data);
    let mut window = ReplayWindow::new();
    let mut model = Model { seen: BTreeSet::new() };
    while !r.is_empty() {
        let op = r.u8();
        let h = model.highest().unwrap_or(0);
        let pn = match op % 4 {
            0 => h.saturating_add(u64::from(r.u16())),
            1 => h.saturating_sub(u64::from(r.u16())),
            2 => (h + WINDOW_BITS).saturating_sub(u64::from(r.u8()) * 8),
            _ => r.u64(),
        }
        .min(MAX_PN);
        let expected = model.check(pn);
        assert_eq!(window.check(pn), expected, "check({pn}) with highest {:?}", model.highest());
        if op & 4 == 0 {
            assert_eq!(window.accept(pn), expected, "accept({pn})");
            if expected.is_ok() {
                model.seen.insert(pn);
            }
        }
        assert_eq!(window.highest(), model.highest());
    }
});
