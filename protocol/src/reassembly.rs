//! Bounded reassembly of best-effort fragmented messages.
//!
//! A message larger than one datagram travels as `count` fragments, indexes `0..count`, tagged
//! with a per-sender `msg_id`. Every fragment but the last carries the same number of bytes (the
//! chunk size); the last one may be shorter. Delivery is best effort: nothing is retransmitted,
//! so a missing fragment loses the whole message, and incomplete messages are dropped once they
//! are [`ReassemblyLimits::timeout`] old (counted from their first fragment, so a slow trickle of
//! fragments cannot pin memory forever).
//!
//! Input comes from the network, so the [`Reassembler`] trusts nothing: duplicates, reordering
//! and fragments that contradict each other are all handled without panicking, and memory never
//! grows past [`ReassemblyLimits`]. A fragment that contradicts what is already known about its
//! message drops that partial message and is reported as [`FragmentOutcome::Rejected`].
//!
//! Fragments are checked against these rules:
//! - `count == 0` or `index >= count`: [`RejectReason::Inconsistent`].
//! - When `count > 1`, every fragment must be non-empty (a sender never needs an empty one, and
//!   this keeps per-fragment bookkeeping proportional to the bytes buffered).
//! - All fragments of a message agree on `count`; non-last fragments all have the same length;
//!   the last one is not longer than the others; a re-sent fragment carries the same bytes.
//!   Otherwise [`RejectReason::Inconsistent`].
//! - The smallest total size compatible with what is known must not exceed
//!   [`ReassemblyLimits::max_message`], else [`RejectReason::TooLarge`]. Before the last fragment
//!   is seen only a lower bound, `(count - 1) * chunk + 1`, can be checked (an upper bound such as
//!   `count * chunk` would refuse a message of exactly `max_message` bytes whose last fragment is
//!   short); once both the chunk size and the last fragment's length are known, the check is exact.
//!   Either way a huge `count` with tiny fragments is refused on its first fragment.
//!
//! Completed messages are not remembered: a fragment arriving after its message completed starts
//! a new partial message, which times out harmlessly. Datagram-level replay protection already
//! drops network duplicates before they get here.

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::vec::Vec;
use core::time::Duration;

use crate::time::Instant;

/// Limits of a [`Reassembler`]: everything it may hold at once, whatever the input.
#[derive(Debug, Clone, Copy)]
pub struct ReassemblyLimits {
    /// Largest reassembled message, in bytes.
    pub max_message: usize,
    /// Most messages in progress (partially received) at once, across all senders.
    pub max_partial: usize,
    /// Most fragment bytes buffered across all partial messages.
    pub max_bytes: usize,
    /// A partial message is dropped this long after its first fragment arrived.
    pub timeout: Duration,
}

/// What happened to one fragment given to [`Reassembler::insert`].
#[derive(Debug, PartialEq, Eq)]
pub enum FragmentOutcome {
    /// This fragment completed its message, returned whole.
    Complete(Vec<u8>),
    /// The fragment was stored; its message still misses fragments.
    Pending,
    /// The same fragment (same index, same bytes) was already stored; nothing changed.
    Duplicate,
    /// The fragment was refused; if it contradicted a partial message, that message was dropped.
    Rejected(RejectReason),
}

/// Why a fragment was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    /// The fragment is malformed or contradicts earlier fragments of its message (count, index,
    /// length or content); its partial message, if any, was dropped.
    Inconsistent,
    /// The message would exceed [`ReassemblyLimits::max_message`]; its partial message, if any,
    /// was dropped.
    TooLarge,
    /// No room even after evicting every older partial message (or `max_partial` is 0); if the
    /// fragment belonged to a partial message, that message was dropped since it cannot complete.
    NoRoom,
}

/// One message in progress.
#[derive(Debug)]
struct Partial {
    /// When its first fragment arrived; it expires at `started + timeout`.
    started: Instant,
    /// Tie-breaker among partials started at the same instant (insertion order).
    seq: u64,
    /// Number of fragments, fixed by the first fragment seen.
    count: u32,
    /// Length of every non-last fragment, once one was seen.
    chunk_len: Option<usize>,
    /// Length of the last fragment, once it was seen.
    last_len: Option<usize>,
    /// Fragments received so far, by index.
    fragments: BTreeMap<u32, Vec<u8>>,
    /// Sum of the lengths in `fragments`.
    bytes: usize,
}

impl Partial {
    /// Position of this partial in the age index.
    fn age_key<K: Copy>(&self, key: (K, u32)) -> (Instant, u64, K, u32) {
        (self.started, self.seq, key.0, key.1)
    }
}

/// Reassembles fragmented messages from many senders with bounded memory.
///
/// `K` identifies the sender (e.g. a node id); a message is identified by `(sender, msg_id)`.
/// Feed every fragment to [`insert`](Self::insert), and call [`expire`](Self::expire) when the
/// time returned by [`next_expiry`](Self::next_expiry) has come.
#[derive(Debug)]
pub struct Reassembler<K: Ord + Copy> {
    /// The configured bounds.
    limits: ReassemblyLimits,
    /// Messages in progress.
    partials: BTreeMap<(K, u32), Partial>,
    /// The same messages ordered by start time (then insertion order): oldest first.
    by_age: BTreeSet<(Instant, u64, K, u32)>,
    /// Sum of `Partial::bytes`.
    bytes: usize,
    /// Next insertion sequence number.
    next_seq: u64,
    /// Partial messages evicted to make room for newer ones (lost for good).
    evicted: u64,
}

impl<K: Ord + Copy> Reassembler<K> {
    /// Creates an empty reassembler bounded by `limits`.
    pub fn new(limits: ReassemblyLimits) -> Self {
        Reassembler { limits, partials: BTreeMap::new(), by_age: BTreeSet::new(), bytes: 0, next_seq: 0, evicted: 0 }
    }

    /// Takes one fragment `index` of `count` of message `msg_id` from `sender`.
    ///
    /// `count == 1` completes at once. A fragment that would complete its message never needs
    /// room. Otherwise, when storing the fragment would exceed `max_partial` (a new message) or
    /// `max_bytes`, the oldest partial messages (by start time, and only those older than this
    /// fragment's message) are evicted until it fits; if even evicting all of them would not make
    /// room, nothing is evicted and the fragment is rejected with [`RejectReason::NoRoom`].
    pub fn insert(
        &mut self,
        now: Instant,
        sender: K,
        msg_id: u32,
        index: u32,
        count: u32,
        chunk: &[u8],
    ) -> FragmentOutcome {
        let key = (sender, msg_id);
        let len = chunk.len();

        if count == 0 || index >= count || (count > 1 && len == 0) {
            return self.reject(key, RejectReason::Inconsistent);
        }
        if count == 1 {
            // A single-fragment message cannot share its id with a partial one.
            if self.partials.contains_key(&key) {
                return self.reject(key, RejectReason::Inconsistent);
            }
            if len > self.limits.max_message {
                return FragmentOutcome::Rejected(RejectReason::TooLarge);
            }
            return FragmentOutcome::Complete(chunk.to_vec());
        }

        let is_last = index == count - 1;
        let (mut chunk_len, mut last_len, received) = match self.partials.get(&key) {
            None => (None, None, 0usize),
            Some(p) => {
                if p.count != count {
                    return self.reject(key, RejectReason::Inconsistent);
                }
                if let Some(stored) = p.fragments.get(&index) {
                    if stored.as_slice() == chunk {
                        return FragmentOutcome::Duplicate;
                    }
                    return self.reject(key, RejectReason::Inconsistent);
                }
                (p.chunk_len, p.last_len, p.fragments.len())
            }
        };

        // Length rules: non-last fragments agree with each other, the last is not longer.
        if is_last {
            last_len = Some(len);
        } else {
            match chunk_len {
                Some(c) if c != len => return self.reject(key, RejectReason::Inconsistent),
                _ => chunk_len = Some(len),
            }
        }
        if let (Some(c), Some(l)) = (chunk_len, last_len) {
            if l > c {
                return self.reject(key, RejectReason::Inconsistent);
            }
        }
        if min_total(count, chunk_len, last_len) > self.limits.max_message {
            return self.reject(key, RejectReason::TooLarge);
        }

        // `received` counts distinct indexes below `count`, so this is the last missing one.
        if received.saturating_add(1) == usize::try_from(count).unwrap_or(usize::MAX) {
            return match self.remove(key) {
                Some(p) => FragmentOutcome::Complete(assemble(p, index, chunk)),
                None => FragmentOutcome::Rejected(RejectReason::Inconsistent),
            };
        }

        let own_age = self.partials.get(&key).map(|p| (p.started, p.seq));
        if !self.make_room(own_age, len) {
            self.remove(key);
            return FragmentOutcome::Rejected(RejectReason::NoRoom);
        }

        let partial = match self.partials.get_mut(&key) {
            Some(p) => p,
            None => {
                let seq = self.next_seq;
                self.next_seq = self.next_seq.wrapping_add(1);
                let p = Partial {
                    started: now,
                    seq,
                    count,
                    chunk_len: None,
                    last_len: None,
                    fragments: BTreeMap::new(),
                    bytes: 0,
                };
                self.by_age.insert(p.age_key(key));
                self.partials.entry(key).or_insert(p)
            }
        };
        partial.chunk_len = chunk_len;
        partial.last_len = last_len;
        partial.fragments.insert(index, chunk.to_vec());
        partial.bytes += len;
        self.bytes += len;
        FragmentOutcome::Pending
    }

    /// Drops partial messages older than the timeout (at or after `started + timeout`); returns
    /// how many were dropped.
    pub fn expire(&mut self, now: Instant) -> usize {
        let mut dropped = 0;
        while let Some(&(started, _, sender, msg_id)) = self.by_age.first() {
            if now < started + self.limits.timeout {
                break;
            }
            self.remove((sender, msg_id));
            dropped += 1;
        }
        dropped
    }

    /// Earliest time a partial message will expire (for the node's timer).
    pub fn next_expiry(&self) -> Option<Instant> {
        self.by_age.first().map(|&(started, ..)| started + self.limits.timeout)
    }

    /// Partial messages evicted so far to make room for newer ones.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// Drops every partial message from `sender` (it restarted or left).
    pub fn forget(&mut self, sender: K) {
        let keys: Vec<(K, u32)> = self.partials.range((sender, 0)..=(sender, u32::MAX)).map(|(k, _)| *k).collect();
        for key in keys {
            self.remove(key);
        }
    }

    /// Bytes currently buffered (for tests and statistics).
    pub fn buffered_bytes(&self) -> usize {
        self.bytes
    }

    /// Number of messages in progress.
    pub fn partial_count(&self) -> usize {
        self.partials.len()
    }

    /// Drops the partial message `key`, if any, and reports `reason`.
    fn reject(&mut self, key: (K, u32), reason: RejectReason) -> FragmentOutcome {
        self.remove(key);
        FragmentOutcome::Rejected(reason)
    }

    /// Removes a partial message and its accounting.
    fn remove(&mut self, key: (K, u32)) -> Option<Partial> {
        let p = self.partials.remove(&key)?;
        self.by_age.remove(&p.age_key(key));
        self.bytes = self.bytes.saturating_sub(p.bytes);
        Some(p)
    }

    /// Evicts the oldest partial messages older than `own_age` (all of them for a new message,
    /// `own_age == None`) until one more fragment of `len` bytes fits, plus a new partial slot if
    /// `own_age` is `None`. Evicts nothing and returns false if that is impossible.
    fn make_room(&mut self, own_age: Option<(Instant, u64)>, len: usize) -> bool {
        let slots_needed = usize::from(own_age.is_none());
        let fits = |partials: usize, bytes: usize| {
            partials.saturating_add(slots_needed) <= self.limits.max_partial
                && bytes.saturating_add(len) <= self.limits.max_bytes
        };
        // First pass: how many of the oldest partials must go?
        let mut partials = self.partials.len();
        let mut bytes = self.bytes;
        let mut victims = 0usize;
        for &(started, seq, sender, msg_id) in &self.by_age {
            if fits(partials, bytes) {
                break;
            }
            if own_age.is_some_and(|own| (started, seq) >= own) {
                break;
            }
            let freed = self.partials.get(&(sender, msg_id)).map_or(0, |p| p.bytes);
            partials -= 1;
            bytes = bytes.saturating_sub(freed);
            victims += 1;
        }
        if !fits(partials, bytes) {
            return false;
        }
        for _ in 0..victims {
            if let Some(&(_, _, sender, msg_id)) = self.by_age.first() {
                self.remove((sender, msg_id));
                self.evicted += 1;
            }
        }
        true
    }
}

/// Smallest total size of a message of `count > 1` fragments compatible with what is known.
fn min_total(count: u32, chunk_len: Option<usize>, last_len: Option<usize>) -> usize {
    let others = usize::try_from(count - 1).unwrap_or(usize::MAX);
    match (chunk_len, last_len) {
        (Some(c), Some(l)) => others.saturating_mul(c).saturating_add(l),
        // The last fragment holds at least one byte.
        (Some(c), None) => others.saturating_mul(c).saturating_add(1),
        // The chunk size is at least the last fragment's length, and at least one byte.
        (None, Some(l)) => others.saturating_mul(l.max(1)).saturating_add(l),
        (None, None) => others.saturating_add(1),
    }
}

/// Concatenates the stored fragments of `p` plus the final one, `index`/`chunk`, in order.
fn assemble(p: Partial, index: u32, chunk: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(p.bytes.saturating_add(chunk.len()));
    let mut pending = Some(chunk);
    for (i, fragment) in p.fragments {
        if i > index {
            if let Some(c) = pending.take() {
                message.extend_from_slice(c);
            }
        }
        message.extend_from_slice(&fragment);
    }
    if let Some(c) = pending {
        message.extend_from_slice(c);
    }
    message
}

#[cfg(test)]
mod tests {
    use crate::test_rng::XorShift;
    extern crate std;

    use super::*;
    use std::vec;

    const T0: Instant = Instant::from_millis(1000);

    fn limits() -> ReassemblyLimits {
        ReassemblyLimits { max_message: 1000, max_partial: 4, max_bytes: 600, timeout: Duration::from_millis(500) }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// A message of `len` bytes, every byte different-ish so ordering mistakes show.
    fn message(len: usize, salt: u8) -> Vec<u8> {
        (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(salt)).collect()
    }

    /// Splits `msg` into fragments of `chunk` bytes: (index, count, bytes).
    fn fragments(msg: &[u8], chunk: usize) -> Vec<(u32, u32, Vec<u8>)> {
        let parts: Vec<&[u8]> = msg.chunks(chunk).collect();
        let count = parts.len() as u32;
        parts.into_iter().enumerate().map(|(i, p)| (i as u32, count, p.to_vec())).collect()
    }

    #[test]
    fn in_order() {
        let mut r = Reassembler::new(limits());
        let msg = message(250, 1);
        let frags = fragments(&msg, 100);
        assert_eq!(frags.len(), 3);
        assert_eq!(r.insert(T0, 1u8, 7, 0, 3, &frags[0].2), FragmentOutcome::Pending);
        assert_eq!(r.buffered_bytes(), 100);
        assert_eq!(r.insert(T0, 1u8, 7, 1, 3, &frags[1].2), FragmentOutcome::Pending);
        assert_eq!(r.buffered_bytes(), 200);
        assert_eq!(r.partial_count(), 1);
        assert_eq!(r.insert(T0, 1u8, 7, 2, 3, &frags[2].2), FragmentOutcome::Complete(msg));
        assert_eq!(r.buffered_bytes(), 0);
        assert_eq!(r.partial_count(), 0);
        assert_eq!(r.next_expiry(), None);
    }

    #[test]
    fn reverse_order() {
        let mut r = Reassembler::new(limits());
        let msg = message(430, 2);
        let frags = fragments(&msg, 100);
        let mut outcome = FragmentOutcome::Pending;
        for (i, c, bytes) in frags.iter().rev() {
            assert_eq!(outcome, FragmentOutcome::Pending);
            outcome = r.insert(T0, 1u8, 1, *i, *c, bytes);
        }
        assert_eq!(outcome, FragmentOutcome::Complete(msg));
        assert_eq!(r.buffered_bytes(), 0);
    }

    #[test]
    fn middle_fragment_last() {
        let mut r = Reassembler::new(limits());
        let msg = message(250, 3);
        let f = fragments(&msg, 100);
        assert_eq!(r.insert(T0, 1u8, 1, 2, 3, &f[2].2), FragmentOutcome::Pending);
        assert_eq!(r.insert(T0, 1u8, 1, 0, 3, &f[0].2), FragmentOutcome::Pending);
        assert_eq!(r.insert(T0, 1u8, 1, 1, 3, &f[1].2), FragmentOutcome::Complete(msg));
    }

    #[test]
    fn single_fragment_completes_immediately() {
        let mut r = Reassembler::new(limits());
        assert_eq!(r.insert(T0, 1u8, 1, 0, 1, b"hello"), FragmentOutcome::Complete(b"hello".to_vec()));
        assert_eq!(r.insert(T0, 1u8, 2, 0, 1, b""), FragmentOutcome::Complete(Vec::new()));
        assert_eq!(r.partial_count(), 0);
        assert_eq!(r.buffered_bytes(), 0);
    }

    #[test]
    fn duplicates_are_not_double_counted() {
        let mut r = Reassembler::new(limits());
        let msg = message(250, 4);
        let f = fragments(&msg, 100);
        assert_eq!(r.insert(T0, 1u8, 1, 0, 3, &f[0].2), FragmentOutcome::Pending);
        assert_eq!(r.insert(T0, 1u8, 1, 0, 3, &f[0].2), FragmentOutcome::Duplicate);
        assert_eq!(r.buffered_bytes(), 100);
        assert_eq!(r.insert(T0, 1u8, 1, 2, 3, &f[2].2), FragmentOutcome::Pending);
        assert_eq!(r.insert(T0, 1u8, 1, 2, 3, &f[2].2), FragmentOutcome::Duplicate);
        assert_eq!(r.buffered_bytes(), 150);
        assert_eq!(r.partial_count(), 1);
        assert_eq!(r.insert(T0, 1u8, 1, 1, 3, &f[1].2), FragmentOutcome::Complete(msg));
        assert_eq!(r.buffered_bytes(), 0);
    }

    #[test]
    fn conflicting_duplicate_is_inconsistent() {
        let mut r = Reassembler::new(limits());
        assert_eq!(r.insert(T0, 1u8, 1, 0, 3, &[1; 100]), FragmentOutcome::Pending);
        assert_eq!(r.insert(T0, 1u8, 1, 0, 3, &[2; 100]), FragmentOutcome::Rejected(RejectReason::Inconsistent));
        assert_eq!(r.partial_count(), 0);
        assert_eq!(r.buffered_bytes(), 0);
    }

    #[test]
    fn interleaved_senders_and_ids() {
        let mut r = Reassembler::new(ReassemblyLimits { max_partial: 8, max_bytes: 10_000, ..limits() });
        let msgs = [(1u8, 1u32, message(300, 10)), (1, 2, message(250, 11)), (2, 1, message(120, 12))];
        let frags: Vec<_> = msgs.iter().map(|(_, _, m)| fragments(m, 100)).collect();
        let mut done = Vec::new();
        for step in 0..3 {
            for (k, (sender, id, _)) in msgs.iter().enumerate() {
                if let Some((i, c, bytes)) = frags[k].get(step) {
                    match r.insert(T0, *sender, *id, *i, *c, bytes) {
                        FragmentOutcome::Complete(m) => done.push((*sender, *id, m)),
                        FragmentOutcome::Pending => {}
                        other => panic!("unexpected {other:?}"),
                    }
                }
            }
        }
        done.sort();
        let mut expected: Vec<_> = msgs.to_vec();
        expected.sort();
        assert_eq!(done, expected);
        assert_eq!(r.buffered_bytes(), 0);
    }

    #[test]
    fn timeout_expiry_and_next_expiry() {
        let mut r = Reassembler::new(limits());
        assert_eq!(r.next_expiry(), None);
        assert_eq!(r.insert(T0, 1u8, 1, 0, 3, &[0; 100]), FragmentOutcome::Pending);
        assert_eq!(r.insert(T0 + ms(100), 2u8, 1, 0, 3, &[0; 50]), FragmentOutcome::Pending);
        // A later fragment does not extend the first message's lifetime.
        assert_eq!(r.insert(T0 + ms(200), 1u8, 1, 1, 3, &[0; 100]), FragmentOutcome::Pending);
        assert_eq!(r.next_expiry(), Some(T0 + ms(500)));
        assert_eq!(r.expire(T0 + ms(499)), 0);
        assert_eq!(r.partial_count(), 2);
        assert_eq!(r.expire(T0 + ms(500)), 1);
        assert_eq!(r.buffered_bytes(), 50);
        assert_eq!(r.next_expiry(), Some(T0 + ms(600)));
        assert_eq!(r.expire(T0 + ms(10_000)), 1);
        assert_eq!(r.buffered_bytes(), 0);
        assert_eq!(r.partial_count(), 0);
        assert_eq!(r.next_expiry(), None);
    }

    #[test]
    fn forget_drops_only_that_sender() {
        let mut r = Reassembler::new(limits());
        r.insert(T0, 1u8, 1, 0, 3, &[0; 100]);
        r.insert(T0, 1u8, 2, 0, 3, &[0; 100]);
        r.insert(T0, 2u8, 1, 0, 3, &[0; 30]);
        assert_eq!(r.partial_count(), 3);
        r.forget(1);
        assert_eq!(r.partial_count(), 1);
        assert_eq!(r.buffered_bytes(), 30);
        r.forget(2);
        assert_eq!(r.buffered_bytes(), 0);
        assert_eq!(r.next_expiry(), None);
    }

    #[test]
    fn eviction_of_oldest_on_partial_limit() {
        let mut r = Reassembler::new(ReassemblyLimits { max_partial: 2, ..limits() });
        assert_eq!(r.insert(T0 + ms(5), 1u8, 1, 0, 2, &[1; 10]), FragmentOutcome::Pending);
        assert_eq!(r.insert(T0, 2u8, 1, 0, 2, &[2; 10]), FragmentOutcome::Pending);
        // Full: the new message evicts the one started first (sender 2, at T0).
        assert_eq!(r.insert(T0 + ms(10), 3u8, 1, 0, 2, &[3; 10]), FragmentOutcome::Pending);
        assert_eq!(r.partial_count(), 2);
        assert_eq!(r.buffered_bytes(), 20);
        assert_eq!(r.insert(T0 + ms(10), 1u8, 1, 1, 2, &[1; 5]), FragmentOutcome::Complete(vec![1; 15]));
        assert_eq!(r.insert(T0 + ms(10), 3u8, 1, 1, 2, &[3; 10]), FragmentOutcome::Complete(vec![3; 20]));
        // Sender 2's message is gone: its last fragment starts a fresh partial instead of completing.
        assert_eq!(r.insert(T0 + ms(10), 2u8, 1, 1, 2, &[2; 10]), FragmentOutcome::Pending);
        assert_eq!(r.buffered_bytes(), 10);
    }

    #[test]
    fn eviction_of_oldest_on_byte_limit() {
        let mut r = Reassembler::new(limits()); // 600 bytes
        assert_eq!(r.insert(T0, 1u8, 1, 0, 5, &[0; 200]), FragmentOutcome::Pending);
        assert_eq!(r.insert(T0 + ms(1), 2u8, 1, 0, 5, &[0; 200]), FragmentOutcome::Pending);
        assert_eq!(r.insert(T0 + ms(2), 3u8, 1, 0, 5, &[0; 150]), FragmentOutcome::Pending);
        assert_eq!(r.buffered_bytes(), 550);
        // 550 + 200 > 600: evicting sender 1 (oldest) suffices.
        assert_eq!(r.insert(T0 + ms(3), 4u8, 1, 0, 5, &[0; 200]), FragmentOutcome::Pending);
        assert_eq!(r.buffered_bytes(), 550);
        assert_eq!(r.partial_count(), 3);
        assert_eq!(r.next_expiry(), Some(T0 + ms(1) + ms(500)));
        // 550 + 300 needs two evictions (senders 2 and 3).
        assert_eq!(r.insert(T0 + ms(4), 5u8, 1, 0, 3, &[0; 300]), FragmentOutcome::Pending);
        assert_eq!(r.buffered_bytes(), 500);
        assert_eq!(r.partial_count(), 2);
        assert_eq!(r.next_expiry(), Some(T0 + ms(3) + ms(500)));
    }

    #[test]
    fn growing_message_only_evicts_older_ones() {
        let mut r = Reassembler::new(ReassemblyLimits { max_bytes: 500, ..limits() });
        assert_eq!(r.insert(T0, 1u8, 1, 0, 5, &[0; 200]), FragmentOutcome::Pending);
        assert_eq!(r.insert(T0 + ms(1), 2u8, 1, 0, 5, &[0; 200]), FragmentOutcome::Pending);
        // Sender 2's message grows past the limit: the older message of sender 1 goes.
        assert_eq!(r.insert(T0 + ms(2), 2u8, 1, 1, 5, &[0; 200]), FragmentOutcome::Pending);
        assert_eq!(r.partial_count(), 1);
        assert_eq!(r.buffered_bytes(), 400);
        assert_eq!(r.insert(T0 + ms(3), 3u8, 1, 0, 5, &[0; 100]), FragmentOutcome::Pending);
        assert_eq!(r.buffered_bytes(), 500);
        // Sender 2's message is now the oldest: it may not evict the newer one of sender 3, so it
        // cannot grow and is dropped (it could never complete).
        assert_eq!(r.insert(T0 + ms(4), 2u8, 1, 2, 5, &[0; 200]), FragmentOutcome::Rejected(RejectReason::NoRoom));
        assert_eq!(r.partial_count(), 1);
        assert_eq!(r.buffered_bytes(), 100);
        assert_eq!(r.next_expiry(), Some(T0 + ms(3) + ms(500)));
    }

    #[test]
    fn futile_eviction_evicts_nothing() {
        let mut r = Reassembler::new(ReassemblyLimits { max_bytes: 500, ..limits() });
        assert_eq!(r.insert(T0, 1u8, 1, 0, 5, &[0; 100]), FragmentOutcome::Pending);
        assert_eq!(r.insert(T0 + ms(1), 2u8, 1, 0, 3, &[0; 300]), FragmentOutcome::Pending);
        // 300 + 300 > 500 even without sender 1's message: sender 1 keeps its message.
        assert_eq!(r.insert(T0 + ms(2), 2u8, 1, 1, 3, &[0; 300]), FragmentOutcome::Rejected(RejectReason::NoRoom));
        assert_eq!(r.partial_count(), 1);
        assert_eq!(r.buffered_bytes(), 100);
        assert_eq!(r.insert(T0 + ms(3), 1u8, 1, 1, 5, &[0; 100]), FragmentOutcome::Pending);
        assert_eq!(r.buffered_bytes(), 200);
    }

    #[test]
    fn no_room_when_eviction_cannot_help() {
        let mut r = Reassembler::new(ReassemblyLimits { max_message: 10_000, ..limits() });
        assert_eq!(r.insert(T0, 1u8, 1, 0, 5, &[0; 100]), FragmentOutcome::Pending);
        // A single fragment larger than max_bytes never fits; nothing is evicted for it.
        assert_eq!(r.insert(T0, 2u8, 1, 0, 5, &[0; 601]), FragmentOutcome::Rejected(RejectReason::NoRoom));
        assert_eq!(r.partial_count(), 1);
        assert_eq!(r.buffered_bytes(), 100);
        let mut r = Reassembler::new(ReassemblyLimits { max_partial: 0, ..limits() });
        assert_eq!(r.insert(T0, 1u8, 1, 0, 2, &[0; 10]), FragmentOutcome::Rejected(RejectReason::NoRoom));
        // Single-fragment messages need no room.
        assert_eq!(r.insert(T0, 1u8, 1, 0, 1, &[0; 10]), FragmentOutcome::Complete(vec![0; 10]));
    }

    #[test]
    fn completing_fragment_needs_no_room() {
        let mut r = Reassembler::new(ReassemblyLimits { max_bytes: 300, ..limits() });
        assert_eq!(r.insert(T0, 1u8, 1, 0, 4, &[0; 100]), FragmentOutcome::Pending);
        assert_eq!(r.insert(T0, 1u8, 1, 1, 4, &[0; 100]), FragmentOutcome::Pending);
        assert_eq!(r.insert(T0, 1u8, 1, 2, 4, &[0; 100]), FragmentOutcome::Pending);
        assert_eq!(r.insert(T0, 1u8, 1, 3, 4, &[0; 100]), FragmentOutcome::Complete(vec![0; 400]));
    }

    #[test]
    fn rejects_zero_count_and_bad_index() {
        let mut r = Reassembler::new(limits());
        assert_eq!(r.insert(T0, 1u8, 1, 0, 0, b"x"), FragmentOutcome::Rejected(RejectReason::Inconsistent));
        assert_eq!(r.insert(T0, 1u8, 1, 3, 3, b"x"), FragmentOutcome::Rejected(RejectReason::Inconsistent));
        assert_eq!(r.insert(T0, 1u8, 1, u32::MAX, 1, b"x"), FragmentOutcome::Rejected(RejectReason::Inconsistent));
        // An index out of range also drops the message in progress.
        assert_eq!(r.insert(T0, 1u8, 1, 0, 3, &[0; 10]), FragmentOutcome::Pending);
        assert_eq!(r.insert(T0, 1u8, 1, 5, 3, &[0; 10]), FragmentOutcome::Rejected(RejectReason::Inconsistent));
        assert_eq!(r.partial_count(), 0);
        assert_eq!(r.buffered_bytes(), 0);
    }

    #[test]
    fn rejects_empty_fragment_of_multi_fragment_message() {
        let mut r = Reassembler::new(limits());
        assert_eq!(r.insert(T0, 1u8, 1, 0, 3, b""), FragmentOutcome::Rejected(RejectReason::Inconsistent));
        assert_eq!(r.insert(T0, 1u8, 1, 2, 3, b""), FragmentOutcome::Rejected(RejectReason::Inconsistent));
        assert_eq!(r.partial_count(), 0);
    }

    #[test]
    fn rejects_count_mismatch() {
        let mut r = Reassembler::new(limits());
        assert_eq!(r.insert(T0, 1u8, 1, 0, 3, &[0; 10]), FragmentOutcome::Pending);
        assert_eq!(r.insert(T0, 1u8, 1, 1, 4, &[0; 10]), FragmentOutcome::Rejected(RejectReason::Inconsistent));
        assert_eq!(r.partial_count(), 0);
        assert_eq!(r.buffered_bytes(), 0);
        // count == 1 for an id that has a partial message in progress.
        assert_eq!(r.insert(T0, 1u8, 2, 0, 3, &[0; 10]), FragmentOutcome::Pending);
        assert_eq!(r.insert(T0, 1u8, 2, 0, 1, &[0; 10]), FragmentOutcome::Rejected(RejectReason::Inconsistent));
        assert_eq!(r.partial_count(), 0);
    }

    #[test]
    fn rejects_chunk_length_mismatch() {
        let mut r = Reassembler::new(limits());
        assert_eq!(r.insert(T0, 1u8, 1, 0, 4, &[0; 10]), FragmentOutcome::Pending);
        assert_eq!(r.insert(T0, 1u8, 1, 1, 4, &[0; 11]), FragmentOutcome::Rejected(RejectReason::Inconsistent));
        assert_eq!(r.partial_count(), 0);
        // Last fragment longer than the chunk size, seen after a chunk.
        assert_eq!(r.insert(T0, 1u8, 2, 0, 4, &[0; 10]), FragmentOutcome::Pending);
        assert_eq!(r.insert(T0, 1u8, 2, 3, 4, &[0; 11]), FragmentOutcome::Rejected(RejectReason::Inconsistent));
        // ... and seen before a chunk.
        assert_eq!(r.insert(T0, 1u8, 3, 3, 4, &[0; 11]), FragmentOutcome::Pending);
        assert_eq!(r.insert(T0, 1u8, 3, 1, 4, &[0; 10]), FragmentOutcome::Rejected(RejectReason::Inconsistent));
        assert_eq!(r.partial_count(), 0);
        assert_eq!(r.buffered_bytes(), 0);
    }

    #[test]
    fn rejects_too_large() {
        let mut r = Reassembler::new(ReassemblyLimits { max_message: 250, max_bytes: 10_000, ..limits() });
        // Lower bound (3 - 1) * 200 + 1 > 250.
        assert_eq!(r.insert(T0, 1u8, 1, 0, 3, &[0; 200]), FragmentOutcome::Rejected(RejectReason::TooLarge));
        // Boundary: 2 * 125 + 1 = 251 > 250, but 2 * 124 + 1 = 249 may still fit.
        assert_eq!(r.insert(T0, 1u8, 6, 0, 3, &[0; 125]), FragmentOutcome::Rejected(RejectReason::TooLarge));
        assert_eq!(r.insert(T0, 1u8, 6, 0, 3, &[0; 124]), FragmentOutcome::Pending);
        r.forget(1);
        // Only the last seen: at least 2 * 100 + 100 > 250.
        assert_eq!(r.insert(T0, 1u8, 2, 2, 3, &[0; 100]), FragmentOutcome::Rejected(RejectReason::TooLarge));
        // Huge counts with tiny fragments.
        assert_eq!(r.insert(T0, 1u8, 3, 0, u32::MAX, &[0; 1]), FragmentOutcome::Rejected(RejectReason::TooLarge));
        // A single fragment larger than max_message.
        assert_eq!(r.insert(T0, 1u8, 4, 0, 1, &[0; 251]), FragmentOutcome::Rejected(RejectReason::TooLarge));
        // Exact check once both lengths are known: 2 * 100 + 60 > 250, dropping the partial.
        assert_eq!(r.insert(T0, 1u8, 5, 0, 3, &[0; 100]), FragmentOutcome::Pending);
        assert_eq!(r.insert(T0, 1u8, 5, 2, 3, &[0; 60]), FragmentOutcome::Rejected(RejectReason::TooLarge));
        assert_eq!(r.partial_count(), 0);
        assert_eq!(r.buffered_bytes(), 0);
    }

    #[test]
    fn message_of_exactly_max_size_is_accepted() {
        let mut r = Reassembler::new(ReassemblyLimits { max_message: 250, max_bytes: 10_000, ..limits() });
        let msg = message(250, 9);
        let f = fragments(&msg, 100);
        assert_eq!(r.insert(T0, 1u8, 1, 0, 3, &f[0].2), FragmentOutcome::Pending);
        assert_eq!(r.insert(T0, 1u8, 1, 1, 3, &f[1].2), FragmentOutcome::Pending);
        assert_eq!(r.insert(T0, 1u8, 1, 2, 3, &f[2].2), FragmentOutcome::Complete(msg));
    }

    impl<K: Ord + Copy> Reassembler<K> {
        /// Recomputes the accounting from scratch and checks it against the limits.
        fn check_invariants(&self) {
            let bytes: usize = self.partials.values().map(|p| p.bytes).sum();
            let fragment_bytes: usize = self.partials.values().flat_map(|p| p.fragments.values()).map(Vec::len).sum();
            assert_eq!(bytes, self.bytes);
            assert_eq!(fragment_bytes, self.bytes);
            assert_eq!(self.by_age.len(), self.partials.len());
            assert!(self.partials.len() <= self.limits.max_partial);
            assert!(self.bytes <= self.limits.max_bytes);
            for p in self.partials.values() {
                assert!(p.fragments.len() < p.count as usize);
                assert!(p.fragments.keys().all(|&i| i < p.count));
            }
        }
    }

    #[test]
    fn random_fragments_never_exceed_limits() {
        let lim = ReassemblyLimits { max_message: 200, max_partial: 5, max_bytes: 300, timeout: ms(50) };
        let mut r = Reassembler::new(lim);
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        let mut now = T0;
        let mut seen = [0usize; 4];
        for step in 0..200_000 {
            now += Duration::from_micros(rng.below(500));
            let sender = rng.below(4) as u8;
            let msg_id = rng.below(3) as u32;
            let count = rng.below(7) as u32;
            let index = rng.below(u64::from(count) + 2) as u32;
            let len = rng.below(90) as usize;
            let fill = rng.below(2) as u8;
            let chunk = vec![fill; len];
            match r.insert(now, sender, msg_id, index, count, &chunk) {
                FragmentOutcome::Complete(m) => {
                    assert!(m.len() <= lim.max_message);
                    seen[0] += 1;
                }
                FragmentOutcome::Pending => seen[1] += 1,
                FragmentOutcome::Duplicate => seen[2] += 1,
                FragmentOutcome::Rejected(_) => seen[3] += 1,
            }
            match rng.below(100) {
                0..=4 => {
                    r.expire(now);
                    if let Some(t) = r.next_expiry() {
                        assert!(t > now);
                    }
                }
                5 => r.forget(rng.below(4) as u8),
                _ => {}
            }
            if step % 7 == 0 {
                r.check_invariants();
            }
        }
        r.check_invariants();
        // Every outcome occurred, so the generator really exercised all paths.
        assert!(seen.iter().all(|&n| n > 0), "{seen:?}");
        r.expire(now + lim.timeout);
        assert_eq!(r.partial_count(), 0);
        assert_eq!(r.buffered_bytes(), 0);
    }

    #[test]
    fn random_valid_messages_reassemble_in_any_order() {
        let mut rng = XorShift(12345);
        let mut r = Reassembler::new(ReassemblyLimits {
            max_message: 2000,
            max_partial: 16,
            max_bytes: 100_000,
            timeout: ms(1000),
        });
        for id in 0..500u32 {
            let len = 1 + rng.below(1999) as usize;
            let chunk = 1 + rng.below(300) as usize;
            let msg = message(len, id as u8);
            let mut frags = fragments(&msg, chunk);
            // Fisher-Yates shuffle, then a few duplicates.
            for i in (1..frags.len()).rev() {
                frags.swap(i, rng.below(i as u64 + 1) as usize);
            }
            let mut result = None;
            let n = frags.len();
            for (k, (i, c, bytes)) in frags.iter().enumerate() {
                let outcome = r.insert(T0, 7u16, id, *i, *c, bytes);
                if k + 1 < n {
                    assert_eq!(outcome, FragmentOutcome::Pending);
                    assert_eq!(r.insert(T0, 7u16, id, *i, *c, bytes), FragmentOutcome::Duplicate);
                } else {
                    result = Some(outcome);
                }
            }
            assert_eq!(result, Some(FragmentOutcome::Complete(msg)));
            assert_eq!(r.buffered_bytes(), 0);
        }
    }
}
