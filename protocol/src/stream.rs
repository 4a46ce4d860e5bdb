//! Reliable streams (PROTOCOL.md §6): sequence numbers, bounded retention, cumulative acks with
//! selective NACKs, NACK suppression, heartbeats for tail losses, message expiry and gaps.
//!
//! A sender has one multicast stream (reliable publications) and one unicast stream per peer
//! (RPC). Each is an [`OutStream`]; each receiver keeps an [`InStream`] per sender stream. Both
//! are plain state machines: the node feeds them records and time and sends what they return.

use alloc::boxed::Box;
use alloc::collections::{BTreeMap, BTreeSet, VecDeque};
use alloc::vec::Vec;
use core::time::Duration;

use crate::time::Instant;
use crate::wire::{Ack, DataHeader, Heartbeat, NodeId, Record, SeqRange, MAX_ACK_RANGES};
#[cfg(feature = "parity")]
use crate::wire::{BlockRepairHeader, RepairHeader, REPAIR_BLOCK};

/// Tunables and bounds of reliable streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamLimits {
    /// Most messages a sender retains for repair per stream.
    pub max_retained_messages: usize,
    /// Most bytes a sender retains for repair per stream.
    pub max_retained_bytes: usize,
    /// Longest a sender retains a message.
    pub max_retained_age: Duration,
    /// Most out-of-order chunks a receiver buffers per stream.
    pub max_pending_chunks: usize,
    /// Most bytes a receiver buffers per stream.
    pub max_pending_bytes: usize,
    /// How long a receiver waits before acknowledging, to ack several chunks at once.
    pub ack_delay: Duration,
    /// Upper bound of the random delay before a receiver NACKs (suppression window).
    pub nack_delay: Duration,
    /// How long a receiver waits for a repair before it NACKs again.
    pub repair_wait: Duration,
    /// First heartbeat after new data; doubles while data stays unacknowledged.
    pub heartbeat_min: Duration,
    /// Longest heartbeat interval.
    pub heartbeat_max: Duration,
    /// Bytes of delivered one-chunk messages a receiver keeps per stream until their block of
    /// 16 sequence numbers is behind it, so a block repair (PROTOCOL.md §6.9) can rebuild a
    /// hole from them. 0 (boards): no block repair for this node, and its beacons say so.
    pub parity_keep_bytes: usize,
}

impl Default for StreamLimits {
    fn default() -> Self {
        StreamLimits {
            max_retained_messages: 1024,
            max_retained_bytes: 1 << 20,
            max_retained_age: Duration::from_secs(30),
            max_pending_chunks: 512,
            max_pending_bytes: 512 * 1024,
            ack_delay: Duration::from_millis(5),
            nack_delay: Duration::from_millis(10),
            repair_wait: Duration::from_millis(60),
            heartbeat_min: Duration::from_millis(40),
            heartbeat_max: Duration::from_secs(2),
            parity_keep_bytes: 16 * MAX_BLOCK_SYMBOL,
        }
    }
}

/// Most chunks one Ack record gets repaired (PROTOCOL.md §6.3): bounds what one small NACK can
/// make a sender multicast (36 KiB of 1200-byte datagrams).
pub const MAX_REPAIRS_PER_ACK: usize = 32;

/// Repair rounds of one message that send parity symbols; later rounds resend the chunks asked
/// for (a receiver that cannot use parity, an older one, still gets the message).
pub const MAX_PARITY_ROUNDS: u8 = 4;

/// What a receiver can rebuild from parity, as its beacons say (PROTOCOL.md §4): repair symbols
/// of messages of several chunks, and of blocks of one-chunk messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ParityUse {
    /// Repair records (PROTOCOL.md §6.8).
    pub messages: bool,
    /// BlockRepair records (PROTOCOL.md §6.9).
    pub blocks: bool,
}

impl ParityUse {
    /// Neither: every hole is repaired with the chunk itself.
    pub const NONE: ParityUse = ParityUse { messages: false, blocks: false };
    /// Both kinds.
    pub const ALL: ParityUse = ParityUse { messages: true, blocks: true };
}

/// Longest one-chunk message a block repair covers: a BlockRepair record of 16 members then fits
/// a datagram (PROTOCOL.md §6.9). Longer ones are repaired with the chunk itself.
pub const MAX_BLOCK_SYMBOL: usize = crate::wire::MAX_DATAGRAM - crate::wire::FRAME_OVERHEAD - 68;

/// How a retained message ended for the sender's bookkeeping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    /// The id given to [`OutStream::send`].
    pub id: u64,
    /// Receivers that were waited for and did not acknowledge (empty: success).
    pub missing: Vec<NodeId>,
    /// Why it ended without every acknowledgement, if it did.
    pub failure: Option<Failure>,
}

/// Why a message stopped being retained before everyone acknowledged it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Its time to live passed.
    Expired,
    /// The retention bounds (count, bytes, age) forced it out.
    Evicted,
    /// A receiver waited for went down.
    ReceiverGone,
    /// The stream was reset (the peer restarted).
    Reset,
    /// No subscriber was known when it was published: nobody was waited for, so nothing is
    /// known to have arrived (it stays retained for subscribers that turn up).
    NoSubscribers,
    /// Every known subscriber acknowledged, but the node also heard from peers it could not
    /// identify in time (listed as missing): any of them may be a subscriber without it.
    Unconfirmed,
}

/// The message is larger than the stream may retain at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooLarge;

struct Chunk {
    seq: u64,
    index: u32,
    count: u32,
    bytes: Vec<u8>,
    sent_at: Instant,
    sends: u32,
}

struct OutMessage {
    id: u64,
    first: u64,
    /// One past its last sequence number.
    end: u64,
    created: Instant,
    expires: Option<Instant>,
    waiting: Vec<NodeId>,
    gone: Vec<NodeId>,
    /// Its completion was already reported (it stays retained for other receivers).
    reported: bool,
    /// Some receiver was waited for at some point (one that acknowledged and then left is no
    /// longer in `waiting`, but the message did reach someone).
    had_receivers: bool,
    /// A publication's topic and verdict hold, until its verdict (boxed: RPC messages and
    /// reported ones carry none, and a board retains many).
    tag: Option<Box<Tag>>,
}

/// What an unreported publication keeps for its verdict.
struct Tag {
    /// A receiver learnt meanwhile joins its waiting set if its filters match this
    /// ([`OutStream::add_receiver`]).
    topic: Box<str>,
    /// No verdict before this (the sender is still learning who is there).
    verdict_at: Option<Instant>,
    /// Peers that were heard while it waited but never identified, then forgotten: the
    /// verdict cannot be success ([`OutStream::unidentified_lost`]).
    lost: Vec<NodeId>,
}

/// A multicast stream's parity repair state.
#[cfg(feature = "parity")]
#[derive(Default)]
struct ParityState {
    /// Per message (its first sequence number): the most holes any one NACK since the last
    /// `poll` asked for in it. Receivers count their holes minus the repair symbols they hold,
    /// so this is what the neediest of them still lacks.
    need: BTreeMap<u64, u32>,
    /// The sequence numbers those NACKs named: resent as chunks once a message's parity rounds
    /// are used up.
    asked: BTreeSet<u64>,
    /// Per message: its repair rounds so far.
    rounds: BTreeMap<u64, ParityRound>,
    /// Per block of one-chunk messages (its first sequence number): as `need` for messages.
    block_need: BTreeMap<u64, u32>,
    /// Per block: its rounds, and its members (fixed at the first round).
    blocks: BTreeMap<u64, (ParityRound, u16)>,
}

#[cfg(feature = "parity")]
#[derive(Clone, Copy)]
struct ParityRound {
    /// Repair symbols sent for the message so far: the next one's number.
    sent: u32,
    /// When the current round began, and the symbols it sent.
    at: Instant,
    burst: u32,
    /// Rounds so far.
    count: u8,
}

#[cfg(feature = "parity")]
impl ParityRound {
    fn new(now: Instant) -> Self {
        ParityRound { sent: 0, at: now, burst: 0, count: 0 }
    }

    /// The symbols to send for `need` asked now, as `(first symbol number, count)`, at most
    /// `cap`; `None` once the rounds are used up. NACKs that arrive within a round trip of a
    /// round (four hold-offs, as the hold-off is a quarter of the slowest round trip) may have
    /// been sent before its symbols arrived: they add only what they ask beyond what the round
    /// sent, so several receivers cost what the neediest lacks, not the sum.
    fn burst(&mut self, now: Instant, need: u32, holdoff: Duration, cap: u32) -> Option<(u32, u32)> {
        let extra = if self.count > 0 && now < self.at + holdoff * 4 {
            need.saturating_sub(self.burst)
        } else {
            if self.count >= MAX_PARITY_ROUNDS {
                return None;
            }
            self.count += 1;
            self.at = now;
            self.burst = 0;
            need
        }
        .min(cap)
        .min(MAX_REPAIRS_PER_ACK as u32);
        let start = self.sent;
        self.sent += extra;
        self.burst += extra;
        Some((start, extra))
    }
}

/// The multicast stream's verdict state and parity rounds.
#[derive(Default)]
struct Verdicts {
    /// The earliest held verdict not yet reached.
    due: Option<Instant>,
    /// Peers heard but not identified ([`OutStream::hold_verdicts`]).
    unidentified: Vec<NodeId>,
    /// How long after its creation a message's verdict may wait for them.
    hold: Duration,
    /// Parity repair (PROTOCOL.md §6.8).
    #[cfg(feature = "parity")]
    parity: ParityState,
}

/// The sending side of one stream.
pub struct OutStream {
    kind: u8,
    epoch: u32,
    next_seq: u64,
    chunks: VecDeque<Chunk>,
    bytes: usize,
    messages: VecDeque<OutMessage>,
    acks: BTreeMap<NodeId, u64>,
    repairs: BTreeSet<u64>,
    repaired_at: BTreeMap<u64, Instant>,
    heartbeat_at: Option<Instant>,
    heartbeat_interval: Duration,
    /// Heartbeats since the last sign of a receiver that still lacks something.
    heartbeats_unanswered: u8,
    /// First heartbeat interval after new data or acknowledged progress, in µs (the node sets
    /// it from the receivers' round trips; 0: `heartbeat_min` of the limits).
    heartbeat_base_us: u32,
    /// Set when acks or waiting sets changed, or a message needs nobody: only then can a
    /// retained message have completed, so `collect` need not look at every one each time.
    completions_due: bool,
    /// Retained messages with a time to live: without any, no expiry needs finding.
    expiring: usize,
    /// Verdict holds and parity rounds: the multicast stream's (boxed: unicast streams never
    /// have any).
    verdicts: Option<Box<Verdicts>>,
}

impl OutStream {
    /// A new stream of `kind` ([`crate::wire::stream`]) for this boot's `epoch`.
    pub fn new(kind: u8, epoch: u32) -> Self {
        OutStream {
            kind,
            epoch,
            next_seq: 0,
            chunks: VecDeque::new(),
            bytes: 0,
            messages: VecDeque::new(),
            acks: BTreeMap::new(),
            repairs: BTreeSet::new(),
            repaired_at: BTreeMap::new(),
            heartbeat_at: None,
            heartbeat_interval: Duration::ZERO,
            heartbeats_unanswered: 0,
            heartbeat_base_us: 0,
            completions_due: false,
            expiring: 0,
            verdicts: None,
        }
    }

    /// Sets the first heartbeat interval: about one retransmission timeout of the slowest
    /// receiver, so a lost tail is noticed within a round trip or two instead of fixed steps.
    pub fn set_heartbeat_base(&mut self, base: Duration) {
        self.heartbeat_base_us = u32::try_from(base.as_micros()).unwrap_or(u32::MAX).max(500);
    }

    fn heartbeat_first(&self, limits: &StreamLimits) -> Duration {
        self.heartbeat_base().unwrap_or(limits.heartbeat_min)
    }

    fn heartbeat_base(&self) -> Option<Duration> {
        (self.heartbeat_base_us > 0).then(|| Duration::from_micros(u64::from(self.heartbeat_base_us)))
    }

    /// Lowest sequence number still retained (everything below is gone for good).
    pub fn low(&self) -> u64 {
        self.chunks.front().map_or(self.next_seq, |c| c.seq)
    }

    /// Next sequence number to be assigned.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Bytes retained for repair.
    pub fn retained_bytes(&self) -> usize {
        self.bytes
    }

    /// Messages retained for repair.
    pub fn retained_messages(&self) -> usize {
        self.messages.len()
    }

    /// Queues `message` as chunks of at most `chunk_size` bytes and returns the Data records to
    /// send now. Retention makes room by evicting the oldest messages (reported in `evicted`).
    #[allow(clippy::too_many_arguments)]
    pub fn send(
        &mut self,
        now: Instant,
        id: u64,
        message: &[u8],
        chunk_size: usize,
        ttl: Option<Duration>,
        waiting: Vec<NodeId>,
        limits: &StreamLimits,
        evicted: &mut Vec<Completion>,
    ) -> Result<Vec<Vec<u8>>, TooLarge> {
        if message.len() > limits.max_retained_bytes || limits.max_retained_messages == 0 {
            return Err(TooLarge);
        }
        while self.messages.len() >= limits.max_retained_messages
            || self.bytes + message.len() > limits.max_retained_bytes
        {
            match self.pop_message(Some(Failure::Evicted)) {
                Some(c) => evicted.extend(c),
                None => break,
            }
        }
        let chunk_size = chunk_size.max(1);
        let count = message.len().div_ceil(chunk_size).max(1) as u32;
        let first = self.next_seq;
        let mut records = Vec::with_capacity(count as usize);
        for index in 0..count {
            let start = index as usize * chunk_size;
            let bytes = message[start.min(message.len())..(start + chunk_size).min(message.len())].to_vec();
            let seq = self.next_seq;
            self.next_seq += 1;
            self.bytes += bytes.len();
            self.chunks.push_back(Chunk { seq, index, count, bytes, sent_at: now, sends: 1 });
        }
        let expires = ttl.map(|t| now + t);
        let waiting_empty = waiting.is_empty();
        self.completions_due |= waiting_empty;
        self.expiring += usize::from(expires.is_some());
        self.messages.push_back(OutMessage {
            id,
            first,
            end: self.next_seq,
            created: now,
            expires,
            waiting,
            gone: Vec::new(),
            reported: false,
            had_receivers: !waiting_empty,
            tag: None,
        });
        for seq in first..self.next_seq {
            records.push(self.encode(now, seq, expires));
        }
        self.arm_heartbeat(now, self.heartbeat_first(limits));
        Ok(records)
    }

    /// Gives the message just sent its topic, for receivers learnt later, and holds its
    /// verdict until `verdict_at` (a node that just started may not know every receiver yet).
    pub fn tag_last(&mut self, topic: &str, verdict_at: Option<Instant>) {
        if let Some(m) = self.messages.back_mut() {
            m.tag = Some(Box::new(Tag { topic: topic.into(), verdict_at, lost: Vec::new() }));
            if let Some(at) = verdict_at {
                let v = self.verdicts.get_or_insert_with(Default::default);
                v.due = Some(v.due.map_or(at, |d| d.min(at)));
            }
        }
    }

    /// While `hold` is set, no message younger than `limit` gets a verdict: the node knows of
    /// peers it has not identified yet (unverified, or without a beacon), any of which may be a
    /// subscriber it would otherwise not wait for.
    pub fn hold_verdicts(&mut self, unidentified: &[NodeId], limit: Duration) {
        if self.verdicts.is_none() && unidentified.is_empty() {
            return;
        }
        let v = self.verdicts.get_or_insert_with(Default::default);
        if v.unidentified != unidentified {
            self.completions_due = true;
            v.unidentified = unidentified.to_vec();
        }
        v.hold = limit;
    }

    /// When the verdict of `m` may come, if later than `now`.
    fn held_until(&self, m: &OutMessage, now: Instant) -> Option<Instant> {
        let tag = m.tag.as_ref()?;
        let hold = self.verdicts.as_ref().filter(|v| !v.unidentified.is_empty()).map(|v| m.created + v.hold);
        tag.verdict_at.into_iter().chain(hold).max().filter(|&t| now < t)
    }

    fn held(&self, m: &OutMessage, now: Instant) -> bool {
        self.held_until(m, now).is_some()
    }

    /// A peer this node heard but could not identify is forgotten (its freshness check gave
    /// up): publications still waiting for a verdict can no longer be confirmed.
    pub fn unidentified_lost(&mut self, who: NodeId) {
        for m in self.messages.iter_mut().filter(|m| !m.reported) {
            if let Some(tag) = m.tag.as_mut() {
                if !tag.lost.contains(&who) && tag.lost.len() < 16 {
                    tag.lost.push(who);
                    self.completions_due = true;
                }
            }
        }
    }

    /// Topics of the messages whose completion is not reported yet (one per message).
    pub fn unreported_topics(&self) -> impl Iterator<Item = &str> {
        self.messages.iter().filter(|m| !m.reported).filter_map(|m| m.tag.as_ref().map(|t| &*t.topic))
    }

    /// A receiver became known (it came up or announced filters): every unreported message whose
    /// topic `matches` waits for it too. What it acknowledged already counts.
    pub fn add_receiver(&mut self, now: Instant, who: NodeId, matches: impl Fn(&str) -> bool) {
        let mut added = false;
        for m in self.messages.iter_mut() {
            if !m.reported && !m.waiting.contains(&who) && m.tag.as_ref().is_some_and(|t| matches(&t.topic)) {
                m.waiting.push(who);
                m.had_receivers = true;
                m.gone.retain(|g| *g != who);
                added = true;
            }
        }
        if added {
            self.completions_due = true;
            // Its acknowledgement (which may have come and gone before it was known) is
            // fetched with the next heartbeat: soon, whatever the back-off was.
            self.heartbeat_soon(now);
        }
    }

    fn chunk_index(&self, seq: u64) -> Option<usize> {
        let low = self.chunks.front()?.seq;
        let i = usize::try_from(seq.checked_sub(low)?).ok()?;
        (i < self.chunks.len()).then_some(i)
    }

    /// A message a block repair may cover (PROTOCOL.md §6.9): one chunk, no time to live (a
    /// rebuilt chunk would not know its lifetime), at most [`MAX_BLOCK_SYMBOL`] bytes.
    fn block_member(&self, m: &OutMessage) -> bool {
        m.end - m.first == 1
            && m.expires.is_none()
            && self.chunk_index(m.first).is_some_and(|i| self.chunks[i].bytes.len() <= MAX_BLOCK_SYMBOL)
    }

    /// `seq` is a member of its block's repair, or may be one: the block's members are fixed at
    /// its first round, and what was sent later is repaired with its chunk.
    #[cfg(feature = "parity")]
    fn may_join_block(&self, seq: u64) -> bool {
        let block = seq - seq % REPAIR_BLOCK;
        let fixed = self.verdicts.as_ref().and_then(|v| v.parity.blocks.get(&block));
        fixed.is_none_or(|(_, members)| members & (1 << (seq - block)) != 0)
    }

    #[cfg(not(feature = "parity"))]
    fn may_join_block(&self, _seq: u64) -> bool {
        false
    }

    fn message_of(&self, seq: u64) -> Option<&OutMessage> {
        // Retained messages are in sequence order.
        let i = self.messages.partition_point(|m| m.end <= seq);
        self.messages.get(i).filter(|m| m.first <= seq)
    }

    fn encode(&self, now: Instant, seq: u64, expires: Option<Instant>) -> Vec<u8> {
        let c = &self.chunks[self.chunk_index(seq).expect("retained")];
        let ttl_ms = match expires {
            Some(e) => u32::try_from(e.saturating_duration_since(now).as_millis()).unwrap_or(u32::MAX).max(1),
            None => 0,
        };
        let header = DataHeader {
            stream: self.kind,
            epoch: self.epoch,
            seq,
            low: self.low(),
            index: c.index,
            count: c.count,
            ttl_ms,
        };
        let mut out = Vec::with_capacity(c.bytes.len() + 40);
        Record::Data { header, chunk: &c.bytes }.emit(&mut out);
        out
    }

    /// The next heartbeat no later than one short interval from now, and the back-off undone.
    fn heartbeat_soon(&mut self, now: Instant) {
        if let Some(at) = self.heartbeat_at {
            let base = self.heartbeat_base().unwrap_or(self.heartbeat_interval);
            self.heartbeat_interval = base;
            self.heartbeat_at = Some(at.min(now + base));
        }
        self.heartbeats_unanswered = 0;
    }

    fn arm_heartbeat(&mut self, now: Instant, first: Duration) {
        if self.heartbeat_at.is_none() {
            self.heartbeat_interval = first;
            self.heartbeat_at = Some(now + first);
            self.heartbeats_unanswered = 0;
        }
    }

    /// Drops the oldest message; its completion, unless already reported.
    fn pop_message(&mut self, failure: Option<Failure>) -> Option<Option<Completion>> {
        let m = self.messages.pop_front()?;
        self.expiring -= usize::from(m.expires.is_some());
        #[cfg(feature = "parity")]
        if let Some(v) = self.verdicts.as_mut() {
            v.parity.rounds.remove(&m.first);
            v.parity.need.remove(&m.first);
            // A block is done with once its last sequence number leaves.
            v.parity.blocks.retain(|&b, _| b + REPAIR_BLOCK > m.end);
            v.parity.block_need.retain(|&b, _| b + REPAIR_BLOCK > m.end);
        }
        while self.chunks.front().is_some_and(|c| c.seq < m.end) {
            let c = self.chunks.pop_front().expect("front exists");
            self.bytes -= c.bytes.len();
            self.repairs.remove(&c.seq);
            self.repaired_at.remove(&c.seq);
        }
        let mut missing: Vec<NodeId> =
            m.waiting.iter().copied().filter(|r| self.acks.get(r).is_none_or(|&a| a < m.end)).collect();
        let nobody = !m.had_receivers;
        missing.extend(m.gone);
        let failure = if nobody {
            Some(Failure::NoSubscribers)
        } else if missing.is_empty() {
            None
        } else {
            failure
        };
        Some((!m.reported).then_some(Completion { id: m.id, missing, failure }))
    }

    /// Handles an acknowledgement from `from`. Returns false when it refers to sequence
    /// numbers never sent (the caller counts it as malformed). `rtt_sample` receives a round-trip
    /// sample when the ack newly covers a chunk sent only once (Karn's rule). `parity` says what
    /// the receiver rebuilds from repair symbols: its holes in messages of several chunks, or in
    /// blocks of one-chunk messages, of a multicast stream are then repaired with parity,
    /// otherwise with the chunks.
    pub fn on_ack(
        &mut self,
        now: Instant,
        from: NodeId,
        ack: &Ack,
        parity: ParityUse,
        rtt_sample: &mut Option<Duration>,
    ) -> bool {
        if ack.next > self.next_seq || ack.missing.iter().any(|&(s, l)| s.saturating_add(u64::from(l)) > self.next_seq)
        {
            return false;
        }
        let prev = self.acks.get(&from).copied().unwrap_or(0);
        if ack.next > prev {
            // A cumulative ack comes no sooner than the last send of what it newly covers
            // arrived: measure from that latest send (an earlier one may have waited behind a
            // hole). Repairs go only when asked for, so the latest send of a repaired chunk is
            // the one that arrived (Karn's ambiguity, a spurious resend, only makes the sample
            // smaller, and the timeout has a floor).
            let low = self.low();
            let newly = prev.max(low)..ack.next;
            if !newly.is_empty() {
                let (from_i, to_i) = ((newly.start - low) as usize, (newly.end - low) as usize);
                let latest = self.chunks.range(from_i..to_i.min(self.chunks.len())).map(|c| c.sent_at).max();
                if let Some(at) = latest {
                    *rtt_sample = Some(now.saturating_duration_since(at));
                }
            }
            self.acks.insert(from, ack.next);
            self.completions_due = true;
        } else {
            // Known as a receiver even before it acknowledged anything (see `parity` below).
            self.acks.entry(from).or_insert(prev);
        }
        // A receiver that still lacks something is alive and talking: heartbeats (which fetch
        // its next ack or NACK) start again from the short interval; they back off only while
        // nobody who owes an ack says anything. Complete acks do not count, so a dead
        // receiver beside a live one is still probed slowly.
        if ack.next < self.next_seq || !ack.missing.is_empty() {
            self.heartbeat_soon(now);
        }
        // One Ack record asks for at most MAX_REPAIRS_PER_ACK chunks (a NACK round sends up to
        // four records; what is still missing is asked again after the repair wait), so one small
        // NACK cannot make the sender multicast its whole retention.
        let mut asked = 0;
        // Multicast: holes per message of several chunks, for parity repair (`poll`).
        let mut per_message: Vec<(u64, u32)> = Vec::new();
        let mut per_block: Vec<(u64, u32)> = Vec::new();
        let mut parity_seqs: Vec<u64> = Vec::new();
        'ranges: for &(start, len) in &ack.missing {
            for seq in start.max(self.low())..start.saturating_add(u64::from(len)).min(self.next_seq) {
                if asked == MAX_REPAIRS_PER_ACK || self.repairs.len() > 4096 {
                    break 'ranges;
                }
                asked += 1;
                // With one receiver, resending exactly what it lacks is as good and costs no
                // coding: parity only pays where receivers lose different chunks.
                let multicast = crate::parity::ENABLED && self.kind == crate::wire::stream::MULTICAST;
                let receivers = self.acks.len();
                let several = |m: &OutMessage| receivers.max(m.waiting.len()) >= 2;
                match self.message_of(seq).filter(|m| multicast && several(m)) {
                    Some(m) if parity.messages && m.end - m.first >= 2 => {
                        match per_message.last_mut() {
                            Some((first, n)) if *first == m.first => *n += 1,
                            _ => per_message.push((m.first, 1)),
                        }
                        parity_seqs.push(seq);
                    }
                    Some(m) if parity.blocks && self.block_member(m) && self.may_join_block(seq) => {
                        let block = seq - seq % crate::wire::REPAIR_BLOCK;
                        match per_block.last_mut() {
                            Some((first, n)) if *first == block => *n += 1,
                            _ => per_block.push((block, 1)),
                        }
                        parity_seqs.push(seq);
                    }
                    _ => {
                        self.repairs.insert(seq);
                    }
                }
            }
        }
        #[cfg(feature = "parity")]
        if !parity_seqs.is_empty() {
            let p = &mut self.verdicts.get_or_insert_with(Default::default).parity;
            for (first, n) in per_message {
                let need = p.need.entry(first).or_insert(0);
                *need = (*need).max(n);
            }
            for (first, n) in per_block {
                let need = p.block_need.entry(first).or_insert(0);
                *need = (*need).max(n);
            }
            // Kept for the rounds after parity (`poll`), which resend the chunks themselves.
            if p.asked.len() <= 4096 {
                p.asked.extend(parity_seqs);
            }
        }
        true
    }

    /// Receivers that a retained message still waits for and that have not acknowledged it (a
    /// receiver may appear once per such message).
    pub fn owing(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.messages
            .iter()
            .filter(|m| !m.reported)
            .flat_map(move |m| m.waiting.iter().copied().filter(move |r| self.acks.get(r).is_none_or(|&a| a < m.end)))
    }

    /// Forgets a receiver (it went down): messages it had not acknowledged fail for it.
    pub fn receiver_gone(&mut self, who: NodeId) {
        let acked = self.acks.remove(&who).unwrap_or(0);
        self.completions_due = true;
        for m in self.messages.iter_mut() {
            if let Some(i) = m.waiting.iter().position(|&r| r == who) {
                m.waiting.swap_remove(i);
                // What it acknowledged before leaving counts as delivered.
                if acked < m.end {
                    m.gone.push(who);
                }
            }
        }
    }

    /// Releases what every receiver in `live` acknowledged and what expired; returns finished
    /// messages. Call after acks and on timeouts.
    pub fn collect(&mut self, now: Instant, live: &[NodeId], limits: &StreamLimits) -> Vec<Completion> {
        let mut done = Vec::new();
        if let Some(v) = self.verdicts.as_mut() {
            if v.due.is_some_and(|t| t <= now) {
                v.due = None;
                self.completions_due = true;
            }
        }
        // Completed messages are reported at once, even if retained longer for other receivers.
        if core::mem::take(&mut self.completions_due) {
            for i in 0..self.messages.len() {
                let m = &self.messages[i];
                if m.reported {
                    continue;
                }
                if let Some(t) = self.held_until(m, now) {
                    // Looked at again when the hold ends (timer) or changes.
                    let v = self.verdicts.get_or_insert_with(Default::default);
                    v.due = Some(v.due.map_or(t, |d| d.min(t)));
                    continue;
                }
                let m = &mut self.messages[i];
                if m.waiting.iter().all(|r| self.acks.get(r).is_some_and(|&a| a >= m.end)) {
                    // Peers still unidentified once the hold ran out: we cannot know.
                    let unidentified: &[NodeId] = match &self.verdicts {
                        Some(v) => &v.unidentified,
                        None => &[],
                    };
                    let lost = m.tag.as_ref().map_or(&[][..], |t| &t.lost);
                    let unknown: Vec<NodeId> = unidentified
                        .iter()
                        .chain(lost)
                        .copied()
                        .filter(|r| !m.waiting.contains(r) && self.acks.get(r).is_none_or(|&a| a < m.end))
                        .collect();
                    let failure = if !m.gone.is_empty() {
                        Some(Failure::ReceiverGone)
                    } else if !unknown.is_empty() && m.tag.is_some() {
                        Some(Failure::Unconfirmed)
                    } else if !m.had_receivers {
                        // Nobody was waited for: nothing is known to have arrived.
                        Some(Failure::NoSubscribers)
                    } else {
                        None
                    };
                    let missing = if failure == Some(Failure::Unconfirmed) { unknown } else { m.gone.clone() };
                    done.push(Completion { id: m.id, missing, failure });
                    m.reported = true;
                    m.tag = None; // needed only until the verdict
                }
            }
        }
        // So are expired ones behind the front: they leave the queue in order, but are never
        // repaired again, and their deadline must not stay pending (it would be a busy timer).
        if self.expiring > 0 {
            for m in self.messages.iter_mut() {
                if !m.reported && m.expires.is_some_and(|e| e <= now) {
                    let mut missing: Vec<NodeId> =
                        m.waiting.iter().copied().filter(|r| self.acks.get(r).is_none_or(|&a| a < m.end)).collect();
                    missing.extend(m.gone.iter().copied());
                    done.push(Completion { id: m.id, missing, failure: Some(Failure::Expired) });
                    m.reported = true;
                    m.tag = None; // needed only until the verdict
                }
            }
        }
        while let Some(m) = self.messages.front() {
            // Before its verdict a receiver may still turn up: keep it for that one.
            let acked = !self.held(m, now) && live.iter().all(|r| self.acks.get(r).is_some_and(|&a| a >= m.end));
            let expired = m.expires.is_some_and(|e| e <= now);
            let old = now.saturating_duration_since(m.created) >= limits.max_retained_age;
            if !(acked || expired || old) {
                break;
            }
            let failure = if expired { Failure::Expired } else { Failure::Evicted };
            done.extend(self.pop_message(Some(failure)).flatten());
        }
        if self.messages.is_empty() {
            self.heartbeat_at = None;
            // An idle stream holds no heap (a microcontroller has one per RPC peer).
            self.messages = VecDeque::new();
        }
        if self.chunks.is_empty() {
            self.chunks = VecDeque::new();
        }
        // Acks matter only for live receivers and those a message still waits for; `live` is
        // sorted (it comes from an ordered map), so this stays cheap.
        let messages = &self.messages;
        self.acks.retain(|id, _| live.binary_search(id).is_ok() || messages.iter().any(|m| m.waiting.contains(id)));
        done
    }

    /// Fails every retained message (the receiver restarted: a unicast stream starts afresh).
    pub fn reset(&mut self) -> Vec<Completion> {
        let mut done = Vec::new();
        while let Some(c) = self.pop_message(Some(Failure::Reset)) {
            done.extend(c);
        }
        self.acks.clear();
        self.heartbeat_at = None;
        done
    }

    /// The Data record resending chunk `seq`, unless it went out less than `holdoff` ago, is
    /// no longer retained, or its message expired.
    fn resend(&mut self, now: Instant, seq: u64, holdoff: Duration) -> Option<Vec<u8>> {
        if self.repaired_at.get(&seq).is_some_and(|&t| now < t + holdoff) {
            return None;
        }
        let i = self.chunk_index(seq)?;
        let expires = self.message_of(seq).and_then(|m| m.expires);
        if expires.is_some_and(|e| e <= now) {
            return None;
        }
        self.chunks[i].sends += 1;
        self.chunks[i].sent_at = now;
        self.repaired_at.insert(seq, now);
        Some(self.encode(now, seq, expires))
    }

    /// Parity repair of the message starting at `first`, `need` symbols asked for by the
    /// neediest NACK: its end and the Repair records to send, or `None` to resend its chunks
    /// instead (its parity rounds are used up, or it is gone or expired).
    #[cfg(feature = "parity")]
    fn parity_repair(&mut self, now: Instant, first: u64, need: u32, holdoff: Duration) -> Option<(u64, Vec<Vec<u8>>)> {
        let m = self.message_of(first).filter(|m| m.first == first)?;
        let (end, expires) = (m.end, m.expires);
        if expires.is_some_and(|e| e <= now) {
            return None;
        }
        let k = u32::try_from(end - first).ok()?;
        let i = self.chunk_index(first)?;
        let chunks = self.chunks.range(i..i + k as usize);
        let len: usize = chunks.clone().map(|c| c.bytes.len()).sum();
        let symbol = u16::try_from(self.chunks[i].bytes.len()).ok().filter(|&t| t > 0)?;
        let len = u32::try_from(len).ok()?;
        let p = &mut self.verdicts.get_or_insert_with(Default::default).parity;
        let (start, extra) = p.rounds.entry(first).or_insert(ParityRound::new(now)).burst(now, need, holdoff, k)?;
        if extra == 0 {
            return Some((end, Vec::new()));
        }
        let symbols = crate::parity::encode(
            self.chunks.range(i..i + k as usize).map(|c| &c.bytes[..]),
            len,
            symbol,
            start,
            extra,
        );
        let ttl_ms = match expires {
            Some(e) => u32::try_from(e.saturating_duration_since(now).as_millis()).unwrap_or(u32::MAX).max(1),
            None => 0,
        };
        let mut records = Vec::with_capacity(symbols.len());
        for (esi, bytes) in symbols {
            let header = RepairHeader { stream: self.kind, epoch: self.epoch, first, len, symbol, esi, ttl_ms };
            let mut rec = Vec::with_capacity(bytes.len() + 32);
            Record::Repair { header, symbol: &bytes }.emit(&mut rec);
            records.push(rec);
        }
        // Acks that now cover the message measure their round trip from this repair.
        for c in self.chunks.range_mut(i..i + k as usize) {
            c.sent_at = now;
        }
        Some((end, records))
    }

    /// Parity repair of the block of one-chunk messages at `first` (PROTOCOL.md §6.9), `need`
    /// symbols asked for by the neediest NACK: the block's members and the BlockRepair records
    /// to send, or `None` to resend the chunks asked for instead (rounds used up, fewer than two
    /// members, or a member no longer retained).
    #[cfg(feature = "parity")]
    fn parity_block_repair(
        &mut self,
        now: Instant,
        first: u64,
        need: u32,
        holdoff: Duration,
    ) -> Option<(u16, Vec<Vec<u8>>)> {
        let known = self.verdicts.as_ref().and_then(|v| v.parity.blocks.get(&first)).map(|b| b.1);
        // Members are fixed at the block's first round: symbols of later rounds must add up.
        let members = known.unwrap_or_else(|| {
            (0..REPAIR_BLOCK)
                .filter(|&i| self.message_of(first + i).is_some_and(|m| m.first == first + i && self.block_member(m)))
                .fold(0u16, |bits, i| bits | (1 << i))
        });
        let seqs: Vec<u64> = (0..REPAIR_BLOCK).filter(|i| members & (1 << i) != 0).map(|i| first + i).collect();
        if seqs.len() < 2 {
            return None;
        }
        let mut padded = Vec::with_capacity(seqs.len());
        let mut lens = Vec::with_capacity(seqs.len());
        for &s in &seqs {
            let m = self.message_of(s).filter(|m| m.first == s && m.end == s + 1)?;
            if m.expires.is_some() {
                return None;
            }
            let c = &self.chunks[self.chunk_index(s)?];
            lens.push(u16::try_from(c.bytes.len()).ok()?);
            padded.push(c.bytes.clone());
        }
        let symbol = lens.iter().copied().max().filter(|&t| t > 0)?;
        for c in padded.iter_mut() {
            c.resize(usize::from(symbol), 0);
        }
        let k = seqs.len() as u32;
        let p = &mut self.verdicts.get_or_insert_with(Default::default).parity;
        let entry = p.blocks.entry(first).or_insert((ParityRound::new(now), members));
        let (start, extra) = entry.0.burst(now, need, holdoff, k)?;
        if extra == 0 {
            return Some((members, Vec::new()));
        }
        let len = k * u32::from(symbol);
        let symbols = crate::parity::encode(padded.iter().map(|c| &c[..]), len, symbol, start, extra);
        let mut records = Vec::with_capacity(symbols.len());
        for (esi, bytes) in symbols {
            let header = BlockRepairHeader {
                stream: self.kind,
                epoch: self.epoch,
                first,
                members,
                symbol,
                esi,
                lens: lens.clone(),
            };
            let mut rec = Vec::with_capacity(bytes.len() + 64);
            Record::BlockRepair { header, symbol: &bytes }.emit(&mut rec);
            records.push(rec);
        }
        for &s in &seqs {
            if let Some(i) = self.chunk_index(s) {
                self.chunks[i].sent_at = now;
            }
        }
        Some((members, records))
    }

    /// Records to send now: requested repairs (each at most once per `holdoff`) and a heartbeat
    /// when due. `heartbeat_cap` bounds the heartbeat interval (unicast streams pass the RTO).
    pub fn poll(&mut self, now: Instant, holdoff: Duration, heartbeat_cap: Duration) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        #[cfg_attr(not(feature = "parity"), allow(unused_mut))]
        let mut repairs = core::mem::take(&mut self.repairs);
        #[cfg(feature = "parity")]
        if let Some(v) = self.verdicts.as_mut() {
            let (need, asked) = (core::mem::take(&mut v.parity.need), core::mem::take(&mut v.parity.asked));
            let block_need = core::mem::take(&mut v.parity.block_need);
            for (first, n) in block_need {
                let members = match self.parity_block_repair(now, first, n, holdoff) {
                    Some((members, records)) => {
                        out.extend(records);
                        members
                    }
                    None => 0,
                };
                // What the block's symbols do not cover goes as chunks.
                let outside = asked.range(first..first + REPAIR_BLOCK).filter(|&&s| members & (1 << (s - first)) == 0);
                repairs.extend(outside);
            }
            for (first, n) in need {
                match self.parity_repair(now, first, n, holdoff) {
                    Some((_, records)) => out.extend(records),
                    // Its parity rounds are used up: resend the chunks asked for.
                    None => {
                        let end = self.message_of(first).map_or(first, |m| m.end);
                        repairs.extend(asked.range(first..end));
                    }
                }
            }
        }
        for seq in repairs {
            out.extend(self.resend(now, seq, holdoff));
        }
        if !out.is_empty() {
            // A lost repair at the tail is noticed like lost new data.
            self.heartbeat_soon(now);
        }
        if self.heartbeat_at.is_some_and(|t| t <= now) && self.kind == crate::wire::stream::UNICAST {
            // Tail-loss probe (as TCP's and QUIC's): a unicast stream carries a call or an
            // answer of a few chunks, so resend what is unacknowledged rather than wait a round
            // trip for the receiver's NACK of it.
            let from = self.acks.values().copied().min().unwrap_or(0).max(self.low());
            if self.next_seq.saturating_sub(from) <= TAIL_PROBE_CHUNKS {
                for seq in from..self.next_seq {
                    out.extend(self.resend(now, seq, holdoff));
                }
            }
        }
        if self.heartbeat_at.is_some_and(|t| t <= now) {
            let hb = Heartbeat { stream: self.kind, epoch: self.epoch, low: self.low(), next: self.next_seq };
            let mut rec = Vec::new();
            Record::Heartbeat(hb).emit(&mut rec);
            out.push(rec);
            // A heartbeat or its answer is lost half the time at 30% loss each way: keep the
            // short interval for a few unanswered ones, then back off (a dead receiver is
            // found by its peer timeout; until then it costs a heartbeat per interval).
            self.heartbeats_unanswered = self.heartbeats_unanswered.saturating_add(1);
            if self.heartbeats_unanswered > HEARTBEATS_BEFORE_BACKOFF {
                self.heartbeat_interval =
                    (self.heartbeat_interval * 2).min(heartbeat_cap.max(Duration::from_millis(1)));
            }
            self.heartbeat_at = Some(now + self.heartbeat_interval);
        }
        out
    }

    /// When this stream needs attention next (heartbeat, expiry or age-out).
    pub fn poll_timeout(&self, limits: &StreamLimits) -> Option<Instant> {
        let m = self.messages.front().map(|m| {
            let aged = m.created + limits.max_retained_age;
            m.expires.map_or(aged, |e| e.min(aged))
        });
        let soonest_expiry = if self.expiring == 0 {
            None
        } else {
            self.messages.iter().filter(|m| !m.reported).filter_map(|m| m.expires).min()
        };
        let verdict = self.verdicts.as_ref().and_then(|v| v.due);
        [self.heartbeat_at, m, soonest_expiry, verdict].into_iter().flatten().min()
    }
}

/// What a receiver's stream hands up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// A whole message, in order.
    Message {
        /// Sequence number of its first chunk.
        seq: u64,
        /// Its bytes.
        bytes: Vec<u8>,
    },
    /// Sequence numbers `from..to` can never be delivered.
    Gap {
        /// First lost sequence number.
        from: u64,
        /// One past the last.
        to: u64,
    },
    /// The message at sequence numbers `from..to` completed after its time to live: not delivered.
    Expired {
        /// Its first sequence number.
        from: u64,
        /// One past its last.
        to: u64,
    },
}

struct Pending {
    index: u32,
    count: u32,
    expires: Option<Instant>,
    bytes: Vec<u8>,
}

/// What the receiving side of a stream asks the node to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Feedback {
    /// A plain acknowledgement, sent by unicast to the stream's sender.
    Ack(Ack),
    /// An acknowledgement with missing ranges: for multicast streams sent to the group so other
    /// receivers can hold back theirs (NACK suppression).
    Nack(Ack),
}

/// The receiving side of one sender's stream.
pub struct InStream {
    sender: NodeId,
    kind: u8,
    epoch: u32,
    next: u64,
    highest: u64,
    pending: BTreeMap<u64, Pending>,
    pending_bytes: usize,
    ack_due: Option<Instant>,
    /// `next` as last acknowledged: a long run of new chunks is acknowledged without waiting
    /// for `ack_delay`, so a fast sender's window keeps moving.
    acked: u64,
    /// Smoothed time from a NACK to the first repair it asked for, in µs (0: no sample yet):
    /// the round trip to the sender as this receiver sees it. Repair timers follow it.
    srtt_us: u32,
    /// What NACKs asked for while the stream has holes (boxed: an idle stream has none, and a
    /// board keeps two streams per peer).
    asked: Option<Box<Asked>>,
}

/// Repair symbols a receiver holds for one message or block, `(esi, bytes)`.
#[cfg(feature = "parity")]
#[derive(Default)]
struct Symbols {
    list: Vec<(u32, Vec<u8>)>,
    /// Decoding attempts that failed with enough symbols (RaptorQ needs one more, rarely):
    /// each asks for one symbol more.
    failed: u32,
}

#[cfg(feature = "parity")]
impl Symbols {
    /// Whether symbol `esi` can help with `holes` holes: not one held, and fewer held than the
    /// holes and failed attempts need.
    fn wants(&self, esi: u32, holes: usize) -> bool {
        !self.list.iter().any(|(e, _)| *e == esi) && self.list.len() < holes + self.failed as usize
    }

    /// Whether `have` source symbols and these reach the `k` a rebuild needs.
    fn enough(&self, have: usize, k: usize) -> bool {
        have + self.list.len() >= k + self.failed as usize
    }

    /// The holes these stand for in a NACK (PROTOCOL.md §6.8).
    fn credit(&self) -> usize {
        self.list.len().saturating_sub(self.failed as usize)
    }

    fn bytes(&self) -> usize {
        self.list.iter().map(|(_, b)| b.len()).sum()
    }

    fn iter(&self) -> impl Iterator<Item = (u32, &[u8])> {
        self.list.iter().map(|(e, b)| (*e, &b[..]))
    }
}

/// Parity repair symbols a receiver holds for one incomplete message (PROTOCOL.md §6.8).
#[cfg(feature = "parity")]
struct HeldRepairs {
    len: u32,
    symbol: u16,
    expires: Option<Instant>,
    symbols: Symbols,
}

/// Block repair symbols a receiver holds for one block (PROTOCOL.md §6.9).
#[cfg(feature = "parity")]
struct HeldBlock {
    members: u16,
    lens: Vec<u16>,
    symbol: u16,
    symbols: Symbols,
}

/// Why a Repair record was refused: it disagrees with the chunks held for its message (a
/// different message shape at the same sequence numbers). Counted as `drop_stream`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inconsistent;

/// The NACK bookkeeping of a stream with holes. Two timers: holes never asked for are asked
/// for once they survived a short reordering delay (`fresh_due`, covering holes below
/// `limit`); holes asked for already are asked again when their repair is overdue
/// (`repeat_at`).
struct Asked {
    /// One past the highest sequence number any NACK asked for.
    upto: u64,
    /// Holes in `upto..limit` are the ones `fresh_due` asks for (`limit` is where the
    /// stream's extent stood when they were seen, so later chunks still may arrive reordered).
    limit: u64,
    fresh_due: Option<Instant>,
    repeat_at: Option<Instant>,
    /// Repeats without any new chunk since (each doubles the wait).
    round: u32,
    /// The further Ack records of a NACK round with more than [`MAX_ACK_RANGES`] ranges.
    queued: Vec<Ack>,
    /// A sequence number first asked for by the last NACK, and when: its arrival is a
    /// round-trip sample (a number asked for only once, so the sample is unambiguous).
    probe: Option<(u64, Instant)>,
    /// Repair symbols held for incomplete messages, by their first sequence number (only a
    /// stream with holes holds any).
    #[cfg(feature = "parity")]
    held: BTreeMap<u64, HeldRepairs>,
    /// Repair symbols held for blocks of one-chunk messages, by the block's first number.
    #[cfg(feature = "parity")]
    blocks: BTreeMap<u64, HeldBlock>,
    /// Copies of the one-chunk messages delivered from the block `next` is in: a block repair
    /// needs them to rebuild a later hole of that block (the box then outlives the holes).
    #[cfg(feature = "parity")]
    kept: Vec<(u64, Vec<u8>)>,
}

impl Asked {
    fn new(next: u64) -> Box<Self> {
        Box::new(Asked {
            upto: next,
            limit: next,
            fresh_due: None,
            repeat_at: None,
            round: 0,
            queued: Vec::new(),
            probe: None,
            #[cfg(feature = "parity")]
            held: BTreeMap::new(),
            #[cfg(feature = "parity")]
            blocks: BTreeMap::new(),
            #[cfg(feature = "parity")]
            kept: Vec::new(),
        })
    }

    fn due(&self) -> Option<Instant> {
        [self.fresh_due, self.repeat_at].into_iter().flatten().min()
    }
}

/// Most ranges one round of NACKs asks for: sent as several Ack records of at most
/// [`MAX_ACK_RANGES`] each, so a NACK can name every hole of a 64 KiB message at any loss.
const NACK_RANGES: usize = 4 * MAX_ACK_RANGES;

/// A unicast stream with at most this many unacknowledged chunks resends them when its
/// heartbeat is due (tail-loss probe).
const TAIL_PROBE_CHUNKS: u64 = 4;

/// The chunks a receiver with `limits` can buffer from its next expected one.
fn receive_window(limits: &StreamLimits) -> u32 {
    let by_bytes = limits.max_pending_bytes / crate::wire::MAX_DATAGRAM;
    u32::try_from(limits.max_pending_chunks.min(by_bytes).max(1)).unwrap_or(u32::MAX)
}

/// Heartbeats at the short interval before they back off.
const HEARTBEATS_BEFORE_BACKOFF: u8 = 6;

/// Shortest wait for a repair before a receiver asks again (a host's timer granularity).
pub const MIN_REPAIR_WAIT: Duration = Duration::from_millis(1);

/// Chunks delivered since the last acknowledgement that make the next one go at once: a
/// quarter of the default retention (1024 messages), so a sender in a burst never stalls on
/// `ack_delay` with its retention full.
const ACK_EVERY: u64 = 256;

impl InStream {
    /// Starts receiving `sender`'s stream `kind` of `epoch` at sequence number `start`.
    pub fn new(sender: NodeId, kind: u8, epoch: u32, start: u64) -> Self {
        InStream {
            sender,
            kind,
            epoch,
            next: start,
            highest: start,
            pending: BTreeMap::new(),
            pending_bytes: 0,
            ack_due: None,
            acked: start,
            srtt_us: 0,
            asked: None,
        }
    }

    /// How long to wait for a repair before asking again: two round trips as measured (one
    /// for the NACK and its repair, one of slack for the sender's hold-off and jitter), at
    /// least [`MIN_REPAIR_WAIT`], at most `limits.repair_wait`, which is also the wait before
    /// any measurement.
    fn repair_wait(&self, limits: &StreamLimits) -> Duration {
        match self.srtt() {
            Some(rtt) => {
                (rtt * 2 + MIN_REPAIR_WAIT / 2).clamp(MIN_REPAIR_WAIT, limits.repair_wait.max(MIN_REPAIR_WAIT))
            }
            None => limits.repair_wait,
        }
    }

    /// The round trip this receiver measured to the sender, if any.
    pub fn srtt(&self) -> Option<Duration> {
        (self.srtt_us > 0).then(|| Duration::from_micros(u64::from(self.srtt_us)))
    }

    /// Starts the round-trip estimate from one measured elsewhere (the node's handshake or
    /// acknowledgements with this peer), if the stream has none yet.
    pub fn seed_srtt(&mut self, rtt: Duration) {
        if self.srtt_us == 0 {
            self.on_rtt_sample(rtt);
        }
    }

    fn on_rtt_sample(&mut self, sample: Duration) {
        let sample = u32::try_from(sample.as_micros()).unwrap_or(u32::MAX).max(1);
        self.srtt_us = match self.srtt_us {
            0 => sample,
            s => s - s / 8 + sample / 8,
        };
    }

    /// The sender's epoch this stream belongs to.
    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    /// Next sequence number to deliver.
    pub fn next(&self) -> u64 {
        self.next
    }

    /// Bytes buffered out of order.
    pub fn pending_bytes(&self) -> usize {
        self.pending_bytes
    }

    fn give_up_below(&mut self, low: u64, out: &mut Vec<Delivery>) {
        if low > self.next {
            out.push(Delivery::Gap { from: self.next, to: low });
            while let Some((&s, _)) = self.pending.first_key_value() {
                if s >= low {
                    break;
                }
                let p = self.pending.pop_first().expect("exists").1;
                self.pending_bytes -= p.bytes.len();
            }
            self.next = low;
            self.highest = self.highest.max(low);
            self.release_held(|_, last| last < low);
            self.prune_kept();
        }
    }

    /// Frees the repair symbols held for the messages and blocks `which` selects, given their
    /// first and last sequence numbers.
    #[cfg(feature = "parity")]
    fn release_held(&mut self, which: impl Fn(u64, u64) -> bool) {
        let Some(a) = self.asked.as_mut() else { return };
        let mut freed = 0;
        a.held.retain(|&first, h| {
            let last = first + u64::from(h.len.div_ceil(u32::from(h.symbol))) - 1;
            let keep = !which(first, last);
            if !keep {
                freed += h.symbols.bytes();
            }
            keep
        });
        a.blocks.retain(|&first, h| {
            let keep = !which(first, first + REPAIR_BLOCK - 1);
            if !keep {
                freed += h.symbols.bytes();
            }
            keep
        });
        self.pending_bytes -= freed;
    }

    /// Drops the kept copies of blocks `next` has left behind.
    #[cfg(feature = "parity")]
    fn prune_kept(&mut self) {
        let block = self.next - self.next % crate::wire::REPAIR_BLOCK;
        let Some(a) = self.asked.as_mut() else { return };
        let mut freed = 0;
        a.kept.retain(|(s, b)| {
            let keep = *s >= block;
            if !keep {
                freed += b.len();
            }
            keep
        });
        self.pending_bytes -= freed;
    }

    /// Keeps a copy of the one-chunk message just delivered at `seq` for block repair, if its
    /// block goes on past it and the budget allows.
    #[cfg(feature = "parity")]
    fn keep_delivered(&mut self, seq: u64, bytes: &[u8], keep: usize) {
        // Only multicast streams are repaired in blocks (a unicast stream has one receiver).
        let multicast = self.kind == crate::wire::stream::MULTICAST;
        if !multicast || keep == 0 || (seq + 1).is_multiple_of(REPAIR_BLOCK) || bytes.len() > MAX_BLOCK_SYMBOL {
            return;
        }
        let next = self.next;
        let a = self.asked.get_or_insert_with(|| Asked::new(next));
        let held: usize = a.kept.iter().map(|(_, b)| b.len()).sum();
        if held + bytes.len() <= keep {
            a.kept.push((seq, bytes.to_vec()));
            self.pending_bytes += bytes.len();
        }
    }

    /// Without the codec nothing is held.
    #[cfg(not(feature = "parity"))]
    fn release_held(&mut self, _which: impl Fn(u64, u64) -> bool) {}

    /// Without the codec nothing is kept.
    #[cfg(not(feature = "parity"))]
    fn prune_kept(&mut self) {}

    /// Without the codec nothing is kept.
    #[cfg(not(feature = "parity"))]
    fn keep_delivered(&mut self, _seq: u64, _bytes: &[u8], _keep: usize) {}

    /// Forgets the NACK state (no holes left, or leaving), and the repair symbols it held.
    fn clear_asked(&mut self) {
        self.release_held(|_, _| true);
        #[cfg(feature = "parity")]
        {
            let next = self.next;
            if let Some(a) = self.asked.as_mut().filter(|a| !a.kept.is_empty()) {
                // Copies for block repair stay; the NACK state starts over.
                let kept = core::mem::take(&mut a.kept);
                *a = Asked::new(next);
                a.kept = kept;
                return;
            }
        }
        self.asked = None;
    }

    #[cfg(feature = "parity")]
    fn held(&self) -> Option<&BTreeMap<u64, HeldRepairs>> {
        self.asked.as_ref().map(|a| &a.held).filter(|h| !h.is_empty())
    }

    /// Makes room for `bytes` more by dropping what is buffered beyond sequence number `before`
    /// (farthest first; chunks, then repair symbols): they are asked for again later. True if
    /// the room is there.
    fn make_room(&mut self, bytes: usize, before: u64, limits: &StreamLimits) -> bool {
        while self.pending_bytes + bytes > limits.max_pending_bytes {
            match self.pending.last_key_value() {
                Some((&last, _)) if last > before => {
                    let p = self.pending.pop_last().expect("exists").1;
                    self.pending_bytes -= p.bytes.len();
                }
                _ => break,
            }
        }
        if self.pending_bytes + bytes > limits.max_pending_bytes {
            self.release_held(|first, _| first > before);
        }
        self.pending_bytes + bytes <= limits.max_pending_bytes
    }

    fn schedule(slot: &mut Option<Instant>, at: Instant) {
        if slot.is_none_or(|t| at < t) {
            *slot = Some(at);
        }
    }

    fn has_holes(&self) -> bool {
        self.highest > self.next
    }

    /// Handles one Data chunk; `jitter` is a random fraction (0..1000) for the NACK delay.
    pub fn on_data(
        &mut self,
        now: Instant,
        h: &DataHeader,
        chunk: &[u8],
        limits: &StreamLimits,
        jitter: u64,
    ) -> Vec<Delivery> {
        let mut out = Vec::new();
        self.give_up_below(h.low, &mut out);
        Self::schedule(&mut self.ack_due, now + limits.ack_delay);
        if h.seq < self.next || self.pending.contains_key(&h.seq) {
            return out; // duplicate: the ack tells the sender
        }
        if let Some(a) = self.asked.as_mut() {
            if let Some((_, sent)) = a.probe.filter(|&(seq, _)| seq == h.seq) {
                a.probe = None;
                self.on_rtt_sample(now.saturating_duration_since(sent));
            }
        }
        let window_end = self.next.saturating_add(limits.max_pending_chunks as u64);
        // A full buffer makes room for a chunk closer to delivery by dropping the farthest
        // ones (they are asked for again later): otherwise a buffer filled with chunks behind
        // a hole could never take the repair of that hole.
        let room = self.make_room(chunk.len(), h.seq, limits);
        // A whole message that is next in order is delivered at once and never stays buffered:
        // it passes even when the node's shared receive budget is used up by other senders.
        let at_once = h.seq == self.next && h.count == 1;
        if h.seq >= window_end || (!at_once && !room) {
            // It was sent, so everything up to it (itself included, within the window) is missing.
            self.highest = self.highest.max(h.seq.saturating_add(1).min(window_end));
            self.schedule_nack(now, limits, jitter);
            return out; // no room: it will be repaired once the window moves
        }
        let expires = (h.ttl_ms > 0).then(|| now + Duration::from_millis(u64::from(h.ttl_ms)));
        self.pending_bytes += chunk.len();
        self.pending.insert(h.seq, Pending { index: h.index, count: h.count, expires, bytes: chunk.to_vec() });
        self.highest = self.highest.max(h.seq + 1);
        #[cfg(feature = "parity")]
        {
            self.try_rebuild(h.seq);
            if h.count == 1 {
                self.try_rebuild_block(h.seq - h.seq % REPAIR_BLOCK);
            }
        }
        self.progress(now, limits, jitter, &mut out);
        out
    }

    /// After something new was buffered: deliver what is complete, acknowledge and arm NACKs.
    fn progress(&mut self, now: Instant, limits: &StreamLimits, jitter: u64, out: &mut Vec<Delivery>) {
        self.deliver(now, limits.parity_keep_bytes, out);
        // Half a receive window delivered since the last ack: ack now, so a sender in a burst
        // (its retention filling, or a small board's window overrun) keeps moving.
        let every = ACK_EVERY.min(u64::from(receive_window(limits) / 2).max(1));
        if self.next.saturating_sub(self.acked) >= every {
            Self::schedule(&mut self.ack_due, now);
        }
        // A unicast stream carries calls and answers: acknowledge a whole message at once, so
        // the sender's round-trip samples are round trips, not `ack_delay`, and a lost request
        // or response is resent after a timeout that fits the link. (An RPC pays these acks
        // anyway; they just go sooner.)
        if self.kind == crate::wire::stream::UNICAST && out.iter().any(|d| matches!(d, Delivery::Message { .. })) {
            Self::schedule(&mut self.ack_due, now);
        }
        if self.has_holes() {
            // Progress: the sender is alive and answering, so repeats need no back-off.
            let wait = now + self.repair_wait(limits);
            if let Some(a) = self.asked.as_mut() {
                a.round = 0;
                a.repeat_at = a.repeat_at.map(|t| t.min(wait));
            }
            self.schedule_nack(now, limits, jitter);
        } else {
            self.clear_asked();
        }
    }

    /// Handles one parity repair symbol (PROTOCOL.md §6.8). Returns what became deliverable
    /// and how many chunks were rebuilt; `Err` when it contradicts the chunks held for its
    /// message.
    #[cfg(feature = "parity")]
    pub fn on_repair(
        &mut self,
        now: Instant,
        h: &RepairHeader,
        symbol: &[u8],
        limits: &StreamLimits,
        jitter: u64,
    ) -> Result<(Vec<Delivery>, u32), Inconsistent> {
        let out = Vec::new();
        Self::schedule(&mut self.ack_due, now + limits.ack_delay);
        let k = u64::from(h.chunks());
        let (first, end) = (h.first, h.first + k);
        if first < self.next {
            return Ok((out, 0)); // delivered or given up: the ack tells the sender
        }
        if self.beyond_window(now, end - 1, limits, jitter) {
            return Ok((out, 0));
        }
        // What is held of the message must be of the same shape.
        let t = usize::from(h.symbol);
        let last_len = h.len as usize - (k as usize - 1) * t;
        let mut held_chunks = 0;
        for (&seq, p) in self.pending.range(first..end) {
            let i = seq - first;
            let want = if i + 1 == k { last_len } else { t };
            if u64::from(p.index) != i || u64::from(p.count) != k || p.bytes.len() != want {
                return Err(Inconsistent);
            }
            held_chunks += 1;
        }
        self.sample_probe(now, |seq| (first..end).contains(&seq));
        self.highest = self.highest.max(end);
        if held_chunks == k {
            return Ok((out, 0)); // complete already
        }
        if let Some(r) = self.held().and_then(|held| held.get(&first)) {
            if r.len != h.len || r.symbol != h.symbol {
                return Err(Inconsistent);
            }
            if !r.symbols.wants(h.esi, (k - held_chunks) as usize) {
                return Ok((out, 0));
            }
        }
        if !self.room_for_symbol(now, t, end - 1, limits, jitter) {
            return Ok((out, 0));
        }
        let expires = (h.ttl_ms > 0).then(|| now + Duration::from_millis(u64::from(h.ttl_ms)));
        let shape = || HeldRepairs { len: h.len, symbol: h.symbol, expires, symbols: Symbols::default() };
        self.asked_mut().held.entry(first).or_insert_with(shape).symbols.list.push((h.esi, symbol.to_vec()));
        self.pending_bytes += t; // before a rebuild frees it with the rest
        let rebuilt = self.try_rebuild(first);
        Ok((self.after_symbol(now, limits, jitter), rebuilt))
    }

    /// A repair record covering sequence numbers up to `last` that lie beyond what this receiver
    /// can buffer: it asks for the chunks once the window moves (true: ignore the record).
    #[cfg(feature = "parity")]
    fn beyond_window(&mut self, now: Instant, last: u64, limits: &StreamLimits, jitter: u64) -> bool {
        let window_end = self.next.saturating_add(limits.max_pending_chunks as u64);
        if last < window_end {
            return false;
        }
        self.highest = self.highest.max(window_end);
        self.schedule_nack(now, limits, jitter);
        true
    }

    /// The arrival of a repair for what the last NACK first asked for is a round-trip sample.
    #[cfg(feature = "parity")]
    fn sample_probe(&mut self, now: Instant, covers: impl Fn(u64) -> bool) {
        if let Some(a) = self.asked.as_mut() {
            if let Some((_, sent)) = a.probe.filter(|&(seq, _)| covers(seq)) {
                a.probe = None;
                self.on_rtt_sample(now.saturating_duration_since(sent));
            }
        }
    }

    /// Room for a symbol of `t` bytes of a message or block ending at `last`, taken from farther
    /// ones only (never from its own chunks); without room the holes are asked for again.
    #[cfg(feature = "parity")]
    fn room_for_symbol(&mut self, now: Instant, t: usize, last: u64, limits: &StreamLimits, jitter: u64) -> bool {
        if self.make_room(t, last, limits) {
            return true;
        }
        self.schedule_nack(now, limits, jitter);
        false
    }

    /// The NACK state, created if the stream has none.
    #[cfg(feature = "parity")]
    fn asked_mut(&mut self) -> &mut Asked {
        let next = self.next;
        self.asked.get_or_insert_with(|| Asked::new(next))
    }

    /// A symbol was stored (and perhaps something rebuilt): deliver and acknowledge.
    #[cfg(feature = "parity")]
    fn after_symbol(&mut self, now: Instant, limits: &StreamLimits, jitter: u64) -> Vec<Delivery> {
        let mut out = Vec::new();
        self.progress(now, limits, jitter, &mut out);
        out
    }

    /// Rebuilds the message of `seq` from its chunks and the repair symbols held for it, if
    /// they are enough; returns the chunks rebuilt.
    #[cfg(feature = "parity")]
    fn try_rebuild(&mut self, seq: u64) -> u32 {
        let Some(held) = self.held() else { return 0 };
        // The message holding `seq`: the last one with repair symbols that starts at or before it.
        let Some((&first, r)) = held.range(..=seq).next_back() else { return 0 };
        let k = u64::from(r.len.div_ceil(u32::from(r.symbol)));
        if seq >= first + k {
            return 0;
        }
        let chunks = self.pending.range(first..first + k).count();
        if !r.symbols.enough(chunks, k as usize) {
            return 0; // not enough yet (a failed attempt needs one more symbol)
        }
        let rebuilt = crate::parity::decode(
            r.len,
            r.symbol,
            self.pending.range(first..first + k).map(|(&s, p)| ((s - first) as u32, &p.bytes[..])),
            r.symbols.iter(),
        );
        let Some(bytes) = rebuilt else {
            if let Some(r) = self.asked.as_mut().and_then(|a| a.held.get_mut(&first)) {
                r.symbols.failed += 1;
            }
            return 0;
        };
        let (expires, t) = (r.expires, usize::from(r.symbol));
        if let Some(r) = self.asked.as_mut().and_then(|a| a.held.remove(&first)) {
            self.pending_bytes -= r.symbols.bytes();
        }
        let mut count = 0;
        for (i, c) in bytes.chunks(t).enumerate() {
            let seq = first + i as u64;
            if let alloc::collections::btree_map::Entry::Vacant(e) = self.pending.entry(seq) {
                self.pending_bytes += c.len();
                e.insert(Pending { index: i as u32, count: k as u32, expires, bytes: c.to_vec() });
                count += 1;
            }
        }
        count
    }

    /// Handles one block repair symbol (PROTOCOL.md §6.9): like [`on_repair`](Self::on_repair)
    /// for a block of one-chunk messages, rebuilt from the members buffered, the copies kept of
    /// those delivered, and the symbols. A block whose delivered members were not kept cannot
    /// be rebuilt here: the symbol is ignored (the sender resends chunks after its rounds).
    #[cfg(feature = "parity")]
    pub fn on_block_repair(
        &mut self,
        now: Instant,
        h: &BlockRepairHeader,
        symbol: &[u8],
        limits: &StreamLimits,
        jitter: u64,
    ) -> Result<(Vec<Delivery>, u32), Inconsistent> {
        let out = Vec::new();
        Self::schedule(&mut self.ack_due, now + limits.ack_delay);
        let (first, end) = (h.first, h.first + REPAIR_BLOCK);
        let Some(last) = h.member_seqs().last() else { return Ok((out, 0)) };
        if end <= self.next {
            return Ok((out, 0)); // behind us: the ack tells the sender
        }
        if self.beyond_window(now, last, limits, jitter) {
            return Ok((out, 0));
        }
        let mut holes = 0;
        for (s, &len) in h.member_seqs().zip(&h.lens) {
            let len = usize::from(len);
            if s < self.next {
                let kept = self.asked.as_ref().and_then(|a| a.kept.iter().find(|(k, _)| *k == s));
                match kept {
                    Some((_, b)) if b.len() == len => {}
                    Some(_) => return Err(Inconsistent),
                    None => return Ok((out, 0)), // delivered or given up without a copy
                }
            } else if let Some(p) = self.pending.get(&s) {
                if p.count != 1 || p.index != 0 || p.bytes.len() != len {
                    return Err(Inconsistent);
                }
            } else {
                holes += 1;
            }
        }
        self.sample_probe(now, |seq| h.member_seqs().any(|m| m == seq));
        self.highest = self.highest.max(last + 1);
        if holes == 0 {
            return Ok((out, 0));
        }
        if let Some(b) = self.asked.as_ref().and_then(|a| a.blocks.get(&first)) {
            if b.members != h.members || b.lens != h.lens || b.symbol != h.symbol {
                return Err(Inconsistent);
            }
            if !b.symbols.wants(h.esi, holes) {
                return Ok((out, 0));
            }
        }
        let t = usize::from(h.symbol);
        if !self.room_for_symbol(now, t, end - 1, limits, jitter) {
            return Ok((out, 0));
        }
        let shape =
            || HeldBlock { members: h.members, lens: h.lens.clone(), symbol: h.symbol, symbols: Symbols::default() };
        self.asked_mut().blocks.entry(first).or_insert_with(shape).symbols.list.push((h.esi, symbol.to_vec()));
        self.pending_bytes += t; // before a rebuild frees it with the rest
        let rebuilt = self.try_rebuild_block(first);
        Ok((self.after_symbol(now, limits, jitter), rebuilt))
    }

    /// Rebuilds the missing members of the block at `first` if its members at hand (buffered or
    /// kept) and the symbols held are enough; returns the chunks rebuilt.
    #[cfg(feature = "parity")]
    fn try_rebuild_block(&mut self, first: u64) -> u32 {
        let Some(b) = self.asked.as_ref().and_then(|a| a.blocks.get(&first)) else { return 0 };
        let seqs: Vec<u64> = (0..REPAIR_BLOCK).filter(|i| b.members & (1 << i) != 0).map(|i| first + i).collect();
        let kept = &self.asked.as_ref().expect("held").kept;
        let mut sources: Vec<(u32, &[u8])> = Vec::with_capacity(seqs.len());
        for (i, &s) in seqs.iter().enumerate() {
            let bytes = if s < self.next {
                kept.iter().find(|(k, _)| *k == s).map(|(_, b)| &b[..])
            } else {
                self.pending.get(&s).map(|p| &p.bytes[..])
            };
            if let Some(bytes) = bytes {
                sources.push((i as u32, bytes));
            }
        }
        if !b.symbols.enough(sources.len(), seqs.len()) {
            return 0;
        }
        let k = seqs.len() as u32;
        let rebuilt =
            crate::parity::decode(k * u32::from(b.symbol), b.symbol, sources.iter().copied(), b.symbols.iter());
        let Some(bytes) = rebuilt else {
            if let Some(b) = self.asked.as_mut().and_then(|a| a.blocks.get_mut(&first)) {
                b.symbols.failed += 1;
            }
            return 0;
        };
        let (t, lens) = (usize::from(b.symbol), b.lens.clone());
        if let Some(b) = self.asked.as_mut().and_then(|a| a.blocks.remove(&first)) {
            self.pending_bytes -= b.symbols.bytes();
        }
        let mut count = 0;
        for (i, &s) in seqs.iter().enumerate() {
            if s < self.next {
                continue;
            }
            if let alloc::collections::btree_map::Entry::Vacant(e) = self.pending.entry(s) {
                let chunk = bytes[i * t..i * t + usize::from(lens[i])].to_vec();
                self.pending_bytes += chunk.len();
                e.insert(Pending { index: 0, count: 1, expires: None, bytes: chunk });
                count += 1;
            }
        }
        count
    }

    /// Arms a NACK for holes no NACK asked for yet, unless one is armed: after a reordering
    /// delay (a quarter of the measured round trip, at least 250 µs; 1 ms before any
    /// measurement; a chunk that is merely late is not a loss) plus a random delay so one
    /// receiver's NACK can suppress the others' (up to half a round trip, at most
    /// `limits.nack_delay`).
    fn schedule_nack(&mut self, now: Instant, limits: &StreamLimits, jitter: u64) {
        let delay = self.reorder_delay(limits) + self.suppression_delay(limits, jitter);
        let (next, highest) = (self.next, self.highest);
        let a = self.asked.get_or_insert_with(|| Asked::new(next));
        a.upto = a.upto.max(next);
        if a.fresh_due.is_none() && highest > a.upto.max(a.limit) {
            a.limit = highest;
            a.fresh_due = Some(now + delay);
        }
    }

    /// A random delay before a NACK, so one receiver's NACK can suppress the others': up to
    /// half the measured round trip, at most `limits.nack_delay` (`jitter` is 0..1000).
    fn suppression_delay(&self, limits: &StreamLimits, jitter: u64) -> Duration {
        let spread = self.srtt().map_or(limits.nack_delay, |rtt| (rtt / 2).min(limits.nack_delay));
        spread.mul_f64((jitter % 1000) as f64 / 1000.0)
    }

    /// How long a hole may be mere reordering: a quarter of the measured round trip, at least
    /// 250 µs, 1 ms before any measurement, at most `limits.nack_delay`.
    fn reorder_delay(&self, limits: &StreamLimits) -> Duration {
        let d = self.srtt().map_or(Duration::from_millis(1), |r| (r / 4).max(Duration::from_micros(250)));
        d.min(limits.nack_delay)
    }

    /// Holes in `from..to`, at most [`NACK_RANGES`] ranges.
    fn holes_in(&self, from: u64, to: u64) -> Vec<SeqRange> {
        self.missing_from(from.max(self.next), to, NACK_RANGES)
    }

    /// Delivers what is complete in order; `keep` is the block-repair budget
    /// ([`StreamLimits::parity_keep_bytes`]).
    fn deliver(&mut self, now: Instant, keep: usize, out: &mut Vec<Delivery>) {
        loop {
            if self.pending.is_empty() {
                // An empty B-tree keeps its root node: drop it, idle streams hold no heap.
                self.pending = BTreeMap::new();
                return;
            }
            let Some(first) = self.pending.get(&self.next) else { return };
            if first.index != 0 {
                // A chunk that is not a message start at the head: the stream is inconsistent.
                let to = self.next + 1;
                self.give_up_below(to, out);
                continue;
            }
            let count = u64::from(first.count);
            let complete = (1..count).all(|i| {
                self.pending
                    .get(&(self.next + i))
                    .is_some_and(|p| u64::from(p.index) == i && u64::from(p.count) == count)
            });
            if !complete {
                return;
            }
            let seq = self.next;
            let mut bytes = Vec::new();
            let mut expired = false;
            let mut ttl = false;
            for i in 0..count {
                let p = self.pending.remove(&(seq + i)).expect("checked complete");
                self.pending_bytes -= p.bytes.len();
                expired |= p.expires.is_some_and(|e| e <= now);
                ttl |= p.expires.is_some();
                bytes.extend_from_slice(&p.bytes);
            }
            self.next = seq + count;
            self.release_held(|_, last| last < seq + count);
            self.prune_kept();
            if count == 1 && !ttl {
                self.keep_delivered(seq, &bytes, keep);
            }
            out.push(if expired {
                Delivery::Expired { from: seq, to: seq + count }
            } else {
                Delivery::Message { seq, bytes }
            });
        }
    }

    /// Handles the sender's heartbeat.
    pub fn on_heartbeat(&mut self, now: Instant, hb: &Heartbeat, limits: &StreamLimits, jitter: u64) -> Vec<Delivery> {
        let mut out = Vec::new();
        self.give_up_below(hb.low, &mut out);
        self.highest = self.highest.max(hb.next.min(self.next.saturating_add(limits.max_pending_chunks as u64)));
        if self.has_holes() {
            self.schedule_nack(now, limits, jitter);
            // The sender is alive and we still miss what we asked for: ask again soon (after a
            // random delay, for suppression), without back-off.
            let soon = now + self.suppression_delay(limits, jitter);
            if let Some(a) = self.asked.as_mut() {
                a.round = 0;
                if a.upto > self.next {
                    a.repeat_at = Some(a.repeat_at.map_or(soon, |t| t.min(soon)));
                }
            }
        } else {
            self.clear_asked();
            // Up to date: say so promptly so the sender can release and stop heartbeating.
            Self::schedule(&mut self.ack_due, now);
        }
        self.deliver(now, limits.parity_keep_bytes, &mut out);
        out
    }

    /// Another receiver NACKed ranges of the same stream: if they cover ours, wait for the repair.
    pub fn on_foreign_nack(&mut self, now: Instant, ack: &Ack, limits: &StreamLimits) {
        if self.asked.as_ref().and_then(|a| a.due()).is_none() {
            return;
        }
        let covered = self
            .missing()
            .iter()
            .all(|&(s, l)| ack.missing.iter().any(|&(os, ol)| os <= s && s + u64::from(l) <= os + u64::from(ol)));
        if covered {
            let wait = self.repair_wait(limits);
            let a = self.asked.as_mut().expect("checked");
            // As if we had asked: wait for the repair the other receiver asked for.
            if a.fresh_due.take().is_some() {
                a.upto = a.upto.max(a.limit);
            }
            a.repeat_at = Some(now + wait);
        }
    }

    /// Missing ranges at or above `next`, at most [`MAX_ACK_RANGES`].
    pub fn missing(&self) -> Vec<SeqRange> {
        self.missing_from(self.next, u64::MAX, MAX_ACK_RANGES)
    }

    /// Missing ranges in `from..to` (`from >= next`), at most `cap`.
    fn missing_from(&self, from: u64, to: u64, cap: usize) -> Vec<SeqRange> {
        let mut out = Vec::new();
        let end = self.highest.min(to);
        let mut at = from;
        for &seq in self.pending.range(from..).map(|(k, _)| k).chain(core::iter::once(&end)) {
            let seq = seq.min(end);
            if seq > at {
                let len = u32::try_from(seq - at).unwrap_or(u32::MAX);
                out.push((at, len));
                if out.len() == cap {
                    break;
                }
            }
            at = at.max(seq + 1);
            if at >= end {
                break;
            }
        }
        out
    }

    /// The ranges a NACK due now asks for, updating the timers; `None` if nothing is to be
    /// asked yet (fresh holes still within their reordering delay, repeats not yet overdue).
    fn nack_now(&mut self, now: Instant, limits: &StreamLimits) -> Option<Vec<SeqRange>> {
        let wait = self.repair_wait(limits);
        let reorder = self.reorder_delay(limits);
        let highest = self.highest;
        let a = self.asked.as_mut().expect("due");
        let repeat = a.repeat_at.is_some_and(|t| t <= now);
        let fresh = a.fresh_due.is_some_and(|t| t <= now);
        if fresh {
            // Everything seen by now: the delay since the first of these holes let reordered
            // chunks of the same burst arrive.
            a.limit = a.limit.max(highest);
        }
        let (upto, limit) = (a.upto, a.limit);
        let missing = match (repeat, fresh) {
            (true, true) => self.holes_in(self.next, limit.max(upto)),
            (true, false) => self.holes_in(self.next, upto),
            (false, true) => self.holes_in(upto, limit),
            (false, false) => Vec::new(),
        };
        // A truncated list covers holes only up to its last range; the rest are asked next.
        let covered = match missing.last() {
            Some(&(s, l)) if missing.len() == NACK_RANGES => s + u64::from(l),
            _ => u64::MAX,
        };
        let a = self.asked.as_mut().expect("due");
        if repeat {
            // Back off while no repair arrives, so a dead sender is not flooded; any new
            // chunk resets it (see `on_data`).
            a.round = (a.round + 1).min(6);
            a.repeat_at = Some(now + wait * (1 << (a.round - 1)));
        }
        if fresh {
            a.fresh_due = None;
            a.upto = a.upto.max(limit.min(covered));
            if a.repeat_at.is_none() {
                a.repeat_at = Some(now + wait);
            }
        }
        // Karn's rule: a number asked for twice gives no sample; a fresh one asked now may.
        let asked = |seq: u64| missing.iter().any(|&(s, l)| s <= seq && seq < s + u64::from(l));
        if a.probe.is_some_and(|(seq, _)| asked(seq)) {
            a.probe = None;
        }
        if fresh && a.probe.is_none() {
            a.probe = missing.iter().map(|&(s, _)| s).find(|&s| s >= upto).map(|s| (s, now));
        }
        // Holes beyond what was armed get their own reordering delay; holes left out of a
        // full list go at once.
        if a.fresh_due.is_none() && a.upto < a.limit {
            a.fresh_due = Some(now);
        } else if a.fresh_due.is_none() && highest > a.upto.max(a.limit) {
            a.limit = highest;
            a.fresh_due = Some(now + reorder);
        }
        let missing = self.discount_held(missing);
        (!missing.is_empty()).then_some(missing)
    }

    /// A NACK names, of each message or block this receiver holds repair symbols for, its holes
    /// minus those symbols (the highest holes are left out): the sender then sends what the
    /// neediest receiver still lacks (PROTOCOL.md §6.8, §6.9).
    #[cfg(feature = "parity")]
    fn discount_held(&self, missing: Vec<SeqRange>) -> Vec<SeqRange> {
        let Some(a) = self.asked.as_ref().filter(|a| !a.held.is_empty() || !a.blocks.is_empty()) else {
            return missing;
        };
        let asked = |seq: &u64| missing.iter().any(|&(s, l)| s <= *seq && *seq < s + u64::from(l));
        let mut left_out: Vec<u64> = Vec::new();
        let mut leave_out = |holes: Vec<u64>, symbols: &Symbols| {
            let n = symbols.credit().min(holes.len());
            left_out.extend_from_slice(&holes[holes.len() - n..]);
        };
        for (&first, r) in &a.held {
            let end = first + u64::from(r.len.div_ceil(u32::from(r.symbol)));
            leave_out((first..end).filter(asked).collect(), &r.symbols);
        }
        for (&first, b) in &a.blocks {
            let members = (0..REPAIR_BLOCK).filter(|i| b.members & (1 << i) != 0).map(|i| first + i);
            leave_out(members.filter(asked).collect(), &b.symbols);
        }
        left_out.sort_unstable();
        let mut out = Vec::with_capacity(missing.len() + left_out.len());
        for (s, l) in missing {
            let mut at = s;
            let end = s + u64::from(l);
            for &d in left_out.iter().filter(|&&d| s <= d && d < end) {
                if d > at {
                    out.push((at, (d - at) as u32));
                }
                at = d + 1;
            }
            if end > at {
                out.push((at, (end - at) as u32));
            }
        }
        out.truncate(NACK_RANGES);
        out
    }

    /// Without the codec nothing is held.
    #[cfg(not(feature = "parity"))]
    fn discount_held(&self, missing: Vec<SeqRange>) -> Vec<SeqRange> {
        missing
    }

    fn ack(&self, missing: Vec<SeqRange>) -> Ack {
        Ack { target: self.sender.as_u64(), stream: self.kind, epoch: self.epoch, next: self.next, missing }
    }

    /// Feedback to send now, if any.
    pub fn poll(&mut self, now: Instant, limits: &StreamLimits) -> Option<Feedback> {
        if let Some(ack) = self.asked.as_mut().and_then(|a| a.queued.pop()) {
            return Some(Feedback::Nack(ack));
        }
        if self.asked.as_ref().and_then(|a| a.due()).is_some_and(|t| t <= now) {
            if !self.has_holes() {
                self.clear_asked();
            } else if let Some(missing) = self.nack_now(now, limits) {
                self.ack_due = None;
                self.acked = self.next;
                let mut parts: Vec<Ack> = missing.chunks(MAX_ACK_RANGES).map(|r| self.ack(r.to_vec())).collect();
                let first = parts.remove(0);
                parts.reverse(); // popped in order
                if let Some(a) = self.asked.as_mut() {
                    a.queued = parts;
                }
                return Some(Feedback::Nack(first));
            }
        }
        if self.ack_due.is_some_and(|t| t <= now) {
            self.ack_due = None;
            self.acked = self.next;
            return Some(Feedback::Ack(self.ack(Vec::new())));
        }
        None
    }

    /// A plain acknowledgement of everything received so far, sent at once (before leaving).
    pub fn final_ack(&mut self) -> Ack {
        self.ack_due = None;
        self.clear_asked();
        self.ack(Vec::new())
    }

    /// When this stream wants [`poll`](Self::poll) next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        [self.ack_due, self.asked.as_ref().and_then(|a| a.due())].into_iter().flatten().min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{RecordIter, WireError};
    use alloc::vec;

    fn data(rec: &[u8]) -> (DataHeader, Vec<u8>) {
        match RecordIter::new(rec).next() {
            Some(Ok(Record::Data { header, chunk })) => (header, chunk.to_vec()),
            other => panic!("not data: {other:?}"),
        }
    }

    const A: NodeId = NodeId::from_u64(0xa);

    #[test]
    fn chunks_reassemble_in_order_despite_reordering_and_loss() {
        // A unicast stream: its repairs are the chunks themselves (multicast uses parity).
        let limits = StreamLimits::default();
        let mut tx = OutStream::new(1, 1);
        let mut ev = Vec::new();
        let t0 = Instant::ZERO;
        let msg: Vec<u8> = (0..2500u32).map(|i| i as u8).collect();
        let recs = tx.send(t0, 7, &msg, 1000, None, vec![A], &limits, &mut ev).unwrap();
        assert_eq!(recs.len(), 3);
        let small = tx.send(t0, 8, b"", 1000, None, vec![A], &limits, &mut ev).unwrap();
        let mut rx = InStream::new(NodeId::from_u64(1), 1, 1, 0);
        // deliver 2, 0 (1 lost), then the empty message
        let (h, c) = data(&recs[2]);
        assert!(rx.on_data(t0, &h, &c, &limits, 0).is_empty());
        let (h, c) = data(&recs[0]);
        assert!(rx.on_data(t0, &h, &c, &limits, 0).is_empty());
        let (h, c) = data(&small[0]);
        assert!(rx.on_data(t0, &h, &c, &limits, 0).is_empty());
        assert_eq!(rx.missing(), vec![(1, 1)]);
        let Some(Feedback::Nack(nack)) = rx.poll(t0 + limits.nack_delay, &limits) else { panic!("nack expected") };
        let mut rtt = None;
        assert!(tx.on_ack(t0, A, &nack, ParityUse::ALL, &mut rtt));
        let repairs = tx.poll(t0 + Duration::from_millis(1), limits.repair_wait, limits.heartbeat_max);
        assert_eq!(repairs.len(), 1);
        let (h, c) = data(&repairs[0]);
        assert_eq!(h.seq, 1);
        let got = rx.on_data(t0, &h, &c, &limits, 0);
        assert_eq!(got, vec![Delivery::Message { seq: 0, bytes: msg }, Delivery::Message { seq: 3, bytes: vec![] }]);
        // the ack completes both messages
        let Some(Feedback::Ack(ack)) = rx.poll(t0 + Duration::from_secs(1), &limits) else { panic!("ack expected") };
        assert_eq!(ack.next, 4);
        assert!(tx.on_ack(t0, A, &ack, ParityUse::ALL, &mut rtt));
        let done = tx.collect(t0, &[A], &limits);
        assert_eq!(done.iter().map(|c| (c.id, c.missing.len())).collect::<Vec<_>>(), vec![(7, 0), (8, 0)]);
        assert_eq!((tx.retained_bytes(), tx.retained_messages()), (0, 0));
    }

    #[test]
    fn retention_is_bounded_and_eviction_reports_gaps() {
        let limits = StreamLimits { max_retained_messages: 2, ..StreamLimits::default() };
        let mut tx = OutStream::new(0, 1);
        let mut ev = Vec::new();
        let t0 = Instant::ZERO;
        let mut recs = Vec::new();
        for id in 0..5 {
            recs.push(tx.send(t0, id, &[id as u8; 10], 100, None, vec![A], &limits, &mut ev).unwrap());
        }
        assert_eq!(tx.retained_messages(), 2);
        assert_eq!(
            ev.iter().map(|c| (c.id, c.failure)).collect::<Vec<_>>(),
            vec![(0, Some(Failure::Evicted)), (1, Some(Failure::Evicted)), (2, Some(Failure::Evicted))]
        );
        // a receiver that saw only the first message learns of the gap from the next chunk's `low`
        let mut rx = InStream::new(NodeId::from_u64(1), 0, 1, 0);
        let (h, c) = data(&recs[0][0]);
        assert_eq!(rx.on_data(t0, &h, &c, &limits, 0).len(), 1);
        let (h, c) = data(&recs[4][0]);
        let got = rx.on_data(t0, &h, &c, &limits, 0);
        assert_eq!(got[0], Delivery::Gap { from: 1, to: 3 });
        assert!(got.get(1).is_none());
        assert!(tx.send(t0, 9, &[0; 2 << 20], 1000, None, vec![], &limits, &mut ev).is_err());
    }

    #[test]
    fn an_expired_message_behind_a_live_one_is_reported_and_leaves_no_past_deadline() {
        // Found by fuzzing: the deadline of a message behind the front stayed in poll_timeout
        // although collect can only drop from the front, so a driver spun until the front left.
        let limits = StreamLimits::default();
        let mut tx = OutStream::new(1, 1);
        let mut ev = Vec::new();
        let t0 = Instant::ZERO;
        tx.send(t0, 1, b"long", 100, Some(Duration::from_secs(5)), vec![A], &limits, &mut ev).unwrap();
        tx.send(t0, 2, b"short", 100, Some(Duration::from_millis(100)), vec![A], &limits, &mut ev).unwrap();
        let t = t0 + Duration::from_millis(101);
        let done = tx.collect(t, &[A], &limits);
        assert_eq!(done.iter().map(|c| (c.id, c.failure)).collect::<Vec<_>>(), vec![(2, Some(Failure::Expired))]);
        tx.poll(t, limits.repair_wait, limits.heartbeat_max); // the heartbeat due moves on too
        assert!(tx.poll_timeout(&limits).is_some_and(|d| d > t), "{:?}", tx.poll_timeout(&limits));
        // It is not reported again when it finally leaves the queue.
        let later = tx.collect(t0 + Duration::from_secs(6), &[A], &limits);
        assert_eq!(later.iter().map(|c| c.id).collect::<Vec<_>>(), vec![1]);
    }

    #[test]
    fn ttl_expiry_drops_from_retention_and_delivery() {
        let limits = StreamLimits::default();
        let mut tx = OutStream::new(0, 1);
        let mut ev = Vec::new();
        let t0 = Instant::ZERO;
        let recs = tx.send(t0, 1, b"x", 100, Some(Duration::from_millis(50)), vec![A], &limits, &mut ev).unwrap();
        let done = tx.collect(t0 + Duration::from_millis(60), &[A], &limits);
        assert_eq!(done[0].failure, Some(Failure::Expired));
        assert_eq!(done[0].missing, vec![A]);
        let (h, c) = data(&recs[0]);
        assert_eq!(h.ttl_ms, 50);
        // a two-chunk message whose first chunk's lifetime ends before the second arrives
        let mut rx = InStream::new(NodeId::from_u64(1), 0, 1, 0);
        let first = DataHeader { count: 2, ..h };
        assert!(rx.on_data(t0, &first, &c, &limits, 0).is_empty());
        let second = DataHeader { seq: 1, index: 1, count: 2, ..h };
        let got = rx.on_data(t0 + Duration::from_millis(51), &second, &c, &limits, 0);
        assert_eq!(got, vec![Delivery::Expired { from: 0, to: 2 }]);
    }

    #[test]
    fn a_receiver_that_acknowledged_then_left_counts_as_delivered() {
        let limits = StreamLimits::default();
        let mut tx = OutStream::new(0, 1);
        let b = NodeId::from_u64(0xb);
        let t0 = Instant::ZERO;
        tx.send(t0, 1, b"m", 100, None, vec![A, b], &limits, &mut Vec::new()).unwrap();
        let ack = Ack { target: 1, stream: 0, epoch: 1, next: 1, missing: vec![] };
        assert!(tx.on_ack(t0, A, &ack, ParityUse::ALL, &mut None));
        tx.receiver_gone(A); // acknowledged, then left
        tx.receiver_gone(b); // left without acknowledging
        let done = tx.collect(t0, &[], &limits);
        assert_eq!(done, vec![Completion { id: 1, missing: vec![b], failure: Some(Failure::ReceiverGone) }]);
    }

    #[test]
    fn the_only_receiver_acknowledging_then_leaving_is_a_success_not_no_subscribers() {
        // Found with `starling sub --count 2`: the subscriber acknowledged the last message and
        // exited at once; its Leave emptied the waiting set and the publisher said "no subscriber".
        let limits = StreamLimits::default();
        let mut tx = OutStream::new(0, 1);
        let t0 = Instant::ZERO;
        tx.send(t0, 1, b"m", 100, None, vec![A], &limits, &mut Vec::new()).unwrap();
        tx.tag_last("t", None);
        let ack = Ack { target: 1, stream: 0, epoch: 1, next: 1, missing: vec![] };
        assert!(tx.on_ack(t0, A, &ack, ParityUse::ALL, &mut None));
        tx.receiver_gone(A);
        let done = tx.collect(t0, &[], &limits);
        assert_eq!(done, vec![Completion { id: 1, missing: vec![], failure: None }]);
        // Nobody at all is another matter.
        tx.send(t0, 2, b"m", 100, None, vec![], &limits, &mut Vec::new()).unwrap();
        tx.tag_last("t", None);
        let done = tx.collect(t0, &[], &limits);
        assert_eq!(done, vec![Completion { id: 2, missing: vec![], failure: Some(Failure::NoSubscribers) }]);
    }

    #[test]
    fn acks_for_unsent_sequence_numbers_are_refused() {
        let mut tx = OutStream::new(0, 1);
        let bogus = Ack { target: 1, stream: 0, epoch: 1, next: 5, missing: vec![] };
        assert!(!tx.on_ack(Instant::ZERO, A, &bogus, ParityUse::ALL, &mut None));
        let bogus = Ack { target: 1, stream: 0, epoch: 1, next: 0, missing: vec![(0, 9)] };
        assert!(!tx.on_ack(Instant::ZERO, A, &bogus, ParityUse::ALL, &mut None));
        let _ = WireError::Malformed;
    }

    #[test]
    fn heartbeat_reveals_tail_loss_and_backs_off() {
        let limits = StreamLimits::default();
        let mut tx = OutStream::new(0, 1);
        let mut ev = Vec::new();
        let t0 = Instant::ZERO;
        tx.send(t0, 1, b"lost", 100, None, vec![A], &limits, &mut ev).unwrap();
        let first = tx.poll_timeout(&limits).unwrap();
        assert_eq!(first, t0 + limits.heartbeat_min);
        let hb = tx.poll(first, limits.repair_wait, limits.heartbeat_max);
        let Some(Ok(Record::Heartbeat(hb))) = RecordIter::new(&hb[0]).next() else { panic!() };
        assert_eq!((hb.low, hb.next), (0, 1));
        // The short interval holds for a few unanswered heartbeats, then it doubles.
        let mut at = first;
        for k in 1..=u32::from(HEARTBEATS_BEFORE_BACKOFF) {
            let next = tx.poll_timeout(&limits).unwrap();
            assert_eq!(next, at + limits.heartbeat_min, "heartbeat {}", k + 1);
            at = next;
            assert_eq!(tx.poll(at, limits.repair_wait, limits.heartbeat_max).len(), 1);
        }
        assert_eq!(tx.poll_timeout(&limits).unwrap(), at + limits.heartbeat_min * 2);
        let mut rx = InStream::new(NodeId::from_u64(1), 0, 1, 0);
        rx.on_heartbeat(first, &hb, &limits, 999);
        assert_eq!(rx.missing(), vec![(0, 1)]);
        // After the reordering delay (1 ms before any round trip is measured) and the random one.
        let due = first + Duration::from_millis(1) + limits.nack_delay;
        assert!(matches!(rx.poll(due, &limits), Some(Feedback::Nack(_))));
    }

    #[test]
    fn a_full_receive_buffer_still_takes_the_repair_of_its_first_hole() {
        // Found by the loss sweep: chunks behind a lost one filled the byte budget, so the
        // repair of that one was refused every time and the stream never moved again.
        let limits = StreamLimits { max_pending_bytes: 4 * 100, ..StreamLimits::default() };
        let mut tx = OutStream::new(0, 1);
        let t0 = Instant::ZERO;
        let mut recs = tx.send(t0, 1, &[7u8; 300], 100, None, vec![A], &limits, &mut Vec::new()).unwrap();
        recs.extend(tx.send(t0, 2, &[8u8; 300], 100, None, vec![A], &limits, &mut Vec::new()).unwrap());
        let mut rx = InStream::new(NodeId::from_u64(1), 0, 1, 0);
        for r in &recs[1..] {
            let (h, c) = data(r);
            assert!(rx.on_data(t0, &h, &c, &limits, 0).is_empty());
        }
        assert!(rx.pending_bytes() <= limits.max_pending_bytes);
        let (h, c) = data(&recs[0]);
        let got = rx.on_data(t0, &h, &c, &limits, 0);
        assert_eq!(got, vec![Delivery::Message { seq: 0, bytes: vec![7u8; 300] }], "the repair got in");
        assert_eq!(rx.missing(), vec![(4, 2)], "what made room for it is asked for again");
        let (h4, c4) = data(&recs[4]);
        assert!(rx.on_data(t0, &h4, &c4, &limits, 0).is_empty());
        let (h5, c5) = data(&recs[5]);
        assert_eq!(rx.on_data(t0, &h5, &c5, &limits, 0), vec![Delivery::Message { seq: 3, bytes: vec![8u8; 300] }]);
    }

    #[test]
    fn foreign_nack_suppresses_ours() {
        let limits = StreamLimits::default();
        let mut rx = InStream::new(NodeId::from_u64(1), 0, 1, 0);
        let hb = Heartbeat { stream: 0, epoch: 1, low: 0, next: 3 };
        rx.on_heartbeat(Instant::ZERO, &hb, &limits, 999);
        let other = Ack { target: 1, stream: 0, epoch: 1, next: 0, missing: vec![(0, 3)] };
        rx.on_foreign_nack(Instant::ZERO, &other, &limits);
        assert_eq!(rx.poll(Instant::ZERO + limits.nack_delay, &limits), None, "held back");
        assert!(matches!(rx.poll(Instant::ZERO + limits.repair_wait, &limits), Some(Feedback::Nack(_))));
    }

    /// Parity repair (PROTOCOL.md §6.8): needs the codec.
    #[cfg(feature = "parity")]
    mod parity {
        use super::*;

        /// A second receiver: parity is used where receivers may lose different chunks.
        const B: NodeId = NodeId::from_u64(0xb2);

        #[test]
        fn a_block_of_small_messages_is_repaired_with_what_the_neediest_lacks() {
            // 16 one-chunk messages to three receivers that lose different ones (1, 2 and 3 of
            // them, one receiver before anything else of the block was delivered): 3 block symbols,
            // no chunk resent, and each receiver rebuilds its own holes from what it delivered.
            let limits = StreamLimits::default();
            let (b, c) = (NodeId::from_u64(0xb), NodeId::from_u64(0xc));
            let mut tx = OutStream::new(0, 1);
            let t0 = Instant::ZERO;
            let mut recs = Vec::new();
            let msgs: Vec<Vec<u8>> = (0..16u8).map(|i| vec![i; 40 + usize::from(i)]).collect();
            for (i, m) in msgs.iter().enumerate() {
                recs.extend(tx.send(t0, i as u64, m, 1000, None, vec![A, b, c], &limits, &mut Vec::new()).unwrap());
            }
            let losses: [&[usize]; 3] = [&[5], &[0, 9], &[3, 11, 14]];
            let mut rxs: Vec<InStream> = (0..3).map(|_| InStream::new(NodeId::from_u64(1), 0, 1, 0)).collect();
            let mut got: Vec<Vec<Delivery>> = Vec::new();
            for (rx, lost) in rxs.iter_mut().zip(losses) {
                got.push(feed(rx, t0, &recs, |i| lost.contains(&i)));
            }
            assert_eq!(got[0].len(), 5, "messages before the hole delivered (and kept)");
            let at = t0 + Duration::from_millis(20);
            for (rx, who) in rxs.iter_mut().zip([A, b, c]) {
                let nack = nack_of(rx, at);
                assert!(tx.on_ack(at, who, &nack, ParityUse::ALL, &mut None));
            }
            let out = tx.poll(at, Duration::from_millis(1), limits.heartbeat_max);
            let kinds: Vec<u8> = out.iter().map(|r| r[0]).filter(|&k| k != crate::wire::kind::HEARTBEAT).collect();
            assert_eq!(kinds, vec![crate::wire::kind::BLOCK_REPAIR; 3], "the neediest lacks 3; no chunk resent");
            for (k, rx) in rxs.iter_mut().enumerate() {
                got[k].extend(feed(rx, at, &out, |_| false));
                let seqs: Vec<u64> = got[k]
                    .iter()
                    .map(|d| match d {
                        Delivery::Message { seq, bytes } => {
                            assert_eq!(bytes, &msgs[*seq as usize]);
                            *seq
                        }
                        other => panic!("{other:?}"),
                    })
                    .collect();
                assert_eq!(seqs, (0..16).collect::<Vec<_>>(), "receiver {k}");
                assert_eq!(rx.pending_bytes(), 0, "copies and symbols freed once the block is behind");
            }
        }

        #[test]
        fn a_block_symbol_is_ignored_where_delivered_members_were_not_kept() {
            // A receiver that keeps no copies (a board's budget, 0) cannot rebuild a hole behind
            // delivered members: it ignores the symbol and asks for the chunk again.
            let limits = StreamLimits { parity_keep_bytes: 0, ..StreamLimits::default() };
            let mut tx = OutStream::new(0, 1);
            let t0 = Instant::ZERO;
            let mut recs = Vec::new();
            for i in 0..4u64 {
                recs.extend(tx.send(t0, i, &[i as u8; 50], 1000, None, vec![A, B], &limits, &mut Vec::new()).unwrap());
            }
            let mut rx = InStream::new(NodeId::from_u64(1), 0, 1, 0);
            for (i, r) in recs.iter().enumerate().filter(|(i, _)| *i != 2) {
                let (h, c) = data(r);
                rx.on_data(t0, &h, &c, &limits, i as u64);
            }
            let nack = Ack { target: 1, stream: 0, epoch: 1, next: 2, missing: vec![(2, 1)] };
            assert!(tx.on_ack(t0, A, &nack, ParityUse::ALL, &mut None));
            let out = tx.poll(t0, Duration::from_millis(1), limits.heartbeat_max);
            let Some(Ok(Record::BlockRepair { header, symbol })) = RecordIter::new(&out[0]).next() else { panic!() };
            assert_eq!(rx.on_block_repair(t0, &header, symbol, &limits, 0), Ok((vec![], 0)));
            assert_eq!(rx.missing(), vec![(2, 1)]);
        }

        #[test]
        fn one_receiver_gets_its_chunks_resent_not_parity() {
            let limits = StreamLimits::default();
            let mut tx = OutStream::new(0, 1);
            let t0 = Instant::ZERO;
            tx.send(t0, 1, &[1u8; 3000], 1000, None, vec![A], &limits, &mut Vec::new()).unwrap();
            let nack = Ack { target: 1, stream: 0, epoch: 1, next: 0, missing: vec![(1, 1)] };
            assert!(tx.on_ack(t0, A, &nack, ParityUse::ALL, &mut None));
            let out = tx.poll(t0, Duration::from_millis(1), limits.heartbeat_max);
            assert_eq!(out[0][0], crate::wire::kind::DATA);
        }

        fn repair(rec: &[u8]) -> (RepairHeader, Vec<u8>) {
            match RecordIter::new(rec).next() {
                Some(Ok(Record::Repair { header, symbol })) => (header, symbol.to_vec()),
                other => panic!("not a repair: {other:?}"),
            }
        }

        /// Feeds `recs` to `rx` except those `lose` picks; returns what was delivered.
        fn feed(rx: &mut InStream, now: Instant, recs: &[Vec<u8>], lose: impl Fn(usize) -> bool) -> Vec<Delivery> {
            let limits = StreamLimits::default();
            let mut out = Vec::new();
            for (i, r) in recs.iter().enumerate() {
                if lose(i) {
                    continue;
                }
                match RecordIter::new(r).next() {
                    Some(Ok(Record::Data { header, chunk })) => out.extend(rx.on_data(now, &header, chunk, &limits, 0)),
                    Some(Ok(Record::Repair { header, symbol })) => {
                        out.extend(rx.on_repair(now, &header, symbol, &limits, 0).expect("consistent").0)
                    }
                    Some(Ok(Record::Heartbeat(hb))) => out.extend(rx.on_heartbeat(now, &hb, &limits, 0)),
                    Some(Ok(Record::BlockRepair { header, symbol })) => {
                        out.extend(rx.on_block_repair(now, &header, symbol, &limits, 0).expect("consistent").0)
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
            out
        }

        fn nack_of(rx: &mut InStream, at: Instant) -> Ack {
            match rx.poll(at, &StreamLimits::default()) {
                Some(Feedback::Nack(a)) => a,
                other => panic!("NACK expected, got {other:?}"),
            }
        }

        #[test]
        fn parity_repairs_what_the_neediest_receiver_lacks_not_the_union() {
            // Three receivers of one 10-chunk message lose different chunks (1, 2 and 3 of them):
            // the sender answers their NACKs with 3 repair symbols, not the 6 chunks they lack.
            let limits = StreamLimits::default();
            let (b, c) = (NodeId::from_u64(0xb), NodeId::from_u64(0xc));
            let mut tx = OutStream::new(0, 1);
            let t0 = Instant::ZERO;
            let msg: Vec<u8> = (0..9500u32).map(|i| (i * 7) as u8).collect();
            let recs = tx.send(t0, 1, &msg, 1000, None, vec![A, b, c], &limits, &mut Vec::new()).unwrap();
            let losses: [&[usize]; 3] = [&[4], &[0, 9], &[2, 5, 7]];
            let mut rxs: Vec<InStream> = (0..3).map(|_| InStream::new(NodeId::from_u64(1), 0, 1, 0)).collect();
            for (rx, lost) in rxs.iter_mut().zip(losses) {
                assert!(feed(rx, t0, &recs, |i| lost.contains(&i)).is_empty());
            }
            // The last chunk lost at the second receiver shows only through the heartbeat.
            let hb = Heartbeat { stream: 0, epoch: 1, low: 0, next: 10 };
            rxs[1].on_heartbeat(t0, &hb, &limits, 0);
            let at = t0 + Duration::from_millis(20);
            for (rx, who) in rxs.iter_mut().zip([A, b, c]) {
                let nack = nack_of(rx, at);
                assert!(tx.on_ack(at, who, &nack, ParityUse::ALL, &mut None));
            }
            let out = tx.poll(at, Duration::from_millis(1), limits.heartbeat_max);
            let repairs: Vec<_> = out.iter().filter(|r| r[0] == crate::wire::kind::REPAIR).collect();
            assert_eq!(repairs.len(), 3, "the neediest lacks 3");
            assert!(out.iter().all(|r| r[0] != crate::wire::kind::DATA), "no chunk resent");
            let (h, _) = repair(repairs[0]);
            assert_eq!((h.first, h.len, h.symbol, h.chunks()), (0, 9500, 1000, 10));
            for rx in rxs.iter_mut() {
                let got = feed(rx, at, &out, |_| false);
                assert_eq!(got, vec![Delivery::Message { seq: 0, bytes: msg.clone() }]);
                assert_eq!(rx.pending_bytes(), 0, "symbols and chunks freed on delivery");
            }
        }

        #[test]
        fn a_receiver_asks_only_for_what_its_held_symbols_do_not_cover() {
            let limits = StreamLimits::default();
            let mut tx = OutStream::new(0, 1);
            let t0 = Instant::ZERO;
            let msg = vec![3u8; 5500];
            let recs = tx.send(t0, 1, &msg, 1000, None, vec![A, B], &limits, &mut Vec::new()).unwrap();
            let mut rx = InStream::new(NodeId::from_u64(1), 0, 1, 0);
            feed(&mut rx, t0, &recs, |i| [1, 2, 3].contains(&i));
            let at = t0 + Duration::from_millis(20);
            let nack = nack_of(&mut rx, at);
            assert_eq!(nack.missing, vec![(1, 3)]);
            assert!(tx.on_ack(at, A, &nack, ParityUse::ALL, &mut None));
            let out = tx.poll(at, Duration::from_millis(1), limits.heartbeat_max);
            assert_eq!(out.iter().filter(|r| r[0] == crate::wire::kind::REPAIR).count(), 3);
            // One of the three symbols arrives: two holes are left to ask for.
            let first = out.iter().position(|r| r[0] == crate::wire::kind::REPAIR).unwrap();
            feed(&mut rx, at, &out[first..=first], |_| false);
            let later = at + Duration::from_secs(1);
            let nack = nack_of(&mut rx, later);
            assert_eq!(nack.missing, vec![(1, 2)], "3 holes minus 1 symbol held");
            // The next round sends fresh symbols (new ids), which complete the message with the one held.
            assert!(tx.on_ack(later, A, &nack, ParityUse::ALL, &mut None));
            let out2 = tx.poll(later, Duration::from_millis(1), limits.heartbeat_max);
            let ids: Vec<u32> =
                out2.iter().filter(|r| r[0] == crate::wire::kind::REPAIR).map(|r| repair(r).0.esi).collect();
            assert_eq!(ids, vec![9, 10], "K = 6: ids 6, 7, 8 went in the first round");
            let got = feed(&mut rx, later, &out2, |_| false);
            assert_eq!(got, vec![Delivery::Message { seq: 0, bytes: msg }]);
        }

        #[test]
        fn nacks_within_a_round_trip_of_a_round_add_only_what_it_lacked() {
            let limits = StreamLimits::default();
            let b = NodeId::from_u64(0xb);
            let mut tx = OutStream::new(0, 1);
            let t0 = Instant::ZERO;
            tx.send(t0, 1, &[1u8; 8000], 1000, None, vec![A, b], &limits, &mut Vec::new()).unwrap();
            let nack = |ranges: Vec<SeqRange>| Ack { target: 1, stream: 0, epoch: 1, next: 0, missing: ranges };
            let holdoff = Duration::from_millis(1);
            assert!(tx.on_ack(t0, A, &nack(vec![(0, 2)]), ParityUse::ALL, &mut None));
            let out = tx.poll(t0, holdoff, limits.heartbeat_max);
            assert_eq!(out.iter().filter(|r| r[0] == crate::wire::kind::REPAIR).count(), 2);
            // B's NACK of 3 holes, sent before it saw that round: one more symbol.
            let t1 = t0 + Duration::from_millis(2);
            assert!(tx.on_ack(t1, b, &nack(vec![(3, 3)]), ParityUse::ALL, &mut None));
            let out = tx.poll(t1, holdoff, limits.heartbeat_max);
            assert_eq!(out.iter().filter(|r| r[0] == crate::wire::kind::REPAIR).count(), 1);
            // After the round trip a NACK is a new round.
            let t2 = t0 + Duration::from_millis(10);
            assert!(tx.on_ack(t2, b, &nack(vec![(3, 2)]), ParityUse::ALL, &mut None));
            let out = tx.poll(t2, holdoff, limits.heartbeat_max);
            assert_eq!(out.iter().filter(|r| r[0] == crate::wire::kind::REPAIR).count(), 2);
        }

        #[test]
        fn after_its_parity_rounds_a_message_is_repaired_with_its_chunks() {
            // A receiver that cannot use parity (an older version skips the record) still gets the
            // message: after MAX_PARITY_ROUNDS rounds the sender resends the chunks asked for.
            let limits = StreamLimits::default();
            let mut tx = OutStream::new(0, 1);
            let t0 = Instant::ZERO;
            tx.send(t0, 1, &[1u8; 3000], 1000, None, vec![A, B], &limits, &mut Vec::new()).unwrap();
            let nack = Ack { target: 1, stream: 0, epoch: 1, next: 0, missing: vec![(1, 1)] };
            for round in 0..=MAX_PARITY_ROUNDS {
                let at = t0 + Duration::from_millis(100) * u32::from(round);
                assert!(tx.on_ack(at, A, &nack, ParityUse::ALL, &mut None));
                let out = tx.poll(at, Duration::from_millis(1), limits.heartbeat_max);
                let first = out[0][0];
                let expect =
                    if round < MAX_PARITY_ROUNDS { crate::wire::kind::REPAIR } else { crate::wire::kind::DATA };
                assert_eq!(first, expect, "round {round}");
            }
        }

        #[test]
        fn a_receiver_without_parity_gets_the_chunks_beside_one_that_gets_symbols() {
            // A board built without the codec (its beacons say so) and a host NACK the same
            // message in one round: the host's holes are answered with symbols, the board's with
            // the chunks it named, and neither waits for the other.
            let limits = StreamLimits::default();
            let b = NodeId::from_u64(0xb);
            let mut tx = OutStream::new(0, 1);
            let t0 = Instant::ZERO;
            let msg = vec![9u8; 4000];
            let recs = tx.send(t0, 1, &msg, 1000, None, vec![A, b], &limits, &mut Vec::new()).unwrap();
            let nack = |ranges: Vec<SeqRange>| Ack { target: 1, stream: 0, epoch: 1, next: 0, missing: ranges };
            assert!(tx.on_ack(t0, A, &nack(vec![(0, 1), (2, 1)]), ParityUse::ALL, &mut None));
            assert!(tx.on_ack(t0, b, &nack(vec![(1, 1)]), ParityUse::NONE, &mut None));
            let out = tx.poll(t0, Duration::from_millis(1), limits.heartbeat_max);
            let kinds: Vec<u8> = out.iter().map(|r| r[0]).filter(|&k| k != crate::wire::kind::HEARTBEAT).collect();
            let repair = crate::wire::kind::REPAIR;
            assert_eq!(kinds, vec![repair, repair, crate::wire::kind::DATA], "two symbols for A, chunk 1 for B");
            let mut board = InStream::new(NodeId::from_u64(1), 0, 1, 0);
            feed(&mut board, t0, &recs, |i| i == 1);
            let data: Vec<Vec<u8>> = out.iter().filter(|r| r[0] == crate::wire::kind::DATA).cloned().collect();
            assert_eq!(feed(&mut board, t0, &data, |_| false), vec![Delivery::Message { seq: 0, bytes: msg }]);
        }

        #[test]
        fn a_repair_that_contradicts_the_chunks_held_is_refused_and_harms_nothing() {
            let limits = StreamLimits::default();
            let mut tx = OutStream::new(0, 1);
            let t0 = Instant::ZERO;
            let msg = vec![5u8; 2500];
            let recs = tx.send(t0, 1, &msg, 1000, None, vec![A, B], &limits, &mut Vec::new()).unwrap();
            let mut rx = InStream::new(NodeId::from_u64(1), 0, 1, 0);
            feed(&mut rx, t0, &recs, |i| i == 1);
            let bogus = RepairHeader { stream: 0, epoch: 1, first: 0, len: 2400, symbol: 800, esi: 3, ttl_ms: 0 };
            assert_eq!(rx.on_repair(t0, &bogus, &[0u8; 800], &limits, 0), Err(Inconsistent));
            assert_eq!(rx.missing(), vec![(1, 1)]);
            // A repair of a message already delivered, or beyond the window, changes nothing.
            let late = RepairHeader { first: u64::MAX - 5, len: 2000, symbol: 1000, esi: 2, ..bogus };
            assert_eq!(rx.on_repair(t0, &late, &[0u8; 1000], &limits, 0).map(|r| r.0), Ok(vec![]));
            assert_eq!(rx.pending_bytes(), 1500);
        }
    }
}
