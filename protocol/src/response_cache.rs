//! At-most-once execution of remote calls.
//!
//! A caller retransmits a request until it gets the response, so the callee may see the same
//! request several times. The callee must not execute it twice: it remembers, per
//! `(caller, call_id)`, that a call is in progress or what its response was. A duplicate of an
//! in-progress call is ignored (the response will go out when the call finishes); a duplicate of a
//! finished call gets the cached response again.
//!
//! Memory is bounded by [`CacheLimits`]. When a response cannot be kept (it alone exceeds
//! `max_bytes`, or its bytes were reclaimed for newer responses), the entry is still remembered
//! as finished but uncached: [`Lookup::DoneUncached`] lets the callee answer "duplicate, response
//! lost" instead of executing the call a second time. Only removing an entry altogether (lifetime
//! over, [`ResponseCache::forget`], or eviction when `max_entries` is reached) can let a late
//! duplicate run again; the lifetime should therefore exceed the callers' retry horizon.

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::vec::Vec;
use core::time::Duration;

use crate::time::Instant;

/// Limits of a [`ResponseCache`].
#[derive(Debug, Clone, Copy)]
pub struct CacheLimits {
    /// Most calls remembered at once, in progress or finished.
    pub max_entries: usize,
    /// Most response bytes cached at once (bookkeeping overhead not included).
    pub max_bytes: usize,
    /// An entry is forgotten this long after its last update (begun or finished).
    pub lifetime: Duration,
}

/// What the callee should do with an incoming request, as told by [`ResponseCache::begin`].
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup<'a> {
    /// First time this call is seen: execute it, then report the response with
    /// [`ResponseCache::finish`]. It is now recorded as in progress.
    New,
    /// The call is already executing: ignore this duplicate.
    InProgress,
    /// The call finished: send this cached (encoded) response again, do not execute.
    Done(&'a [u8]),
    /// The call finished but its response could not be kept (too large, or its bytes were
    /// reclaimed for newer responses): do not execute; answer "duplicate, response lost".
    DoneUncached,
}

/// State of one remembered call.
#[derive(Debug)]
enum State {
    /// Begun, not finished.
    InProgress,
    /// Finished with this response cached.
    Done(Vec<u8>),
    /// Finished, response not kept.
    DoneUncached,
}

/// One remembered call.
#[derive(Debug)]
struct Entry {
    /// What is known about the call.
    state: State,
    /// Last update (begin or finish); the entry expires at `updated + lifetime`.
    updated: Instant,
    /// Tie-breaker among entries updated at the same instant (update order).
    seq: u64,
}

/// Position of an entry in the age indexes: oldest first.
type AgeKey<K> = (Instant, u64, K, u64);

/// Remembers recent calls per `(caller, call_id)` so that each is executed at most once.
///
/// `K` identifies the caller (e.g. a node id). Call [`begin`](Self::begin) for every request,
/// [`finish`](Self::finish) when a call begun as [`Lookup::New`] produced its response, and
/// [`expire`](Self::expire) when the time given by [`next_expiry`](Self::next_expiry) has come.
///
/// When [`CacheLimits::max_entries`] is reached, a new call evicts the oldest finished entry
/// first, then the oldest in-progress one. When [`CacheLimits::max_bytes`] is reached, a new
/// response reclaims the bytes of the oldest cached responses, whose entries become
/// [`Lookup::DoneUncached`] (in-progress entries hold no bytes, so they are never touched).
#[derive(Debug)]
pub struct ResponseCache<K: Ord + Copy> {
    /// The configured bounds.
    limits: CacheLimits,
    /// Every remembered call.
    entries: BTreeMap<(K, u64), Entry>,
    /// In-progress entries by age.
    in_progress: BTreeSet<AgeKey<K>>,
    /// Finished entries (cached or not) by age.
    finished: BTreeSet<AgeKey<K>>,
    /// Finished entries holding response bytes, by age (a subset of `finished`).
    cached: BTreeSet<AgeKey<K>>,
    /// Sum of the cached response lengths.
    bytes: usize,
    /// Next update sequence number.
    next_seq: u64,
}

impl<K: Ord + Copy> ResponseCache<K> {
    /// Creates an empty cache bounded by `limits`.
    pub fn new(limits: CacheLimits) -> Self {
        ResponseCache {
            limits,
            entries: BTreeMap::new(),
            in_progress: BTreeSet::new(),
            finished: BTreeSet::new(),
            cached: BTreeSet::new(),
            bytes: 0,
            next_seq: 0,
        }
    }

    /// Looks up a request; when [`Lookup::New`], records it as in progress (so the next duplicate
    /// sees [`Lookup::InProgress`]).
    ///
    /// A lookup does not extend an entry's lifetime, so a caller retrying forever cannot pin it.
    /// With `max_entries == 0` nothing can be recorded and every request is `New`.
    pub fn begin(&mut self, now: Instant, caller: K, call_id: u64) -> Lookup<'_> {
        let key = (caller, call_id);
        if !self.entries.contains_key(&key) {
            self.insert_new(now, key);
            return Lookup::New;
        }
        match self.entries.get(&key).map(|e| &e.state) {
            Some(State::InProgress) => Lookup::InProgress,
            Some(State::Done(response)) => Lookup::Done(response),
            Some(State::DoneUncached) => Lookup::DoneUncached,
            None => Lookup::New,
        }
    }

    /// Stores the encoded response of a call begun earlier.
    ///
    /// Ignored if the entry is gone (evicted, expired or forgotten meanwhile) or already
    /// finished (the first response stays). A response larger than `max_bytes` is not kept: the
    /// entry becomes [`Lookup::DoneUncached`]. Finishing restarts the entry's lifetime.
    pub fn finish(&mut self, now: Instant, caller: K, call_id: u64, response: &[u8]) {
        let key = (caller, call_id);
        let Some(entry) = self.entries.get(&key) else { return };
        if !matches!(entry.state, State::InProgress) {
            return;
        }
        self.in_progress.remove(&(entry.updated, entry.seq, caller, call_id));

        let len = response.len();
        let state = if len > self.limits.max_bytes {
            State::DoneUncached
        } else {
            self.reclaim_bytes(len);
            State::Done(response.to_vec())
        };
        let seq = self.take_seq();
        let age = (now, seq, caller, call_id);
        self.finished.insert(age);
        if matches!(state, State::Done(_)) {
            self.cached.insert(age);
            self.bytes += len;
        }
        if let Some(entry) = self.entries.get_mut(&key) {
            *entry = Entry { state, updated: now, seq };
        }
    }

    /// Forgets entries whose lifetime is over (at or after `updated + lifetime`).
    pub fn expire(&mut self, now: Instant) {
        for set in [Set::InProgress, Set::Finished] {
            while let Some(&(updated, _, caller, call_id)) = self.set(set).first() {
                if now < updated + self.limits.lifetime {
                    break;
                }
                self.remove((caller, call_id));
            }
        }
    }

    /// Earliest time an entry will expire (for the node's timer).
    pub fn next_expiry(&self) -> Option<Instant> {
        let oldest = match (self.in_progress.first(), self.finished.first()) {
            (Some(a), Some(b)) => a.0.min(b.0),
            (Some(a), None) => a.0,
            (None, Some(b)) => b.0,
            (None, None) => return None,
        };
        Some(oldest + self.limits.lifetime)
    }

    /// Forgets every entry of `caller` (it restarted: its old call ids are dead).
    pub fn forget(&mut self, caller: K) {
        let keys: Vec<(K, u64)> = self.entries.range((caller, 0)..=(caller, u64::MAX)).map(|(k, _)| *k).collect();
        for key in keys {
            self.remove(key);
        }
    }

    /// Number of calls remembered (in progress or finished).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no call is remembered.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Response bytes currently cached.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Records a new in-progress entry, evicting one entry first if the cache is full.
    fn insert_new(&mut self, now: Instant, key: (K, u64)) {
        if self.limits.max_entries == 0 {
            return;
        }
        while self.entries.len() >= self.limits.max_entries {
            let victim = self.finished.first().or_else(|| self.in_progress.first()).map(|&(_, _, k, id)| (k, id));
            match victim {
                Some(victim) => {
                    self.remove(victim);
                }
                None => break,
            }
        }
        let seq = self.take_seq();
        self.in_progress.insert((now, seq, key.0, key.1));
        self.entries.insert(key, Entry { state: State::InProgress, updated: now, seq });
    }

    /// Drops the bytes of the oldest cached responses until `len` more bytes fit.
    fn reclaim_bytes(&mut self, len: usize) {
        while self.bytes.saturating_add(len) > self.limits.max_bytes {
            let Some(age) = self.cached.pop_first() else { break };
            if let Some(entry) = self.entries.get_mut(&(age.2, age.3)) {
                if let State::Done(response) = &entry.state {
                    self.bytes = self.bytes.saturating_sub(response.len());
                }
                entry.state = State::DoneUncached;
            }
        }
    }

    /// Removes an entry and its accounting.
    fn remove(&mut self, key: (K, u64)) {
        let Some(entry) = self.entries.remove(&key) else { return };
        let age = (entry.updated, entry.seq, key.0, key.1);
        match entry.state {
            State::InProgress => {
                self.in_progress.remove(&age);
            }
            State::Done(response) => {
                self.finished.remove(&age);
                self.cached.remove(&age);
                self.bytes = self.bytes.saturating_sub(response.len());
            }
            State::DoneUncached => {
                self.finished.remove(&age);
            }
        }
    }

    /// A fresh sequence number.
    fn take_seq(&mut self) -> u64 {
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        seq
    }

    /// One of the two age indexes that expiry walks.
    fn set(&self, set: Set) -> &BTreeSet<AgeKey<K>> {
        match set {
            Set::InProgress => &self.in_progress,
            Set::Finished => &self.finished,
        }
    }
}

/// Names an age index, so that [`ResponseCache::expire`] can walk both with one loop.
#[derive(Clone, Copy)]
enum Set {
    /// `in_progress`.
    InProgress,
    /// `finished`.
    Finished,
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;
    use std::vec;

    const T0: Instant = Instant::from_millis(1000);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn limits() -> CacheLimits {
        CacheLimits { max_entries: 4, max_bytes: 100, lifetime: ms(1000) }
    }

    impl<K: Ord + Copy> ResponseCache<K> {
        /// Recomputes the accounting from scratch and checks it against the limits.
        fn check_invariants(&self) {
            let mut bytes = 0;
            let (mut pending, mut finished, mut cached) = (0, 0, 0);
            for (&(caller, id), e) in &self.entries {
                let age = (e.updated, e.seq, caller, id);
                match &e.state {
                    State::InProgress => {
                        pending += 1;
                        assert!(self.in_progress.contains(&age));
                    }
                    State::Done(r) => {
                        finished += 1;
                        cached += 1;
                        bytes += r.len();
                        assert!(self.finished.contains(&age) && self.cached.contains(&age));
                    }
                    State::DoneUncached => {
                        finished += 1;
                        assert!(self.finished.contains(&age) && !self.cached.contains(&age));
                    }
                }
            }
            assert_eq!(self.in_progress.len(), pending);
            assert_eq!(self.finished.len(), finished);
            assert_eq!(self.cached.len(), cached);
            assert_eq!(self.bytes, bytes);
            assert!(self.bytes <= self.limits.max_bytes);
            assert!(self.entries.len() <= self.limits.max_entries);
        }
    }

    #[test]
    fn new_then_in_progress_then_done() {
        let mut c = ResponseCache::new(limits());
        assert!(c.is_empty());
        assert_eq!(c.begin(T0, 1u8, 7), Lookup::New);
        assert_eq!(c.len(), 1);
        assert_eq!(c.begin(T0, 1u8, 7), Lookup::InProgress);
        c.finish(T0, 1u8, 7, b"answer");
        assert_eq!(c.bytes(), 6);
        assert_eq!(c.begin(T0, 1u8, 7), Lookup::Done(b"answer"));
        assert_eq!(c.begin(T0, 1u8, 7), Lookup::Done(b"answer"));
        assert_eq!(c.len(), 1);
        c.check_invariants();
    }

    #[test]
    fn keys_are_per_caller_and_call_id() {
        let mut c = ResponseCache::new(limits());
        assert_eq!(c.begin(T0, 1u8, 7), Lookup::New);
        assert_eq!(c.begin(T0, 2u8, 7), Lookup::New);
        assert_eq!(c.begin(T0, 1u8, 8), Lookup::New);
        c.finish(T0, 2u8, 7, b"two");
        assert_eq!(c.begin(T0, 1u8, 7), Lookup::InProgress);
        assert_eq!(c.begin(T0, 2u8, 7), Lookup::Done(b"two"));
        assert_eq!(c.begin(T0, 1u8, 8), Lookup::InProgress);
        c.check_invariants();
    }

    #[test]
    fn empty_response_is_cached() {
        let mut c = ResponseCache::new(limits());
        c.begin(T0, 1u8, 1);
        c.finish(T0, 1u8, 1, b"");
        assert_eq!(c.begin(T0, 1u8, 1), Lookup::Done(b""));
        assert_eq!(c.bytes(), 0);
    }

    #[test]
    fn finish_without_begin_is_ignored() {
        let mut c = ResponseCache::new(limits());
        c.finish(T0, 1u8, 1, b"stray");
        assert!(c.is_empty());
        assert_eq!(c.bytes(), 0);
        assert_eq!(c.begin(T0, 1u8, 1), Lookup::New);
    }

    #[test]
    fn second_finish_keeps_first_response() {
        let mut c = ResponseCache::new(limits());
        c.begin(T0, 1u8, 1);
        c.finish(T0, 1u8, 1, b"first");
        c.finish(T0, 1u8, 1, b"second!");
        assert_eq!(c.begin(T0, 1u8, 1), Lookup::Done(b"first"));
        assert_eq!(c.bytes(), 5);
        c.check_invariants();
    }

    #[test]
    fn oversized_response_is_done_uncached() {
        let mut c = ResponseCache::new(limits());
        c.begin(T0, 1u8, 1);
        c.finish(T0, 1u8, 1, b"kept");
        c.begin(T0, 1u8, 2);
        c.finish(T0, 1u8, 2, &[0; 101]);
        assert_eq!(c.begin(T0, 1u8, 2), Lookup::DoneUncached);
        assert_eq!(c.bytes(), 4);
        // The oversized response displaced nothing.
        assert_eq!(c.begin(T0, 1u8, 1), Lookup::Done(b"kept"));
        // Exactly max_bytes fits.
        c.begin(T0, 1u8, 3);
        c.finish(T0, 1u8, 3, &[0; 100]);
        assert_eq!(c.begin(T0, 1u8, 3), Lookup::Done(&[0; 100]));
        c.check_invariants();
    }

    #[test]
    fn byte_pressure_uncaches_oldest_responses() {
        let mut c = ResponseCache::new(limits()); // 100 bytes
        for id in 0..3u64 {
            c.begin(T0 + ms(id), 1u8, id);
        }
        // Finish out of begin order: age among finished entries is finish time.
        c.finish(T0 + ms(10), 1u8, 2, &[2; 40]);
        c.finish(T0 + ms(11), 1u8, 0, &[0; 40]);
        assert_eq!(c.bytes(), 80);
        c.finish(T0 + ms(12), 1u8, 1, &[1; 30]);
        // 80 + 30 > 100: the oldest finished response (id 2) loses its bytes, not its entry.
        assert_eq!(c.bytes(), 70);
        assert_eq!(c.len(), 3);
        assert_eq!(c.begin(T0, 1u8, 2), Lookup::DoneUncached);
        assert_eq!(c.begin(T0, 1u8, 0), Lookup::Done(&[0; 40]));
        assert_eq!(c.begin(T0, 1u8, 1), Lookup::Done(&[1; 30]));
        // A response of 100 bytes reclaims everything else.
        c.begin(T0 + ms(13), 2u8, 0);
        c.finish(T0 + ms(14), 2u8, 0, &[9; 100]);
        assert_eq!(c.bytes(), 100);
        assert_eq!(c.begin(T0, 1u8, 0), Lookup::DoneUncached);
        assert_eq!(c.begin(T0, 1u8, 1), Lookup::DoneUncached);
        c.check_invariants();
    }

    #[test]
    fn entry_limit_evicts_oldest_finished_first() {
        let mut c = ResponseCache::new(limits()); // 4 entries
        c.begin(T0, 1u8, 0); // oldest overall, stays in progress
        c.begin(T0 + ms(1), 1u8, 1);
        c.begin(T0 + ms(2), 1u8, 2);
        c.begin(T0 + ms(3), 1u8, 3);
        c.finish(T0 + ms(4), 1u8, 2, b"22");
        c.finish(T0 + ms(5), 1u8, 1, b"1");
        assert_eq!(c.bytes(), 3);
        // Full: the oldest finished entry (id 2, finished at +4) goes, not the older in-progress id 0.
        assert_eq!(c.begin(T0 + ms(6), 2u8, 0), Lookup::New);
        assert_eq!(c.len(), 4);
        assert_eq!(c.bytes(), 1);
        assert_eq!(c.begin(T0 + ms(6), 1u8, 0), Lookup::InProgress);
        assert_eq!(c.begin(T0 + ms(6), 1u8, 1), Lookup::Done(b"1"));
        // Next, id 1 (the only finished one) goes.
        assert_eq!(c.begin(T0 + ms(7), 2u8, 1), Lookup::New);
        assert_eq!(c.bytes(), 0);
        assert_eq!(c.begin(T0 + ms(7), 1u8, 0), Lookup::InProgress);
        assert_eq!(c.begin(T0 + ms(7), 1u8, 3), Lookup::InProgress);
        c.check_invariants();
        // No finished entry left: the oldest in-progress one (id 0) goes, and finishing it later is ignored.
        assert_eq!(c.begin(T0 + ms(8), 2u8, 2), Lookup::New);
        assert_eq!(c.len(), 4);
        c.finish(T0 + ms(9), 1u8, 0, b"late");
        assert_eq!(c.bytes(), 0);
        assert_eq!(c.begin(T0 + ms(9), 1u8, 3), Lookup::InProgress);
        c.check_invariants();
    }

    #[test]
    fn evicted_uncached_entry_counts_as_finished() {
        let mut c = ResponseCache::new(CacheLimits { max_entries: 2, ..limits() });
        c.begin(T0, 1u8, 0);
        c.begin(T0 + ms(1), 1u8, 1);
        c.finish(T0 + ms(2), 1u8, 1, &[0; 500]); // uncached
                                                 // The uncached finished entry is evicted before the older in-progress one.
        assert_eq!(c.begin(T0 + ms(3), 1u8, 2), Lookup::New);
        assert_eq!(c.begin(T0 + ms(3), 1u8, 0), Lookup::InProgress);
        assert_eq!(c.len(), 2);
        c.check_invariants();
    }

    #[test]
    fn zero_entries_records_nothing() {
        let mut c = ResponseCache::new(CacheLimits { max_entries: 0, ..limits() });
        assert_eq!(c.begin(T0, 1u8, 1), Lookup::New);
        assert_eq!(c.begin(T0, 1u8, 1), Lookup::New);
        c.finish(T0, 1u8, 1, b"x");
        assert!(c.is_empty());
        assert_eq!(c.bytes(), 0);
        assert_eq!(c.next_expiry(), None);
    }

    #[test]
    fn lifetime_counts_from_last_update() {
        let mut c = ResponseCache::new(limits()); // 1 s
        assert_eq!(c.next_expiry(), None);
        c.begin(T0, 1u8, 1);
        c.begin(T0 + ms(100), 1u8, 2);
        assert_eq!(c.next_expiry(), Some(T0 + ms(1000)));
        // Finishing call 1 restarts its lifetime; a duplicate lookup does not.
        c.finish(T0 + ms(500), 1u8, 1, b"resp");
        assert_eq!(c.begin(T0 + ms(900), 1u8, 1), Lookup::Done(b"resp"));
        assert_eq!(c.next_expiry(), Some(T0 + ms(1100)));
        c.expire(T0 + ms(1099));
        assert_eq!(c.len(), 2);
        c.expire(T0 + ms(1100));
        assert_eq!(c.len(), 1);
        assert_eq!(c.next_expiry(), Some(T0 + ms(1500)));
        c.expire(T0 + ms(1500));
        assert!(c.is_empty());
        assert_eq!(c.bytes(), 0);
        assert_eq!(c.next_expiry(), None);
        // After expiry the call is new again.
        assert_eq!(c.begin(T0 + ms(1600), 1u8, 1), Lookup::New);
    }

    #[test]
    fn expired_in_progress_ignores_late_finish() {
        let mut c = ResponseCache::new(limits());
        c.begin(T0, 1u8, 1);
        c.expire(T0 + ms(1000));
        assert!(c.is_empty());
        c.finish(T0 + ms(1001), 1u8, 1, b"late");
        assert!(c.is_empty());
        assert_eq!(c.bytes(), 0);
    }

    #[test]
    fn forget_drops_only_that_caller() {
        let mut c = ResponseCache::new(limits());
        c.begin(T0, 1u8, 1);
        c.finish(T0, 1u8, 1, b"abc");
        c.begin(T0, 1u8, u64::MAX);
        c.begin(T0, 2u8, 1);
        c.finish(T0, 2u8, 1, b"de");
        c.forget(1);
        assert_eq!(c.len(), 1);
        assert_eq!(c.bytes(), 2);
        assert_eq!(c.begin(T0, 1u8, 1), Lookup::New);
        assert_eq!(c.begin(T0, 2u8, 1), Lookup::Done(b"de"));
        c.forget(2);
        c.forget(1);
        assert!(c.is_empty());
        assert_eq!(c.bytes(), 0);
        assert_eq!(c.next_expiry(), None);
        c.check_invariants();
    }

    #[test]
    fn random_operations_respect_limits() {
        let lim = CacheLimits { max_entries: 6, max_bytes: 120, lifetime: ms(20) };
        let mut c = ResponseCache::new(lim);
        let mut rng = crate::test_rng::XorShift(0xDEAD_BEEF_1234_5678);
        let mut now = T0;
        let mut outcomes = [0usize; 4];
        for _ in 0..100_000 {
            now += Duration::from_micros(rng.below(300));
            let caller = rng.below(3) as u8;
            let id = rng.below(5);
            match rng.below(10) {
                0..=4 => {
                    let i = match c.begin(now, caller, id) {
                        Lookup::New => 0,
                        Lookup::InProgress => 1,
                        Lookup::Done(r) => {
                            assert!(r.len() <= lim.max_bytes);
                            2
                        }
                        Lookup::DoneUncached => 3,
                    };
                    outcomes[i] += 1;
                }
                5..=7 => c.finish(now, caller, id, &vec![id as u8; rng.below(150) as usize]),
                8 => {
                    c.expire(now);
                    if let Some(t) = c.next_expiry() {
                        assert!(t > now);
                    }
                }
                _ => c.forget(caller),
            }
            c.check_invariants();
        }
        assert!(outcomes.iter().all(|&n| n > 0), "{outcomes:?}");
        c.expire(now + lim.lifetime);
        assert!(c.is_empty());
        assert_eq!(c.bytes(), 0);
    }
}
