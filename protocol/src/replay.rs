//! Sliding anti-replay window for packet numbers.
//!
//! Every authenticated frame carries a 48-bit packet number. An attacker who
//! records a frame could send it again later; the AEAD would still accept it,
//! so the receiver remembers which packet numbers it has already seen. Like
//! WireGuard (RFC 6479 style, as in boringtun), it keeps the highest number
//! seen plus a fixed bitmap of the [`WINDOW_BITS`] numbers at and below it.
//! Anything older than the window is refused outright, which keeps memory
//! fixed while still tolerating reordering on the network.
//!
//! Usage: call [`ReplayWindow::check`] before the expensive AEAD open to drop
//! obvious replays cheaply, then [`ReplayWindow::accept`] only once the frame
//! has authenticated, so forged frames can never move the window.

use core::fmt;
use core::time::Duration;

use crate::time::Instant;

/// Number of packet numbers behind the highest one that are still tracked individually.
///
/// The window covers `highest - (WINDOW_BITS - 1) ..= highest`; older numbers
/// are refused as [`ReplayError::TooOld`].
pub const WINDOW_BITS: u64 = 1024;

/// Number of 64-bit words in the bitmap.
const WORDS: usize = (WINDOW_BITS / 64) as usize;

// The ring indexing below relies on this.
const _: () = assert!(WINDOW_BITS.is_multiple_of(64) && WINDOW_BITS.is_power_of_two());

/// Why a packet number was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayError {
    /// The number is at least [`WINDOW_BITS`] below the highest seen, so it
    /// can no longer be told apart from a replay.
    TooOld,
    /// The number was already accepted once.
    Duplicate,
}

impl fmt::Display for ReplayError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReplayError::TooOld => {
                write!(f, "packet number is too old: it is {WINDOW_BITS} or more behind the newest accepted one")
            }
            ReplayError::Duplicate => f.write_str("packet number was already received (possible replay)"),
        }
    }
}

impl core::error::Error for ReplayError {}

/// Anti-replay window over 48-bit packet numbers (u64 values < 2^48).
///
/// Fixed size (no allocation): the highest accepted number and a ring of
/// [`WINDOW_BITS`] bits, where packet number `pn` lives in bit `pn % WINDOW_BITS`.
/// Every operation is O(`WINDOW_BITS / 64`) at worst, whatever the jump.
///
/// The logic is correct for any `u64`; the 48-bit range is the wire format's
/// limit, and callers are expected to have decoded numbers within it.
#[derive(Debug, Clone)]
pub struct ReplayWindow {
    /// Highest packet number accepted so far; `None` until the first accept.
    highest: Option<u64>,
    /// Bit `pn % WINDOW_BITS` is set when `pn` (within the window) was accepted.
    bitmap: [u64; WORDS],
}

impl ReplayWindow {
    /// Creates an empty window, which accepts any packet number.
    pub const fn new() -> Self {
        ReplayWindow { highest: None, bitmap: [0; WORDS] }
    }

    /// Checks without recording; call before the (expensive) AEAD open.
    ///
    /// Returns `Ok(())` if `pn` is newer than everything seen, or inside the
    /// window and not yet seen.
    pub fn check(&self, pn: u64) -> Result<(), ReplayError> {
        let Some(highest) = self.highest else {
            return Ok(());
        };
        if pn > highest {
            return Ok(());
        }
        if pn == highest {
            return Err(ReplayError::Duplicate);
        }
        if highest - pn >= WINDOW_BITS {
            return Err(ReplayError::TooOld);
        }
        if self.is_marked(pn) {
            Err(ReplayError::Duplicate)
        } else {
            Ok(())
        }
    }

    /// Records `pn` as seen (call only after the frame authenticated). Returns the same error as check if refused.
    ///
    /// A number above the highest slides the window forward, forgetting the
    /// numbers that fall out of it; a refused number leaves the window unchanged.
    pub fn accept(&mut self, pn: u64) -> Result<(), ReplayError> {
        self.check(pn)?;
        match self.highest {
            Some(highest) if pn <= highest => {}
            Some(highest) => {
                let jump = pn - highest;
                if jump >= WINDOW_BITS {
                    // Everything previously tracked is now out of the window.
                    self.bitmap = [0; WORDS];
                } else {
                    // Slots highest+1 ..= pn held numbers that just fell out
                    // of the window; clear them (pn's slot is set below).
                    self.clear_slots((slot(highest) + 1) % WINDOW_BITS, jump);
                }
                self.highest = Some(pn);
            }
            None => {
                // Nothing was tracked yet, so the bitmap is already clear.
                self.highest = Some(pn);
            }
        }
        self.mark(pn);
        Ok(())
    }

    /// Highest packet number accepted so far, if any.
    pub fn highest(&self) -> Option<u64> {
        self.highest
    }

    fn is_marked(&self, pn: u64) -> bool {
        let s = slot(pn);
        self.bitmap[(s / 64) as usize] & (1 << (s % 64)) != 0
    }

    fn mark(&mut self, pn: u64) {
        let s = slot(pn);
        self.bitmap[(s / 64) as usize] |= 1 << (s % 64);
    }

    /// Clears `len` consecutive ring slots starting at `start`, wrapping
    /// around; word at a time, so at most `WORDS + 1` iterations.
    fn clear_slots(&mut self, mut start: u64, mut len: u64) {
        debug_assert!(start < WINDOW_BITS && len <= WINDOW_BITS);
        while len > 0 {
            let bit = start % 64;
            let n = (64 - bit).min(len);
            let mask = if n == 64 { u64::MAX } else { ((1u64 << n) - 1) << bit };
            self.bitmap[(start / 64) as usize] &= !mask;
            start = (start + n) % WINDOW_BITS;
            len -= n;
        }
    }
}

/// Most packet numbers a sender is assumed to use per second (far above any real rate). A number
/// further ahead of what its sender could have used since the last one is refused, so one forged
/// frame from a key holder cannot push the window so far that every genuine frame looks old.
pub const MAX_PN_RATE: u64 = 1 << 22;

/// A [`ReplayWindow`] that also bounds, in time, how late a frame may come (PROTOCOL.md §3.4).
///
/// A packet-number window alone accepts, once, any number in it that it has not seen, at any
/// later time: a frame the receiver lost, captured by an attacker, could be replayed minutes
/// later. This window notes `(local time, highest number)` at most every `max_age`; once a note
/// is `max_age` old, every number below it was sent at least that long ago and is refused. A
/// frame is therefore accepted at most about `2 × max_age` after a later frame of its sender
/// arrived. No clock is shared with the sender: both times are the receiver's.
#[derive(Debug, Clone)]
pub struct AgedWindow {
    window: ReplayWindow,
    /// When the newest note was taken, and the highest number accepted at that time.
    mark: Option<(Instant, u64)>,
    /// Numbers below this are refused (they were sent at least `max_age` ago).
    floor: u64,
}

/// Why [`AgedWindow`] refused a packet number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgeError {
    /// Seen before or outside the window ([`ReplayWindow`]).
    Replay(ReplayError),
    /// Sent at least `max_age` before a later frame of its sender was accepted here.
    Late,
    /// Further ahead than its sender can have counted since its last frame ([`MAX_PN_RATE`]).
    TooFar,
}

impl AgedWindow {
    /// An empty window, which accepts any packet number.
    pub const fn new() -> Self {
        AgedWindow { window: ReplayWindow::new(), mark: None, floor: 0 }
    }

    /// An empty window whose sender was at packet number `pn` at `now` (a multicast key's
    /// floor when it was handed over): even its first frame cannot be further ahead than the
    /// sender can have counted since.
    pub const fn starting_at(pn: u64, now: Instant) -> Self {
        AgedWindow { window: ReplayWindow::new(), mark: Some((now, pn)), floor: 0 }
    }

    fn floor_at(&self, now: Instant, max_age: Duration) -> u64 {
        match self.mark {
            Some((at, pn)) if at + max_age <= now => self.floor.max(pn),
            _ => self.floor,
        }
    }

    /// Checks without recording; call before the AEAD open.
    pub fn check(&self, pn: u64, now: Instant, max_age: Duration) -> Result<(), AgeError> {
        if pn < self.floor_at(now, max_age) {
            return Err(AgeError::Late);
        }
        if let Some((at, mark_pn)) = self.mark {
            let secs = now.saturating_duration_since(at).as_secs().saturating_add(1);
            if pn > mark_pn.saturating_add(MAX_PN_RATE.saturating_mul(secs)) {
                return Err(AgeError::TooFar);
            }
        }
        self.window.check(pn).map_err(AgeError::Replay)
    }

    /// Records `pn` (call only after the frame authenticated).
    pub fn accept(&mut self, pn: u64, now: Instant, max_age: Duration) -> Result<(), AgeError> {
        self.check(pn, now, max_age)?;
        self.window.accept(pn).map_err(AgeError::Replay)?;
        let highest = self.window.highest().unwrap_or(pn);
        match self.mark {
            Some((at, mark_pn)) if at + max_age <= now => {
                self.floor = self.floor.max(mark_pn);
                self.mark = Some((now, highest));
            }
            Some(_) => {}
            None => self.mark = Some((now, highest)),
        }
        Ok(())
    }

    /// Highest packet number accepted so far, if any.
    pub fn highest(&self) -> Option<u64> {
        self.window.highest()
    }
}

impl Default for AgedWindow {
    fn default() -> Self {
        Self::new()
    }
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self::new()
    }
}

/// Ring slot of a packet number.
fn slot(pn: u64) -> u64 {
    pn % WINDOW_BITS
}

#[cfg(test)]
mod tests {
    use crate::test_rng::XorShift;
    extern crate std;

    use super::*;
    use std::collections::BTreeSet;
    use std::format;
    use std::string::ToString;

    const MAX_PN: u64 = (1 << 48) - 1;

    #[test]
    fn aged_window_refuses_late_frames_and_far_jumps() {
        let age = Duration::from_secs(2);
        let t = Instant::from_millis;
        let mut w = AgedWindow::new();
        w.accept(10, t(0), age).unwrap();
        w.accept(20, t(100), age).unwrap();
        // 15 was lost; arriving soon it is reordering, and accepted once.
        assert_eq!(w.check(15, t(1_900), age), Ok(()));
        // Once the note (taken at 0 with highest 10) is older than max_age, 5 is refused; 15 is
        // above that note and still accepted until a newer note ages.
        assert_eq!(w.check(5, t(2_000), age), Err(AgeError::Late));
        w.accept(30, t(2_100), age).unwrap(); // new note: (2.1 s, 30)
        assert_eq!(w.check(15, t(4_000), age), Ok(()));
        assert_eq!(w.check(15, t(4_100), age), Err(AgeError::Late));
        assert_eq!(w.check(25, t(60_000), age), Err(AgeError::Late), "a lost frame replayed a minute later");
        // One forged number far ahead is refused; the sender's real counting goes on.
        assert_eq!(w.check(1 << 47, t(4_200), age), Err(AgeError::TooFar));
        assert_eq!(w.accept(31 + MAX_PN_RATE, t(4_200), age), Ok(()), "within its rate since the note");
        assert_eq!(w.check(1 << 40, t(5_000), age), Err(AgeError::TooFar));
        assert_eq!(w.check(31 + MAX_PN_RATE, t(5_000), age), Err(AgeError::Replay(ReplayError::Duplicate)));
        // A sender silent for a long time may come back far ahead (its other traffic, a restart).
        assert_eq!(w.check(MAX_PN_RATE * 100, t(200_000), age), Ok(()));
    }

    #[test]
    fn empty_accepts_anything() {
        let w = ReplayWindow::new();
        assert_eq!(w.highest(), None);
        for pn in [0, 1, 1023, 1024, 1 << 47, MAX_PN] {
            assert_eq!(w.check(pn), Ok(()));
        }
        assert_eq!(ReplayWindow::default().highest(), None);
    }

    #[test]
    fn pn_zero_first() {
        let mut w = ReplayWindow::new();
        assert_eq!(w.accept(0), Ok(()));
        assert_eq!(w.highest(), Some(0));
        assert_eq!(w.check(0), Err(ReplayError::Duplicate));
        assert_eq!(w.accept(0), Err(ReplayError::Duplicate));
        assert_eq!(w.accept(1), Ok(()));
        assert_eq!(w.accept(0), Err(ReplayError::Duplicate));
    }

    #[test]
    fn in_order() {
        let mut w = ReplayWindow::new();
        for pn in 0..5000 {
            assert_eq!(w.check(pn), Ok(()));
            assert_eq!(w.accept(pn), Ok(()));
            assert_eq!(w.highest(), Some(pn));
        }
        for pn in 5000 - WINDOW_BITS..5000 {
            assert_eq!(w.check(pn), Err(ReplayError::Duplicate), "{pn}");
        }
        assert_eq!(w.check(5000 - WINDOW_BITS - 1), Err(ReplayError::TooOld));
    }

    #[test]
    fn out_of_order_within_window() {
        let mut w = ReplayWindow::new();
        assert_eq!(w.accept(100), Ok(()));
        assert_eq!(w.accept(90), Ok(()));
        assert_eq!(w.accept(99), Ok(()));
        assert_eq!(w.accept(95), Ok(()));
        assert_eq!(w.highest(), Some(100));
        assert_eq!(w.accept(90), Err(ReplayError::Duplicate));
        assert_eq!(w.accept(95), Err(ReplayError::Duplicate));
        assert_eq!(w.accept(91), Ok(()));
        assert_eq!(w.accept(0), Ok(()));
        assert_eq!(w.accept(0), Err(ReplayError::Duplicate));
        assert_eq!(w.accept(101), Ok(()));
        assert_eq!(w.accept(99), Err(ReplayError::Duplicate));
        assert_eq!(w.accept(98), Ok(()));
    }

    #[test]
    fn duplicate_of_highest() {
        let mut w = ReplayWindow::new();
        w.accept(7).unwrap();
        assert_eq!(w.check(7), Err(ReplayError::Duplicate));
        assert_eq!(w.accept(7), Err(ReplayError::Duplicate));
        assert_eq!(w.highest(), Some(7));
    }

    #[test]
    fn too_old_boundary() {
        let mut w = ReplayWindow::new();
        let h = 10_000;
        w.accept(h).unwrap();
        // highest-1023 ..= highest are tracked: exactly WINDOW_BITS numbers.
        assert_eq!(w.check(h - (WINDOW_BITS - 1)), Ok(()));
        assert_eq!(w.check(h - WINDOW_BITS), Err(ReplayError::TooOld));
        assert_eq!(w.check(h - WINDOW_BITS - 1), Err(ReplayError::TooOld));
        assert_eq!(w.check(0), Err(ReplayError::TooOld));
        assert_eq!(w.accept(h - WINDOW_BITS), Err(ReplayError::TooOld));
        assert_eq!(w.accept(h - (WINDOW_BITS - 1)), Ok(()));
        assert_eq!(w.accept(h - (WINDOW_BITS - 1)), Err(ReplayError::Duplicate));
        // Small highest: nothing can be too old yet.
        let mut w = ReplayWindow::new();
        w.accept(WINDOW_BITS - 1).unwrap();
        assert_eq!(w.accept(0), Ok(()));
        let mut w = ReplayWindow::new();
        w.accept(WINDOW_BITS).unwrap();
        assert_eq!(w.accept(0), Err(ReplayError::TooOld));
        assert_eq!(w.accept(1), Ok(()));
    }

    #[test]
    fn number_seen_becomes_too_old_after_slide() {
        let mut w = ReplayWindow::new();
        w.accept(5).unwrap();
        w.accept(5 + WINDOW_BITS - 1).unwrap();
        assert_eq!(w.check(5), Err(ReplayError::Duplicate));
        w.accept(5 + WINDOW_BITS).unwrap();
        assert_eq!(w.check(5), Err(ReplayError::TooOld));
    }

    #[test]
    fn jump_of_exactly_window_and_one_more() {
        for jump in [WINDOW_BITS - 1, WINDOW_BITS, WINDOW_BITS + 1] {
            let mut w = ReplayWindow::new();
            // Fill the whole window so stale bits would show up as duplicates.
            for pn in 0..WINDOW_BITS {
                w.accept(pn).unwrap();
            }
            let old = WINDOW_BITS - 1;
            let new = old + jump;
            assert_eq!(w.accept(new), Ok(()), "jump {jump}");
            assert_eq!(w.highest(), Some(new));
            // Every number still in the window except `new` is fresh unless it
            // was accepted before the jump.
            for pn in new - (WINDOW_BITS - 1)..new {
                let want = if pn <= old { Err(ReplayError::Duplicate) } else { Ok(()) };
                assert_eq!(w.check(pn), want, "jump {jump}, pn {pn}");
            }
            assert_eq!(w.check(new - WINDOW_BITS), Err(ReplayError::TooOld));
            for pn in new - (WINDOW_BITS - 1)..new {
                if pn > old {
                    assert_eq!(w.accept(pn), Ok(()), "jump {jump}, pn {pn}");
                }
            }
        }
    }

    #[test]
    fn huge_jumps() {
        let mut w = ReplayWindow::new();
        w.accept(3).unwrap();
        w.accept(1).unwrap();
        let big = 1u64 << 47;
        assert_eq!(w.accept(big), Ok(()));
        assert_eq!(w.highest(), Some(big));
        assert_eq!(w.check(3), Err(ReplayError::TooOld));
        // The slot shared with 3 and 1 (big % 1024 == 0) must not look seen.
        assert_eq!(w.accept(big + 1), Ok(()));
        assert_eq!(w.accept(big + 3), Ok(()));
        assert_eq!(w.accept(big - 1), Ok(()));
        assert_eq!(w.accept(big - 1), Err(ReplayError::Duplicate));
        assert_eq!(w.accept(MAX_PN), Ok(()));
        assert_eq!(w.check(MAX_PN), Err(ReplayError::Duplicate));
        assert_eq!(w.accept(MAX_PN - 1), Ok(()));
        assert_eq!(w.check(big), Err(ReplayError::TooOld));
        // Still correct beyond 48 bits, without overflow.
        assert_eq!(w.accept(u64::MAX), Ok(()));
        assert_eq!(w.accept(u64::MAX), Err(ReplayError::Duplicate));
        assert_eq!(w.accept(u64::MAX - 1), Ok(()));
        assert_eq!(w.check(MAX_PN), Err(ReplayError::TooOld));
    }

    #[test]
    fn check_does_not_mutate() {
        let mut w = ReplayWindow::new();
        let before = format!("{w:?}");
        assert_eq!(w.check(42), Ok(()));
        assert_eq!(format!("{w:?}"), before);
        assert_eq!(w.highest(), None);

        w.accept(2000).unwrap();
        w.accept(1500).unwrap();
        let before = format!("{w:?}");
        for pn in [0, 976, 977, 1500, 1501, 2000, 2001, 5000, 1 << 47] {
            let _ = w.check(pn);
        }
        assert_eq!(format!("{w:?}"), before);
        assert_eq!(w.check(2001), Ok(()));
        assert_eq!(w.check(2001), Ok(()));
        assert_eq!(w.highest(), Some(2000));
    }

    #[test]
    fn refused_accept_does_not_mutate() {
        let mut w = ReplayWindow::new();
        w.accept(3000).unwrap();
        w.accept(2999).unwrap();
        let before = format!("{w:?}");
        assert_eq!(w.accept(2999), Err(ReplayError::Duplicate));
        assert_eq!(w.accept(3000), Err(ReplayError::Duplicate));
        assert_eq!(w.accept(10), Err(ReplayError::TooOld));
        assert_eq!(format!("{w:?}"), before);
    }

    #[test]
    fn error_display() {
        assert!(ReplayError::TooOld.to_string().contains("too old"));
        assert!(ReplayError::Duplicate.to_string().contains("already"));
        let _: std::boxed::Box<dyn core::error::Error> = std::boxed::Box::new(ReplayError::Duplicate);
    }

    /// Obviously-correct reference: every number ever accepted, plus the highest.
    #[derive(Default)]
    struct Model {
        seen: BTreeSet<u64>,
        highest: Option<u64>,
    }

    impl Model {
        fn check(&self, pn: u64) -> Result<(), ReplayError> {
            match self.highest {
                None => Ok(()),
                Some(h) if pn > h => Ok(()),
                Some(h) if h - pn >= WINDOW_BITS => Err(ReplayError::TooOld),
                Some(_) if self.seen.contains(&pn) => Err(ReplayError::Duplicate),
                Some(_) => Ok(()),
            }
        }
        fn accept(&mut self, pn: u64) -> Result<(), ReplayError> {
            self.check(pn)?;
            self.seen.insert(pn);
            self.highest = Some(self.highest.map_or(pn, |h| h.max(pn)));
            Ok(())
        }
    }

    #[test]
    fn randomized_against_reference_model() {
        for seed in [1u64, 0x9E37_79B9_7F4A_7C15, 0xDEAD_BEEF, 42] {
            let mut rng = XorShift(seed);
            let mut w = ReplayWindow::new();
            let mut model = Model::default();
            for step in 0..5000 {
                let base = model.highest.unwrap_or(rng.below(1 << 20));
                // Mostly near the highest (reordering, duplicates, window
                // edge), sometimes forward jumps of every size.
                let pn = match rng.below(10) {
                    0..=3 => base.saturating_sub(rng.below(WINDOW_BITS + 64)),
                    4 => base.saturating_sub(WINDOW_BITS - 1 + rng.below(3)),
                    5..=6 => base + rng.below(8),
                    7 => base + rng.below(2 * WINDOW_BITS + 2),
                    8 => base + WINDOW_BITS - 1 + rng.below(3),
                    _ => {
                        if rng.below(50) == 0 {
                            base + rng.below(1 << 40)
                        } else {
                            base.saturating_sub(rng.below(4))
                        }
                    }
                }
                .min(MAX_PN);
                let checked = w.check(pn);
                assert_eq!(checked, model.check(pn), "seed {seed} step {step} check {pn}");
                if rng.below(4) != 0 {
                    let got = w.accept(pn);
                    assert_eq!(got, model.accept(pn), "seed {seed} step {step} accept {pn}");
                    assert_eq!(got, checked);
                }
                assert_eq!(w.highest(), model.highest);
            }
            // Finally, the whole window agrees with the model.
            let h = model.highest.unwrap();
            for pn in h.saturating_sub(WINDOW_BITS + 5)..=h + 5 {
                assert_eq!(w.check(pn), model.check(pn), "seed {seed} final {pn}");
            }
        }
    }
}
