//! Reliable and fragmented publications, subscription announcements and the stream plumbing
//! shared with RPC (PROTOCOL.md §6).

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use core::time::Duration;

use rand_core::RngCore;

use super::{Event, Lifecycle, Node, PeerStatus, PublishError, To};
use crate::reassembly::FragmentOutcome;
use crate::stream::{Completion, Delivery, Failure, Feedback, InStream, ParityUse, StreamLimits};
use crate::time::Instant;
use crate::topic::{Topic, TopicFilter};
use crate::wire::{
    kind, stream, Ack, BlockRepairHeader, DataHeader, FragmentHeader, Heartbeat, Inner, NodeId, Record, RepairHeader,
    FRAME_OVERHEAD,
};

/// Identifies one reliable publication, to match its [`Event::PublishDone`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PublishId(pub u64);

/// Why a reliable publication did not reach every subscriber it waited for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishFailure {
    /// Subscribers that did not acknowledge it.
    pub missing: Vec<NodeId>,
    /// Why the node stopped waiting.
    pub reason: Failure,
}

impl fmt::Display for PublishFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let why = match self.reason {
            Failure::Expired => "its time to live passed",
            Failure::Evicted => "it was evicted from the retention buffer",
            Failure::ReceiverGone => "subscribers went down",
            Failure::Reset => "the stream was reset",
            Failure::Unconfirmed => "they are nodes heard from but not identified in time, which may subscribe",
            Failure::NoSubscribers => return f.write_str(NO_SUBSCRIBERS),
        };
        write!(f, "not acknowledged by {} subscriber(s) (", self.missing.len())?;
        for (i, id) in self.missing.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{id}")?;
        }
        write!(f, "): {why}")
    }
}

impl core::error::Error for PublishFailure {}

/// What a reliable publication with nobody to wait for says (the core's failure and the
/// runtime's error alike).
pub(crate) const NO_SUBSCRIBERS: &str =
    "no subscriber: nothing was waited for (no node with a matching subscription is known)";

/// Bytes of a datagram left for a Data record's chunk: header and tag, record type and length,
/// and the largest possible Data header (PROTOCOL.md §6.2).
pub(super) const DATA_OVERHEAD: usize = FRAME_OVERHEAD + 3 + 41;
/// The same for a Fragment record.
const FRAGMENT_OVERHEAD: usize = FRAME_OVERHEAD + 3 + 15;
/// Shortest time between two repairs of one chunk (a receiver asks again no sooner than 1 ms);
/// four times this before any round trip is measured.
const MIN_HOLDOFF: Duration = Duration::from_micros(250);
/// Longest a reliable publication's verdict waits for peers the node heard from but has not
/// identified yet (unverified, or no beacon): one of them may be a subscriber it must wait for.
const IDENTIFY_WAIT: Duration = Duration::from_secs(3);
/// While a receiver that is alive (heard within its beacon interval) owes an ack, heartbeats are
/// at most this many heartbeat bases apart: its acks are being lost, not its presence.
const LIVE_HEARTBEAT_FACTOR: u32 = 8;
/// Announced filters larger than this are replaced by `#` (conservative: publishers then wait
/// for this node's acknowledgement of everything, which it sends anyway).
const MAX_ANNOUNCED_FILTER_BYTES: usize = 600;

impl Node {
    /// Publishes `payload` on `topic` reliably: it is retransmitted until every matching
    /// subscriber known now acknowledges it, delivered once and in order per publisher, and
    /// given up (reported as [`Event::Gap`] to subscribers) only when its `ttl` passes or the
    /// retention bounds force it out. [`Event::PublishDone`] reports the outcome.
    pub fn publish_reliable(
        &mut self,
        now: Instant,
        topic: &str,
        payload: &[u8],
        ttl: Option<Duration>,
    ) -> Result<PublishId, PublishError> {
        if self.lifecycle != Lifecycle::Running {
            return Err(PublishError::Closed);
        }
        let topic = Topic::new(topic).map_err(PublishError::InvalidTopic)?;
        if !self.may_publish_own(&topic) {
            return Err(PublishError::NotPermitted);
        }
        let max = self.config.max_message;
        if payload.len() > max {
            return Err(PublishError::TooLarge { size: payload.len(), max });
        }
        let waiting: Vec<NodeId> = self
            .peers
            .iter()
            .filter(|(id, p)| {
                p.status == PeerStatus::Up
                    && p.filters.iter().any(|f| f.matches(&topic))
                    && self.may_receive(**id, &topic)
            })
            .map(|(id, _)| *id)
            .collect();
        // Unique across restarts, like call ids.
        let id = PublishId((u64::from(self.epoch()) << 32) | u64::from(self.next_publish));
        self.next_publish = self.next_publish.wrapping_add(1);
        let inner = Inner::Publish { topic: topic.as_str(), payload }.encode();
        let seq = self.out_mcast.next_seq();
        let limits = self.config.streams;
        let mut evicted = Vec::new();
        let chunk = self.config.max_datagram - DATA_OVERHEAD;
        let records = self
            .out_mcast
            .send(now, id.0, &inner, chunk, ttl, waiting, &limits, &mut evicted)
            .map_err(|_| PublishError::TooLarge { size: payload.len(), max: limits.max_retained_bytes })?;
        for r in records {
            self.enqueue_bytes(To::Group, r);
        }
        // A node in its first second may not know every subscriber yet: those it learns before
        // then are waited for too, and no verdict (success or "no subscriber") comes sooner.
        let verdict_at = self.soliciting_until().filter(|&t| now < t);
        self.out_mcast.tag_last(topic.as_str(), verdict_at);
        self.report(evicted);
        let me = self.id();
        self.deliver(me, topic, payload, Some(seq));
        self.service_own_stream(now);
        self.update_timers();
        Ok(id)
    }

    /// Sends a best-effort message larger than one datagram as fragments.
    pub(super) fn publish_fragmented(&mut self, topic: Topic<'_>, payload: &[u8]) -> Result<(), PublishError> {
        let inner = Inner::Publish { topic: topic.as_str(), payload }.encode();
        let chunk = self.config.max_datagram - FRAGMENT_OVERHEAD;
        let count = inner.len().div_ceil(chunk);
        if self.queued_bytes + inner.len() + count * 24 > self.config.max_queued_bytes {
            return Err(PublishError::QueueFull);
        }
        let msg_id = self.next_fragmented;
        self.next_fragmented = self.next_fragmented.wrapping_add(1);
        for (index, part) in inner.chunks(chunk).enumerate() {
            let header = FragmentHeader { msg_id, index: index as u32, count: count as u32 };
            self.enqueue(To::Group, &Record::Fragment { header, chunk: part });
        }
        Ok(())
    }

    pub(super) fn subscriptions_record(&self) -> Record<'_> {
        let filters: Vec<&str> = self.subs.iter().map(|(_, f)| f.as_str()).collect();
        let size: usize = filters.iter().map(|f| f.len() + 2).sum();
        Record::Subscriptions(if size > MAX_ANNOUNCED_FILTER_BYTES { alloc::vec!["#"] } else { filters })
    }

    /// Tells the mesh this node's filters changed.
    pub(super) fn announce_subscriptions(&mut self) {
        let mut bytes = Vec::new();
        self.subscriptions_record().emit(&mut bytes);
        self.enqueue_bytes(To::Group, bytes);
    }

    pub(super) fn handle_subscriptions(&mut self, now: Instant, sender: NodeId, filters: &[&str]) {
        let max = self.config.max_subscriptions;
        if let Some(p) = self.peers.get_mut(&sender) {
            p.filters = filters.iter().filter_map(|f| TopicFilter::new(f).ok()).take(max).collect();
        }
        self.join_waiting(now, sender);
    }

    /// A peer that is up, with its filters known: unreported reliable publications it
    /// matches wait for it too (it may have been a subscriber all along that this node had not
    /// learnt yet, e.g. because beacons were lost).
    pub(super) fn join_waiting(&mut self, now: Instant, peer: NodeId) {
        let Some(p) = self.peers.get(&peer) else { return };
        if p.status != PeerStatus::Up || p.filters.is_empty() {
            return;
        }
        let matching: Vec<&str> = self
            .out_mcast
            .unreported_topics()
            .filter(|topic| {
                Topic::new(topic).is_ok_and(|t| p.filters.iter().any(|f| f.matches(&t)) && self.may_receive(peer, &t))
            })
            .collect();
        if matching.is_empty() {
            return;
        }
        let matching: Vec<String> = matching.into_iter().map(String::from).collect();
        self.out_mcast.add_receiver(now, peer, |topic| matching.iter().any(|m| m == topic));
    }

    pub(super) fn handle_fragment(&mut self, now: Instant, sender: NodeId, h: &FragmentHeader, chunk: &[u8]) {
        let evicted = self.reassembly.evicted();
        let outcome = self.reassembly.insert(now, sender, h.msg_id, h.index, h.count, chunk);
        self.stats.fragments_lost += self.reassembly.evicted() - evicted;
        match outcome {
            FragmentOutcome::Complete(bytes) => match Inner::parse(&bytes) {
                Ok(Inner::Publish { topic, payload }) => match Topic::new(topic) {
                    Ok(topic) => self.deliver(sender, topic, payload, None),
                    Err(_) => self.stats.malformed_messages += 1,
                },
                _ => self.stats.malformed_messages += 1,
            },
            FragmentOutcome::Pending | FragmentOutcome::Duplicate => {}
            FragmentOutcome::Rejected(_) => self.stats.drop_stream += 1,
        }
    }

    /// The receiving stream a record refers to, created when it starts a newer epoch.
    fn in_stream(&mut self, sender: NodeId, kind: u8, epoch: u32, start: u64) -> Option<&mut InStream> {
        let identity = self.security.is_identity();
        let p = self.peers.get_mut(&sender)?;
        if epoch < p.epoch {
            return None; // a late frame of an earlier incarnation
        }
        // Identity mode knows the peer's epoch from its authenticated handshake: no other epoch
        // opens a stream (PROTOCOL.md §11.2). PSK mode may learn it from the stream first.
        if identity && epoch != p.epoch {
            return None;
        }
        let slot = match kind {
            stream::MULTICAST => &mut p.in_mcast,
            stream::UNICAST => &mut p.in_ucast,
            _ => return None,
        };
        match slot {
            Some(s) if s.epoch() == epoch => {}
            Some(s) if epoch < s.epoch() => return None,
            _ => {
                let mut s = InStream::new(sender, kind, epoch, start);
                // Start repair timers from the round trip already measured to this peer.
                if let Some(rtt) = p.rtt.srtt() {
                    s.seed_srtt(rtt);
                }
                *slot = Some(s);
            }
        }
        slot.as_mut()
    }

    /// The stream limits for receiving from `sender`: its own bound, within what the node's
    /// other streams leave of the total (PROTOCOL.md §6.1), so many senders cannot add up past
    /// the node's memory.
    fn receive_limits(&self, sender: NodeId) -> StreamLimits {
        let mut limits = self.config.streams;
        let total: usize = self.peers.values().map(|p| pending_of(p)).sum();
        let own = self.peers.get(&sender).map_or(0, |p| pending_of(p));
        let left = self.config.max_pending_total.saturating_sub(total - own);
        limits.max_pending_bytes = limits.max_pending_bytes.min(left);
        limits
    }

    pub(super) fn handle_repair(&mut self, now: Instant, sender: NodeId, h: &RepairHeader, symbol: &[u8]) {
        #[cfg(not(feature = "parity"))]
        {
            // Built without the codec (and its beacons say so): skipped like an unknown record.
            let _ = (now, sender, h, symbol);
            self.stats.unknown_records += 1;
        }
        #[cfg(feature = "parity")]
        self.with_repaired_stream(now, sender, h.epoch, |s, limits, jitter| {
            s.on_repair(now, h, symbol, limits, jitter)
        });
    }

    pub(super) fn handle_block_repair(&mut self, now: Instant, sender: NodeId, h: &BlockRepairHeader, symbol: &[u8]) {
        #[cfg(not(feature = "parity"))]
        {
            let _ = (now, sender, h, symbol);
            self.stats.unknown_records += 1;
        }
        #[cfg(feature = "parity")]
        self.with_repaired_stream(now, sender, h.epoch, |s, limits, jitter| {
            s.on_block_repair(now, h, symbol, limits, jitter)
        });
    }

    /// Hands a repair symbol to `sender`'s multicast stream of `epoch`. A repair never starts a
    /// stream (it carries no `low`, and a receiver starts at the sender's oldest retained
    /// message): the Data or Heartbeat that does comes soon.
    #[cfg(feature = "parity")]
    fn with_repaired_stream(
        &mut self,
        now: Instant,
        sender: NodeId,
        epoch: u32,
        repair: impl FnOnce(&mut InStream, &StreamLimits, u64) -> Result<(Vec<Delivery>, u32), crate::stream::Inconsistent>,
    ) {
        let limits = self.receive_limits(sender);
        let jitter = self.rng.next_u64();
        let Some(p) = self.peers.get_mut(&sender) else { return };
        if epoch < p.epoch {
            self.stats.drop_stream += 1;
            return;
        }
        let Some(s) = p.in_mcast.as_mut().filter(|s| s.epoch() == epoch) else { return };
        match repair(s, &limits, jitter) {
            Ok((deliveries, rebuilt)) => {
                self.stats.rebuilt_chunks += u64::from(rebuilt);
                self.handle_deliveries(now, sender, stream::MULTICAST, deliveries);
            }
            Err(_) => self.stats.drop_stream += 1,
        }
    }

    pub(super) fn handle_data(&mut self, now: Instant, sender: NodeId, h: &DataHeader, chunk: &[u8]) {
        let limits = self.receive_limits(sender);
        let jitter = self.rng.next_u64();
        // A new receiver starts at the oldest message the sender still retains: if the sender
        // waits for it, nothing it was meant to get can be skipped silently.
        let Some(s) = self.in_stream(sender, h.stream, h.epoch, h.low) else {
            self.stats.drop_stream += 1;
            return;
        };
        let deliveries = s.on_data(now, h, chunk, &limits, jitter);
        self.handle_deliveries(now, sender, h.stream, deliveries);
    }

    pub(super) fn handle_heartbeat(&mut self, now: Instant, sender: NodeId, hb: &Heartbeat) {
        let limits = self.config.streams;
        let jitter = self.rng.next_u64();
        let Some(s) = self.in_stream(sender, hb.stream, hb.epoch, hb.low) else {
            self.stats.drop_stream += 1;
            return;
        };
        let deliveries = s.on_heartbeat(now, hb, &limits, jitter);
        self.handle_deliveries(now, sender, hb.stream, deliveries);
    }

    fn handle_deliveries(&mut self, now: Instant, sender: NodeId, kind: u8, deliveries: Vec<Delivery>) {
        for d in deliveries {
            match d {
                Delivery::Message { seq, bytes } => match Inner::parse(&bytes) {
                    Ok(Inner::Publish { topic, payload }) => match Topic::new(topic) {
                        Ok(topic) => self.deliver(sender, topic, payload, Some(seq)),
                        Err(_) => self.stats.malformed_messages += 1,
                    },
                    Ok(Inner::Request { call_id, to_epoch, method, payload }) if kind == stream::UNICAST => {
                        self.handle_request(now, sender, call_id, to_epoch, method, payload)
                    }
                    Ok(Inner::Response { call_id, status, payload }) if kind == stream::UNICAST => {
                        self.handle_response(sender, call_id, status, payload)
                    }
                    _ => self.stats.malformed_messages += 1,
                },
                Delivery::Gap { from, to } => {
                    self.stats.gaps = self.stats.gaps.saturating_add(to - from);
                    if kind == stream::MULTICAST {
                        self.push_event(Event::Gap { from: sender, first: from, end: to });
                    }
                }
                Delivery::Expired { from, to } => {
                    // Its time to live passed before it was complete: lost, and said so.
                    self.stats.expired += 1;
                    if kind == stream::MULTICAST {
                        self.push_event(Event::Gap { from: sender, first: from, end: to });
                    }
                }
            }
        }
    }

    /// An Ack from `sender`. `vouched` is false for one that came under a key other members
    /// hold too (identity mode's discovery key): it may ask for repairs, but acknowledges
    /// nothing, so no member can make a publication succeed in another member's name.
    pub(super) fn handle_ack(&mut self, now: Instant, sender: NodeId, ack: &Ack, vouched: bool) {
        let limits = self.config.streams;
        let unvouched;
        let ack = if vouched {
            ack
        } else {
            unvouched = Ack { next: 0, ..ack.clone() };
            &unvouched
        };
        if ack.target != self.id().as_u64() {
            // Another receiver's NACK of a stream we receive too: hold ours back.
            if ack.stream == stream::MULTICAST && !ack.missing.is_empty() {
                let target = NodeId::from_u64(ack.target);
                if let Some(s) = self.peers.get_mut(&target).and_then(|p| p.in_mcast.as_mut()) {
                    if s.epoch() == ack.epoch {
                        s.on_foreign_nack(now, ack, &limits);
                    }
                }
            }
            return;
        }
        let mut sample = None;
        // A receiver whose beacons say it uses repair symbols gets them (PROTOCOL.md §6.8, §6.9).
        let parity = self.peers.get(&sender).map_or(ParityUse::NONE, |p| p.parity);
        let accepted = match ack.stream {
            stream::MULTICAST if ack.epoch == self.epoch() => {
                self.out_mcast.on_ack(now, sender, ack, parity, &mut sample)
            }
            stream::UNICAST if ack.epoch == self.epoch() => match self.peers.get_mut(&sender) {
                Some(p) => {
                    p.out_ucast.as_mut().is_some_and(|s| s.on_ack(now, sender, ack, ParityUse::NONE, &mut sample))
                }
                None => false,
            },
            _ => false,
        };
        if !accepted {
            self.stats.drop_stream += 1;
        }
        if let (Some(rtt), Some(p)) = (sample, self.peers.get_mut(&sender)) {
            p.rtt.on_sample(rtt);
        }
    }

    /// Sends what streams want sent and reports finished publications. `only` limits the
    /// per-peer work to one peer (the sender of the datagram just handled).
    pub(super) fn service(&mut self, now: Instant, only: Option<NodeId>) {
        self.service_own_stream(now);
        let limits = self.config.streams;
        let ids: Vec<NodeId> = match only {
            Some(id) => alloc::vec![id],
            None => self.peers.keys().copied().collect(),
        };
        let mut out: Vec<(To, Vec<u8>)> = Vec::new();
        for id in ids {
            let Some(p) = self.peers.get_mut(&id) else { continue };
            let to = To::Peer(id);
            for (s, kind) in [(&mut p.in_mcast, stream::MULTICAST), (&mut p.in_ucast, stream::UNICAST)] {
                let Some(s) = s.as_mut() else { continue };
                while let Some(fb) = s.poll(now, &limits) {
                    let (dest, ack) = match fb {
                        Feedback::Nack(a) if kind == stream::MULTICAST => (To::Group, a),
                        Feedback::Nack(a) | Feedback::Ack(a) => (to, a),
                    };
                    let mut bytes = Vec::new();
                    Record::Ack(ack).emit(&mut bytes);
                    out.push((dest, bytes));
                }
            }
            if let Some(s) = p.out_ucast.as_mut() {
                // One receiver: no NACKs of others to merge, only one that crossed its repair.
                let holdoff = p.rtt.srtt().map_or(MIN_HOLDOFF * 4, |r| (r / 4).clamp(MIN_HOLDOFF, MIN_HOLDOFF * 4));
                s.set_heartbeat_base(p.rtt.rto().min(limits.heartbeat_min));
                for r in s.poll(now, holdoff, p.rtt.rto()) {
                    if r.first() == Some(&kind::DATA) {
                        self.stats.retransmissions += 1;
                        self.stats.repair_bytes += r.len() as u64;
                    } else {
                        p.rtt.on_timeout();
                    }
                    out.push((to, r));
                }
                // The calls and responses keep their own deadlines; this only releases memory.
                let _ = s.collect(now, &[id], &limits);
            }
        }
        for (dest, bytes) in out {
            self.enqueue_bytes(dest, bytes);
        }
    }

    /// Sends what this node's multicast stream wants sent (repairs, heartbeat) and reports
    /// finished reliable publications.
    pub(super) fn service_own_stream(&mut self, now: Instant) {
        let limits = self.config.streams;
        let mut holdoff = limits.repair_wait / 2;
        let mut heartbeat_cap = limits.heartbeat_max;
        // Timing and verdict holds matter only while something is retained (this runs for
        // every datagram; an idle publisher skips the walks over its peers).
        if self.out_mcast.retained_messages() > 0 {
            let (h, heartbeat) = self.multicast_timing();
            holdoff = h;
            self.out_mcast.set_heartbeat_base(heartbeat);
            let unidentified: Vec<NodeId> =
                self.peers.iter().filter(|(_, p)| p.status == PeerStatus::Unannounced).map(|(id, _)| *id).collect();
            self.out_mcast.hold_verdicts(&unidentified, IDENTIFY_WAIT);
            // A receiver that still owes an ack but was heard within its beacon interval is
            // alive: its acks are being lost, so keep asking often (at most 8 heartbeat bases
            // apart); only receivers gone quiet are probed at the slow, doubling pace.
            let alive = |id: &NodeId| {
                self.peers.get(id).is_some_and(|p| now.saturating_duration_since(p.last_heard) < p.interval)
            };
            if self.out_mcast.owing().any(|id| alive(&id)) {
                heartbeat_cap = heartbeat_cap.min(heartbeat * LIVE_HEARTBEAT_FACTOR);
            }
        }
        let records = self.out_mcast.poll(now, holdoff, heartbeat_cap);
        for r in records {
            if r.first() == Some(&kind::DATA) {
                self.stats.retransmissions += 1;
                self.stats.repair_bytes += r.len() as u64;
            } else if r.first() == Some(&kind::REPAIR) || r.first() == Some(&kind::BLOCK_REPAIR) {
                self.stats.retransmissions += 1;
                self.stats.repair_symbols += 1;
                self.stats.repair_bytes += r.len() as u64;
            }
            self.enqueue_bytes(To::Group, r);
        }
        let live: Vec<NodeId> =
            self.peers.iter().filter(|(_, p)| p.status == PeerStatus::Up).map(|(id, _)| *id).collect();
        let done = self.out_mcast.collect(now, &live, &limits);
        self.report(done);
    }

    /// Repair hold-off and first heartbeat interval of the multicast stream, from the round
    /// trips measured to the receivers that are up: a repair is resent at most once per quarter
    /// of the slowest round trip (NACKs of several receivers for one chunk arrive within that
    /// spread; each asks again no sooner than two round trips), and the heartbeat follows the
    /// slowest retransmission timeout. Before any measurement: 1 ms and the configured 40 ms.
    fn multicast_timing(&self) -> (Duration, Duration) {
        let limits = &self.config.streams;
        let up = || self.peers.values().filter(|p| p.status == PeerStatus::Up && p.rtt.srtt().is_some());
        let srtt = up().filter_map(|p| p.rtt.srtt()).max();
        let rto = up().map(|p| p.rtt.rto()).max();
        let holdoff = srtt.map_or(MIN_HOLDOFF * 4, |r| (r / 4).max(MIN_HOLDOFF)).min(limits.repair_wait / 2);
        let heartbeat = rto.map_or(limits.heartbeat_min, |r| r.min(limits.heartbeat_min));
        (holdoff, heartbeat)
    }

    fn report(&mut self, done: Vec<Completion>) {
        for c in done {
            let result = match c.failure {
                None if c.missing.is_empty() => Ok(()),
                reason => Err(PublishFailure { missing: c.missing, reason: reason.unwrap_or(Failure::ReceiverGone) }),
            };
            self.push_event(Event::PublishDone { id: PublishId(c.id), result });
        }
    }

    /// The earliest deadline of streams, calls, reassembly and the response cache.
    pub(super) fn messaging_timeout(&self) -> Option<Instant> {
        let limits = &self.config.streams;
        let peers = self.peers.values().flat_map(|p| {
            [
                p.in_mcast.as_ref().and_then(InStream::poll_timeout),
                p.in_ucast.as_ref().and_then(InStream::poll_timeout),
                p.out_ucast.as_ref().and_then(|s| s.poll_timeout(limits)),
            ]
        });
        let calls = self.calls.values().map(|c| c.deadline);
        [
            self.out_mcast.poll_timeout(limits),
            self.reassembly.next_expiry(),
            self.cache.next_expiry(),
            self.challenge_timeout(),
        ]
        .into_iter()
        .chain(peers)
        .flatten()
        .chain(calls)
        .min()
    }

    /// Queues an already encoded record. Stream records are bounded by the stream limits, so
    /// they bypass the send-queue bound that protects against best-effort floods.
    pub(super) fn enqueue_bytes(&mut self, to: To, record: Vec<u8>) {
        self.queued_bytes += record.len();
        self.queue.push_back(super::Queued { to, record });
    }

    /// Bytes and messages this node retains for repair of its reliable publications.
    pub fn retained(&self) -> (usize, usize) {
        (self.out_mcast.retained_bytes(), self.out_mcast.retained_messages())
    }

    /// Bytes buffered out of order from `peer`'s streams (for bounds checks and statistics).
    pub fn pending_from(&self, peer: NodeId) -> usize {
        self.peers.get(&peer).map_or(0, |p| pending_of(p))
    }

    /// Bytes buffered out of order over every peer's streams (at most `max_pending_total`).
    pub fn pending_total(&self) -> usize {
        self.peers.values().map(|p| pending_of(p)).sum()
    }
}

/// Bytes buffered out of order from one peer's streams.
fn pending_of(p: &super::Peer) -> usize {
    p.in_mcast.as_ref().map_or(0, InStream::pending_bytes) + p.in_ucast.as_ref().map_or(0, InStream::pending_bytes)
}
