//! Freshness after a restart (PROTOCOL.md §3.4): a node without replay state for a sender holds
//! that sender's frames and challenges it; the answer proves the sender is alive now and says
//! which packet numbers are recent enough to trust. Replays of old frames are then refused.

use alloc::collections::VecDeque;
use alloc::vec::Vec;
use core::time::Duration;

use rand_core::RngCore;

use super::{Node, To};
use crate::time::Instant;
use crate::wire::{Header, NodeId, Record, RecordIter, SUITE_PSK};

/// Least frames that may wait for one sender's proof of freshness; the bytes follow the
/// largest message (see [`Node::held_bounds`]).
const MIN_HELD_FRAMES: usize = 16;
/// All unverified senders together hold at most this many times one sender's bound.
const HELD_TOTAL_FACTOR: usize = 4;
/// Challenges sent before giving up on a silent sender.
const MAX_TRIES: u8 = 6;
/// First wait for an answer; doubles per try (100 ms to 3.1 s in all). A newcomer on a lossy
/// link is verified, and so discovered, only once a challenge and its echo both get through.
const FIRST_RETRY: Duration = Duration::from_millis(100);
/// Least time between two unicast Solicits of this node (to peers verified without a beacon).
const RESOLICIT_GAP: Duration = Duration::from_millis(50);
/// Least time between two challenges to one sender prompted by its frames.
const RECHALLENGE_GAP: Duration = Duration::from_millis(50);
/// Least time between two notes of this node's packet number (for "what did you send within
/// the window"); the floor it answers is conservative by at most this much.
const MARK_EVERY: Duration = Duration::from_millis(25);
/// Most notes kept.
const MAX_MARKS: usize = 256;
/// A closing node keeps answering challenges this long after the last one, and lives at least
/// this long, so receivers that never heard of it can still verify its last frames.
const ANSWER_LINGER: Duration = Duration::from_millis(150);

/// An outstanding challenge to one sender, with the frames waiting for its answer.
pub(crate) struct Verify {
    nonce: u64,
    tries: u8,
    next_try: Instant,
    /// When the challenge last went out (by timer or because another frame arrived).
    sent: Instant,
    held: Vec<(u64, Vec<u8>)>,
    held_bytes: usize,
}

impl Verify {
    /// Frames waiting for the answer.
    pub(crate) fn held_frames(&self) -> usize {
        self.held.len()
    }
}

/// The sending side: where this node's packet numbers stood recently.
pub(crate) struct Freshness {
    marks: VecDeque<(Instant, u64)>,
    first_pn: u64,
    started: Instant,
    last_echo: Option<Instant>,
}

impl Freshness {
    pub(crate) fn new(now: Instant, first_pn: u64) -> Self {
        Freshness { marks: VecDeque::new(), first_pn, started: now, last_echo: None }
    }

    /// Notes that every frame from `next_pn` on is sent at `now` or later. Called as frames are
    /// sealed, so the notes bracket each frame's sending time to within [`MARK_EVERY`].
    pub(crate) fn mark(&mut self, now: Instant, next_pn: u64, window: Duration) {
        let moved = self.marks.back().is_none_or(|&(t, pn)| pn != next_pn && now >= t + MARK_EVERY);
        if moved {
            self.marks.push_back((now, next_pn));
        }
        // Notes older than the window can no longer be the answer; the count bound is a backstop.
        while self.marks.len() > MAX_MARKS || self.marks.get(1).is_some_and(|&(t, _)| t + window < now) {
            self.marks.pop_front();
        }
    }

    /// A packet number such that every frame at or above it was sent within `window` before
    /// `now` (conservatively: some recent frames may fall below it).
    fn floor(&self, now: Instant, window: Duration, next_pn: u64) -> u64 {
        let horizon = now - window;
        if now.saturating_duration_since(self.started) < window {
            return self.first_pn; // everything this boot sent is recent
        }
        self.marks.iter().find(|&&(t, _)| t >= horizon).map_or(next_pn, |&(_, pn)| pn)
    }
}

impl Node {
    /// Starts verifying a sender this node has no replay state for.
    pub(super) fn challenge(&mut self, now: Instant, sender: NodeId) {
        let nonce = self.rng.next_u64();
        let Some(p) = self.peers.get_mut(&sender) else { return };
        p.verify =
            Some(Verify { nonce, tries: 1, next_try: now + FIRST_RETRY, sent: now, held: Vec::new(), held_bytes: 0 });
        self.enqueue(To::Peer(sender), &Record::Challenge(nonce));
    }

    /// If `body` answers our challenge, the sender is verified: frames it sent within the
    /// freshness window are released in order, older ones dropped. Returns whether it did.
    pub(super) fn verify(&mut self, now: Instant, header: &Header, body: &[u8]) -> bool {
        let Some(p) = self.peers.get_mut(&header.sender) else { return false };
        let Some(v) = p.verify.as_ref() else { return true };
        let answered = RecordIter::new(body).flatten().find_map(|r| match r {
            Record::Echo { nonce, floor } if nonce == v.nonce => Some(floor),
            _ => None,
        });
        let Some(floor) = answered else { return false };
        let mut v = p.verify.take().expect("checked above");
        p.floor = floor;
        // The challenge and its echo are this peer's first round trip: repair and retransmit
        // timers start from it rather than from fixed guesses. (Measured from the latest
        // challenge; an echo of an earlier one only makes it smaller, and timeouts have floors.)
        p.rtt.on_sample(now.saturating_duration_since(v.sent));
        v.held.sort_by_key(|(pn, _)| *pn);
        for (pn, bytes) in v.held {
            if pn < floor {
                self.stats.drop_unverified += 1;
                continue;
            }
            self.stats.rx_after_challenge += 1;
            self.stats.rx_accepted += 1;
            let h = Header { suite: SUITE_PSK, net_tag: header.net_tag, sender: header.sender, pn };
            for record in RecordIter::new(&bytes).flatten() {
                // Its challenges were answered while it waited (`answer_challenges`).
                if !matches!(record, Record::Challenge(_)) {
                    self.handle_record(now, &h, false, record);
                }
            }
        }
        self.solicit_if_unannounced(now, header.sender);
        true
    }

    /// A verified sender whose beacon we still lack (it was lost, or it beacons rarely): ask it
    /// directly, so a reliable publication can learn whether it subscribes. Repeated as its
    /// frames keep coming (the ask or the answer may be lost), at most once per
    /// [`RESOLICIT_GAP`] for the whole node.
    pub(super) fn solicit_if_unannounced(&mut self, now: Instant, sender: NodeId) {
        if self.security.is_identity() || self.last_solicit.is_some_and(|t| now < t + RESOLICIT_GAP) {
            return;
        }
        if let Some(p) = self.peers.get(&sender) {
            if p.status == super::PeerStatus::Unannounced && p.verify.is_none() {
                self.last_solicit = Some(now);
                self.enqueue(To::Peer(sender), &Record::Solicit);
            }
        }
    }

    /// Keeps a frame of an unverified sender until it answers (bounded; beyond, it is dropped).
    pub(super) fn hold(&mut self, now: Instant, sender: NodeId, pn: u64, body: &[u8]) {
        let (max_frames, max_bytes) = self.held_bounds();
        let total: usize = self.peers.values().filter_map(|p| p.verify.as_ref()).map(|v| v.held_bytes).sum();
        let Some(p) = self.peers.get_mut(&sender) else { return };
        let Some(v) = p.verify.as_mut() else { return };
        // The sender is talking, so the challenge or its echo was likely lost: ask again now
        // rather than at the next (doubling) retry, at most once per RECHALLENGE_GAP, so a
        // flood of frames is answered by a trickle of challenges.
        if now >= v.sent + RECHALLENGE_GAP {
            v.sent = now;
            let nonce = v.nonce;
            self.enqueue(To::Peer(sender), &Record::Challenge(nonce));
        }
        let Some(v) = self.peers.get_mut(&sender).and_then(|p| p.verify.as_mut()) else { return };
        if v.held.len() >= max_frames
            || v.held_bytes + body.len() > max_bytes
            || total + body.len() > max_bytes * HELD_TOTAL_FACTOR
        {
            self.stats.drop_unverified += 1;
            return;
        }
        v.held_bytes += body.len();
        v.held.push((pn, body.to_vec()));
    }

    /// What one unverified sender may have waiting: a whole largest message as fragments or
    /// chunks (a fresh process's first publication, PROTOCOL.md §3.4) and 2 KiB besides, so the
    /// freshness check never eats data (6 KiB on a board, 66 KiB on a host).
    fn held_bounds(&self) -> (usize, usize) {
        let bytes = self.config.max_message + 2048;
        let per_frame = self.config.max_datagram.saturating_sub(64).max(256);
        (bytes.div_ceil(per_frame).saturating_add(MIN_HELD_FRAMES), bytes)
    }

    /// Challenges in a held frame are answered at once: answering proves nothing about the
    /// challenger and costs one small frame.
    pub(super) fn answer_challenges(&mut self, now: Instant, from: NodeId, body: &[u8]) {
        let nonces: Vec<u64> = RecordIter::new(body)
            .flatten()
            .filter_map(|r| match r {
                Record::Challenge(n) => Some(n),
                _ => None,
            })
            .collect();
        for n in nonces {
            self.echo(now, from, n);
        }
    }

    pub(super) fn echo(&mut self, now: Instant, to: NodeId, nonce: u64) {
        let floor = self.freshness.floor(now, self.config.freshness_window, self.next_pn);
        self.freshness.last_echo = Some(now);
        self.enqueue(To::Peer(to), &Record::Echo { nonce, floor });
    }

    /// Repeats unanswered challenges; gives up on senders that stay silent.
    pub(super) fn retry_challenges(&mut self, now: Instant) {
        let mut silent = Vec::new();
        let mut again = Vec::new();
        for (id, p) in self.peers.iter_mut() {
            let Some(v) = p.verify.as_mut() else { continue };
            if v.next_try > now {
                continue;
            }
            if v.tries >= MAX_TRIES {
                silent.push(*id);
            } else {
                v.tries += 1;
                v.next_try = now + FIRST_RETRY * (1 << (v.tries - 1));
                v.sent = now;
                again.push((*id, v.nonce));
            }
        }
        for (id, nonce) in again {
            self.enqueue(To::Peer(id), &Record::Challenge(nonce));
        }
        for id in silent {
            // Forget it entirely: its frames were replays or it is gone; a live sender that
            // speaks again is challenged afresh.
            if let Some(p) = self.peers.remove(&id) {
                self.stats.drop_unverified += p.verify.map_or(0, |v| v.held.len() as u64);
            }
            self.out_mcast.unidentified_lost(id);
        }
    }

    /// Earliest challenge retry.
    pub(super) fn challenge_timeout(&self) -> Option<Instant> {
        self.peers.values().filter_map(|p| p.verify.as_ref().map(|v| v.next_try)).min()
    }

    /// Frames currently waiting for their senders' freshness proofs.
    pub fn held_frames(&self) -> usize {
        self.peers.values().filter_map(|p| p.verify.as_ref()).map(|v| v.held.len()).sum()
    }

    /// True once a closing node may stop: everything is sent and acknowledged, and it has not
    /// been asked to prove freshness very recently (receivers may still be verifying its frames).
    pub fn may_close(&self, now: Instant) -> bool {
        let quiet_since = self.freshness.last_echo.unwrap_or(self.freshness.started).max(self.freshness.started);
        self.is_idle() && now >= quiet_since + ANSWER_LINGER
    }
}
