//! Identity mode inside the node (PROTOCOL.md §11): announcements, Noise IK sessions with every
//! allowlisted peer, per-sender multicast keys handed out over those sessions, authorization,
//! revocation, and handshake rate limiting with cookies.
//!
//! Everything above the frame layer (streams, RPC, discovery events) is shared with PSK mode:
//! this file only decides which key seals or opens a frame and who may do what.

use alloc::boxed::Box;
use alloc::collections::{BTreeMap, VecDeque};
use alloc::vec::Vec;
use core::net::SocketAddr;
use core::time::Duration;

use rand_core::RngCore;

use super::{Destination, Event, Node, PeerStatus, Sealer, To, Transmit};
use crate::config::{Config, ConfigError};
use crate::crypto::SenderKey;
use crate::identity::{Allowlist, AllowlistError, Identity, Permissions, PublicKey};
use crate::noise::{self, Initiator, Responder, SessionKeys, COOKIE_LEN, MAC_LEN};
use crate::replay::AgedWindow;
use crate::state::Boot;
use crate::time::Instant;
use crate::topic::Topic;
use crate::wire::identity::{Announce, CookieReply, HandshakeInit, HandshakeResp, MSG1_PAYLOAD_LEN as MSG1_PAYLOAD};
use crate::wire::{
    self, Header, KeyClass, NodeId, Record, HEADER_LEN, SUITE_ANNOUNCE, SUITE_COOKIE, SUITE_HS_INIT, SUITE_HS_RESP,
    SUITE_MULTICAST, SUITE_PSK, SUITE_UNICAST, TAG_LEN,
};

/// Answers to handshakes under way that failed to open, per try, before further ones are ignored
/// (each costs two Diffie-Hellman operations and a restart of the handshake).
const MAX_BAD_RESPONSES: u8 = 4;
/// Tags of discovery keys have the high bit set; data keys' tags have it clear.
const DISCOVERY_TAG: u8 = 0x80;
/// A group key in a handshake payload: tag, key, floor.
const GROUP_KEY_LEN: usize = wire::identity::PAYLOAD_KEY_LEN;
/// A cookie is trusted this long (WireGuard: 2 minutes), and the secret behind it rotates as often.
const COOKIE_LIFETIME: Duration = Duration::from_secs(120);
/// Handshakes per second one source address gets while the node is under load.
const PER_ADDRESS_RATE: u64 = 5;
/// Source addresses tracked for rate limiting.
const MAX_TRACKED_ADDRESSES: usize = 1024;
/// Least time between two key requests to one peer.
const KEY_REQUEST_GAP: Duration = Duration::from_millis(500);
/// Unanswered handshakes are given up after this many tries (the next announce starts again).
const MAX_HANDSHAKE_TRIES: u32 = 8;
/// A new multicast key is handed out this long before it is used, so receivers have it.
const GROUP_KEY_LEAD: Duration = Duration::from_secs(1);

/// A token bucket in thousandths of a token: `rate` per second, bursts of one second's worth.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    milli: u64,
    at: Instant,
}

impl Bucket {
    fn full(rate: u64, now: Instant) -> Self {
        Bucket { milli: rate * 1000, at: now }
    }

    fn take(&mut self, rate: u64, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_micros() as u64;
        self.milli = (self.milli + elapsed.saturating_mul(rate) / 1000).min(rate * 1000);
        self.at = now;
        if self.milli >= 1000 {
            self.milli -= 1000;
            true
        } else {
            false
        }
    }
}

/// One of this node's own multicast keys.
#[derive(Clone)]
struct OwnGroupKey {
    tag: u8,
    raw: [u8; 32],
    key: SenderKey,
}

/// This node's two multicast keys: discovery (beacons, subscriptions, acks), handed to every
/// member; data (publications), handed only to members allowed to read them.
#[derive(Clone)]
struct OwnKeys {
    disc: OwnGroupKey,
    data: OwnGroupKey,
}

/// Records that carry publications (or their stream's state) travel under the data key.
fn is_data_record(kind: u8) -> bool {
    use crate::wire::kind::{DATA, FRAGMENT, HEARTBEAT, PUBLISH};
    matches!(kind, PUBLISH | DATA | HEARTBEAT | FRAGMENT)
}

/// One pairwise session.
struct Session {
    tag: u8,
    send: SenderKey,
    recv: SenderKey,
    replay: AgedWindow,
    created: Instant,
    sent: u64,
    initiator: bool,
    /// The peer's epoch this session's handshake carried: it becomes the peer's epoch only once
    /// the session is established (initiator) or confirmed (responder), never from a message 1
    /// that may be replayed.
    peer_epoch: u32,
}

impl Session {
    fn new(keys: &SessionKeys, now: Instant, initiator: bool, peer_epoch: u32) -> Self {
        Session {
            tag: keys.hash[0],
            send: SenderKey::from_raw(keys.send),
            recv: SenderKey::from_raw(keys.recv),
            replay: AgedWindow::new(),
            created: now,
            sent: 0,
            initiator,
            peer_epoch,
        }
    }
}

/// A peer's multicast key, as handed to this node.
struct RxGroup {
    tag: u8,
    key: SenderKey,
    floor: u64,
    replay: AgedWindow,
}

/// A handshake this node started. Every try sends a new message 1 (new ephemeral key, higher
/// counter), so a responder can refuse replays of old ones.
struct Handshake {
    init: Initiator,
    mac1: [u8; MAC_LEN],
    msg: Vec<u8>,
    tries: u32,
    next_at: Instant,
    /// Answers of this try that failed to open (forged, or for an earlier try).
    bad_responses: u8,
    /// Where its latest message 1 went.
    to: SocketAddr,
}

/// Which of a peer's sessions a frame opened under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Current,
    Pending(usize),
    Previous,
}

/// Sessions a responder holds unconfirmed for one peer (its newest answers).
const MAX_PENDING: usize = 3;

/// What identity mode knows of one allowlisted peer.
struct IdPeer {
    key: PublicKey,
    /// Where to reach it: the address its session proved, or before any session, where its
    /// announce came from.
    addr: SocketAddr,
    /// Whether `addr` was proven by a session (an authenticated frame or handshake answer):
    /// unauthenticated frames never replace a proven address.
    proven: bool,
    /// Where its latest Announce came from, when that differs from a proven `addr` (it may have
    /// restarted elsewhere, or the Announce is forged): handshakes go there, sessions do not.
    announced: Option<SocketAddr>,
    /// Handshake messages 1 this node may still send to an unproven address: one per Announce
    /// heard from it, so a forged Announce reflects at most one message, smaller than itself.
    credit: u32,
    /// The (epoch, counter) of the latest message 1 it sent that this node processed: older
    /// ones of the same epoch are replays.
    last_init: Option<(u32, u64)>,
    /// Its epoch as of the last completed handshake (0 before).
    epoch: u32,
    /// Sessions are boxed: most peers have one, and a small entry keeps a device's heap small.
    current: Option<Box<Session>>,
    /// The session before the current one, kept until the peer is heard under the new one.
    previous: Option<Box<Session>>,
    /// Responder side: sessions waiting for the initiator's first frame (their confirmation),
    /// the [`MAX_PENDING`] newest: answers to the initiator's latest tries, which it may confirm
    /// (a round trip can be longer than its retry wait), and room beside them for a replayed
    /// message 1 of an earlier incarnation, which can then displace nothing genuine.
    pending: Vec<Session>,
    /// Boxed: a handshake under way is large and rare.
    handshake: Option<Box<Handshake>>,
    cookie: Option<([u8; COOKIE_LEN], Instant)>,
    /// Its multicast keys: the newest first.
    /// Its multicast keys: at most two of each class (current and previous).
    groups: Vec<RxGroup>,
    last_key_request: Option<Instant>,
}

impl IdPeer {
    fn new(key: PublicKey, addr: SocketAddr) -> Self {
        IdPeer {
            key,
            addr,
            proven: false,
            announced: None,
            credit: 0,
            last_init: None,
            epoch: 0,
            current: None,
            previous: None,
            pending: Vec::new(),
            handshake: None,
            cookie: None,
            groups: Vec::new(),
            last_key_request: None,
        }
    }

    fn session_mut(&mut self, tag: u8) -> Option<(&mut Session, Slot)> {
        if self.current.as_ref().is_some_and(|s| s.tag == tag) {
            return self.current.as_deref_mut().map(|s| (s, Slot::Current));
        }
        if let Some(i) = self.pending.iter().position(|s| s.tag == tag) {
            return Some((&mut self.pending[i], Slot::Pending(i)));
        }
        self.previous.as_deref_mut().filter(|s| s.tag == tag).map(|s| (s, Slot::Previous))
    }

    fn tag_in_use(&self, tag: u8) -> bool {
        [&self.current, &self.previous].into_iter().flatten().any(|s| s.tag == tag)
    }

    fn install(&mut self, s: Box<Session>) {
        self.previous = self.current.take();
        self.current = Some(s);
    }

    /// Holds a session this node answered, until it is confirmed.
    fn add_pending(&mut self, s: Session) {
        // The oldest goes: the initiator may confirm the answer to its previous try as well as to
        // its latest, and a replayed message 1 cannot displace the newest answers.
        if self.pending.len() >= MAX_PENDING {
            self.pending.remove(0);
        }
        // Exactly what is held: a session is a few hundred bytes, and a board holds many peers.
        self.pending.reserve_exact(1);
        self.pending.push(s);
    }
}

/// Identity mode's state inside a [`Node`].
pub(super) struct IdentityState {
    me: Identity,
    list: Allowlist,
    net_tag: u8,
    prologue: Vec<u8>,
    group: OwnKeys,
    /// New multicast keys already handed out, used from the instant given.
    next_group: Option<(OwnKeys, Instant)>,
    /// The current keys replaced the older ones at once (a revocation): say so when handing them.
    group_replaces: bool,
    group_rotate_at: Instant,
    /// Boxed entries: B-tree nodes hold 11 slots, so inline entries would reserve room for
    /// peers that do not exist (on a microcontroller that was most of the heap).
    peers: BTreeMap<NodeId, Box<IdPeer>>,
    cookie_secret: [u8; 32],
    old_cookie_secret: [u8; 32],
    cookie_rotate_at: Instant,
    bucket: Bucket,
    addr_buckets: BTreeMap<SocketAddr, Bucket>,
    /// Unsealed frames to send (announces, handshakes, cookies), ahead of sealed ones.
    raw: VecDeque<(Destination, Vec<u8>)>,
}

fn random32(rng: &mut impl RngCore) -> [u8; 32] {
    let mut b = [0u8; 32];
    rng.fill_bytes(&mut b);
    b
}

/// A new key of `class`. Tags count up from a random start, so the last 127 keys of a class all
/// have different tags and a receiver never mistakes a new key for one it still holds.
fn new_group_key(rng: &mut impl RngCore, class: u8, previous: Option<u8>) -> OwnGroupKey {
    let raw = random32(rng);
    let start = previous.unwrap_or((rng.next_u32() & 0x7f) as u8).wrapping_add(1);
    OwnGroupKey { tag: class | (start & 0x7f), raw, key: SenderKey::from_raw(raw) }
}

fn new_keys(rng: &mut impl RngCore, old: Option<&OwnKeys>) -> OwnKeys {
    OwnKeys {
        disc: new_group_key(rng, DISCOVERY_TAG, old.map(|k| k.disc.tag)),
        data: new_group_key(rng, 0, old.map(|k| k.data.tag)),
    }
}

fn push_key(payload: &mut Vec<u8>, g: &OwnGroupKey, floor: u64) {
    payload.push(g.tag);
    payload.extend_from_slice(&g.raw);
    payload.extend_from_slice(&floor.to_be_bytes());
}

impl Node {
    /// Creates a node in identity mode: `identity` is this device's key pair, `allowlist` the
    /// network's members. The boot's node id must be the one derived from the identity's public
    /// key ([`Identity::node_id`]), and that key must be on the allowlist.
    pub fn new_identity(
        config: Config,
        identity: Identity,
        allowlist: Allowlist,
        boot: Boot,
        now: Instant,
    ) -> Result<Node, ConfigError> {
        if boot.node_id != identity.node_id() {
            return Err(ConfigError {
                field: "boot.node_id",
                problem: "in identity mode the node id is derived from the public key: use Identity::node_id()",
            });
        }
        allowlist.validate().map_err(|e| ConfigError { field: "allowlist", problem: e.problem })?;
        if allowlist.get(&identity.public()).is_none() {
            return Err(ConfigError {
                field: "allowlist",
                problem: "this node's public key is not on the allowlist; add it with `starling allow add`",
            });
        }
        Node::build(config, boot, now, move |config: &Config, rng: &mut rand_chacha::ChaCha20Rng| {
            let group = new_keys(rng, None);
            let rate = u64::from(config.identity.handshakes_per_second);
            super::Security::Identity(Box::new(IdentityState {
                net_tag: allowlist.net_tag(),
                prologue: noise::prologue(&allowlist.network),
                me: identity,
                list: allowlist,
                group,
                next_group: None,
                group_replaces: false,
                group_rotate_at: now + config.identity.group_key_rotation,
                peers: BTreeMap::new(),
                cookie_secret: random32(rng),
                old_cookie_secret: random32(rng),
                cookie_rotate_at: now + COOKIE_LIFETIME,
                bucket: Bucket::full(rate, now),
                addr_buckets: BTreeMap::new(),
                raw: VecDeque::new(),
            }))
        })
    }

    /// The multicast keys this node hands to members, as `(tag, key)`: discovery key first, then
    /// data key. Every member allowed to read this node holds them, so an attack test can forge
    /// frames as such a member would (PROTOCOL.md §11.8). Empty in PSK mode.
    #[doc(hidden)]
    pub fn handed_out_keys(&self) -> Vec<(u8, [u8; 32])> {
        self.security.identity().map_or_else(Vec::new, |s| {
            alloc::vec![(s.group.disc.tag, s.group.disc.raw), (s.group.data.tag, s.group.data.raw)]
        })
    }

    /// The allowlist in force (identity mode only).
    pub fn allowlist(&self) -> Option<&Allowlist> {
        self.security.identity().map(|s| &s.list)
    }

    /// Replaces the allowlist at run time (identity mode only). Peers no longer on it are cut off
    /// at once: their sessions and keys are forgotten, they are reported down, and this node's
    /// multicast key is replaced and handed only to the members still allowed to read it.
    pub fn set_allowlist(&mut self, now: Instant, list: Allowlist) -> Result<(), AllowlistError> {
        list.validate()?;
        let Some(state) = self.security.identity_mut() else { return Ok(()) };
        state.net_tag = list.net_tag();
        state.prologue = noise::prologue(&list.network);
        state.list = list;
        let gone: Vec<NodeId> =
            state.peers.iter().filter(|(_, p)| state.list.get(&p.key).is_none()).map(|(id, _)| *id).collect();
        for id in gone {
            if let Some(s) = self.security.identity_mut() {
                s.peers.remove(&id);
            }
            self.stats.revoked += 1;
            if let Some(p) = self.peers.remove(&id) {
                if p.status == PeerStatus::Up {
                    self.peer_down(id, super::DownReason::Revoked);
                }
            }
            self.reassembly.forget(id);
            self.cache.forget(id);
        }
        self.rotate_group_key(now, true);
        self.update_timers();
        Ok(())
    }

    // ----- receive -----

    /// Handles an identity-mode frame. Returns true when `self.scratch` holds an opened, valid
    /// sealed frame whose sender is in `self.peers` (the caller then processes its records).
    pub(super) fn open_identity(&mut self, now: Instant, from: SocketAddr, header: &Header, datagram: &[u8]) -> bool {
        let Some(state) = self.security.identity() else { return false };
        if header.sender == state.me.node_id() {
            self.stats.rx_own += 1;
            return false;
        }
        match header.suite {
            SUITE_UNICAST | SUITE_MULTICAST => return self.open_sealed(now, from, header, datagram),
            SUITE_PSK | wire::SUITE_PSK_UNICAST => self.stats.drop_version += 1,
            _ if header.net_tag != state.net_tag => self.stats.drop_foreign_network += 1,
            _ => {
                self.stats.rx_unsealed += 1;
                self.handle_unsealed(now, from, header, datagram);
            }
        }
        self.update_timers();
        false
    }

    fn handle_unsealed(&mut self, now: Instant, from: SocketAddr, header: &Header, datagram: &[u8]) {
        match header.suite {
            SUITE_ANNOUNCE => match Announce::parse(datagram) {
                Ok(a) => self.handle_announce(now, from, &a),
                Err(_) => self.stats.handshakes_failed += 1,
            },
            SUITE_HS_INIT => match HandshakeInit::parse(datagram) {
                Ok(init) => self.handle_init(now, from, datagram, &init),
                Err(_) => self.stats.handshakes_failed += 1,
            },
            SUITE_HS_RESP => match HandshakeResp::parse(datagram) {
                Ok(resp) => self.handle_resp(now, from, datagram, &resp),
                Err(_) => self.stats.handshakes_failed += 1,
            },
            SUITE_COOKIE => match CookieReply::parse(datagram) {
                Ok(c) => self.handle_cookie(now, &c),
                Err(_) => self.stats.handshakes_failed += 1,
            },
            _ => self.stats.handshakes_failed += 1,
        }
    }

    /// An Announce (its layout already checked: shorter, unpadded ones could reflect more than
    /// they cost and are refused by the parser).
    fn handle_announce(&mut self, now: Instant, from: SocketAddr, a: &Announce) {
        let Some(state) = self.security.identity_mut() else { return };
        let (key, epoch) = (PublicKey(a.key), a.epoch);
        let header = Header { suite: SUITE_ANNOUNCE, net_tag: a.net_tag, sender: a.sender, pn: 0 };
        if key.node_id() != header.sender {
            self.stats.handshakes_failed += 1;
            return;
        }
        if state.list.get(&key).is_none() {
            self.stats.unknown_keys += 1;
            return;
        }
        let p = state.peers.entry(header.sender).or_insert_with(|| Box::new(IdPeer::new(key, from)));
        // Unauthenticated: it may start a handshake, never change a working session nor an
        // address a session proved.
        let needs = p.current.is_none() || p.epoch != epoch;
        if p.proven && from == p.addr {
            p.announced = None;
        } else {
            let before = if p.proven { p.announced } else { Some(p.addr) };
            if before != Some(from) {
                p.credit = 0;
            }
            if p.proven {
                p.announced = Some(from);
            } else {
                p.addr = from;
            }
            p.credit = (p.credit + 1).min(MAX_HANDSHAKE_TRIES);
        }
        let unproven = !p.proven || p.announced.is_some();
        if needs && p.handshake.is_none() {
            self.initiate(now, header.sender);
        } else if needs && unproven && p.handshake.as_ref().is_some_and(|h| h.next_at > now) {
            // Announces fund the retries to an unproven address: send one now.
            self.send_handshake(now, header.sender);
        }
    }

    /// Starts a handshake with `id` and sends its first message 1, unless one is under way.
    fn initiate(&mut self, now: Instant, id: NodeId) {
        let Some(p) = self.security.identity_mut().and_then(|s| s.peers.get_mut(&id)) else { return };
        if p.handshake.is_some() {
            return;
        }
        if let Some(hs) = self.new_message1(id, 0, now) {
            if let Some(p) = self.security.identity_mut().and_then(|s| s.peers.get_mut(&id)) {
                p.handshake = Some(hs);
            }
            self.send_handshake(now, id);
        }
    }

    /// A new message 1 to `id`: fresh ephemeral key, and a counter that never repeats (a packet
    /// number of this node, so it grows across restarts of a node with a lease). `None` when no
    /// packet number is free (a lease is being stored) or the handshake cannot be built.
    fn new_message1(&mut self, id: NodeId, tries: u32, now: Instant) -> Option<Box<Handshake>> {
        if self.next_pn >= self.lease_end {
            self.request_lease();
            return None;
        }
        let counter = self.next_pn;
        self.next_pn += 1;
        let mut payload = [0u8; MSG1_PAYLOAD];
        payload[..4].copy_from_slice(&self.boot.epoch.to_be_bytes());
        payload[4..].copy_from_slice(&counter.to_be_bytes());
        let seed = random32(&mut self.rng);
        let state = self.security.identity_mut()?;
        let me = state.me.node_id();
        let p = state.peers.get(&id)?;
        let mut noise_msg = Vec::new();
        let Ok(init) = Initiator::start(&state.me, &p.key, &state.prologue, seed, &payload, &mut noise_msg) else {
            self.stats.handshakes_failed += 1;
            return None;
        };
        let mut msg = HandshakeInit::emit_unmacked(state.net_tag, me, id, &noise_msg);
        let mac1 = noise::mac1(&p.key, &msg);
        msg.extend_from_slice(&mac1);
        Some(Box::new(Handshake { init, mac1, msg, tries, next_at: now, bad_responses: 0, to: p.addr }))
    }

    /// Sends a new message 1 of the handshake under way to `id`, with a mac2 if a fresh cookie
    /// is known. To an address no session proved, only as far as its Announces allow.
    fn send_handshake(&mut self, now: Instant, id: NodeId) {
        let retry = self.config.identity.handshake_retry;
        let Some(p) = self.security.identity_mut().and_then(|s| s.peers.get_mut(&id)) else { return };
        let Some(tries) = p.handshake.as_ref().map(|h| h.tries) else { return };
        if tries >= MAX_HANDSHAKE_TRIES {
            p.handshake = None;
            return;
        }
        // A handshake goes where the peer last announced itself if that is not where its session
        // was (it restarted elsewhere); an address no session proved costs one Announce each.
        let to = p.announced.unwrap_or(p.addr);
        let unproven = !p.proven || p.announced.is_some();
        if unproven && p.credit == 0 {
            // Wait for its next Announce (each one funds one message).
            if let Some(hs) = p.handshake.as_mut() {
                hs.next_at = now + retry * (1 << tries.min(3));
            }
            return;
        }
        // The first try uses the message built with the handshake; retries build a new one.
        if tries > 0 {
            let Some(hs) = self.new_message1(id, tries, now) else { return };
            let Some(p) = self.security.identity_mut().and_then(|s| s.peers.get_mut(&id)) else { return };
            p.handshake = Some(hs);
        }
        let Some(state) = self.security.identity_mut() else { return };
        let Some(p) = state.peers.get_mut(&id) else { return };
        if unproven {
            p.credit -= 1;
        }
        let Some(hs) = p.handshake.as_mut() else { return };
        hs.to = to;
        hs.tries += 1;
        hs.next_at = now + retry * (1 << (hs.tries - 1).min(3));
        let mut msg = hs.msg.clone();
        let mac2 = match p.cookie {
            Some((c, at)) if now.saturating_duration_since(at) < COOKIE_LIFETIME => noise::mac2(&c, &msg),
            _ => [0u8; MAC_LEN],
        };
        msg.extend_from_slice(&mac2);
        state.raw.push_back((Destination::Unicast(to), msg));
        self.stats.handshakes_sent += 1;
    }

    fn handle_init(&mut self, now: Instant, from: SocketAddr, datagram: &[u8], init: &HandshakeInit<'_>) {
        let epoch = self.boot.epoch;
        let seed = random32(&mut self.rng);
        let rate = u64::from(self.config.identity.handshakes_per_second);
        let nonce: [u8; 24] = random32(&mut self.rng)[..24].try_into().expect("24 bytes");
        let Some(state) = self.security.identity_mut() else { return };
        let me = state.me.node_id();
        let header = &init.header;
        let mac1 = init.mac1;
        // Cheap checks first (the layout was checked by the parser): addressee, mac1 (one
        // BLAKE2s). No Diffie-Hellman yet.
        let covered1 = &datagram[..HandshakeInit::MAC1_AT];
        if init.receiver != me || !noise::mac_eq(&noise::mac1(&state.me.public(), covered1), &mac1) {
            self.stats.handshakes_failed += 1;
            return;
        }
        // Under load (the bucket is empty) only messages proving their source address go on,
        // and each address gets a small share.
        if !state.bucket.take(rate, now) {
            let mac2 = &init.mac2;
            let covered = &datagram[..HandshakeInit::MAC2_AT];
            let proven = [state.cookie_secret, state.old_cookie_secret]
                .iter()
                .any(|s| noise::mac_eq(&noise::mac2(&noise::cookie(s, &from), covered), mac2));
            if !proven {
                let cookie = noise::cookie(&state.cookie_secret, &from);
                let reply = noise::seal_cookie(&state.me.public(), nonce, &cookie, &mac1);
                let h = Header { suite: SUITE_COOKIE, net_tag: state.net_tag, sender: me, pn: 0 };
                let f = CookieReply { header: h, receiver: header.sender, reply: &reply }.emit();
                state.raw.push_back((Destination::Unicast(from), f));
                self.stats.cookies_sent += 1;
                return;
            }
            if state.addr_buckets.len() >= MAX_TRACKED_ADDRESSES && !state.addr_buckets.contains_key(&from) {
                // Forget the address that has waited longest: it has the most tokens back anyway.
                if let Some(old) = state.addr_buckets.iter().min_by_key(|(_, b)| b.at).map(|(a, _)| *a) {
                    state.addr_buckets.remove(&old);
                }
            }
            let b = state.addr_buckets.entry(from).or_insert_with(|| Bucket::full(PER_ADDRESS_RATE, now));
            if !b.take(PER_ADDRESS_RATE, now) {
                self.stats.handshakes_rate_limited += 1;
                return;
            }
        }
        let msg1 = init.message;
        if low_order_ephemeral(msg1) {
            self.stats.handshakes_failed += 1;
            return;
        }
        let Ok(resp) = Responder::read(&state.me, &state.prologue, seed, msg1) else {
            self.stats.handshakes_failed += 1;
            return;
        };
        let Some(entry) = state.list.get(&resp.remote) else {
            self.stats.unknown_keys += 1;
            return;
        };
        if resp.remote.node_id() != header.sender || resp.payload.len() != MSG1_PAYLOAD {
            self.stats.handshakes_failed += 1;
            return;
        }
        let their_epoch = u32::from_be_bytes(resp.payload[..4].try_into().expect("4 bytes"));
        let counter = u64::from_be_bytes(resp.payload[4..].try_into().expect("8 bytes"));
        let p = state.peers.entry(header.sender).or_insert_with(|| Box::new(IdPeer::new(resp.remote, from)));
        // Freshness: a message 1 of the same incarnation with a counter not above the last one
        // processed is a replay (PROTOCOL.md §11.3).
        if p.last_init.is_some_and(|(e, c)| e == their_epoch && counter <= c) {
            self.stats.handshakes_failed += 1;
            return;
        }
        // Both sides started at once: the lower id's handshake goes on, the other is dropped;
        // unless ours went to another address than theirs came from (it restarted elsewhere, and
        // ours may never arrive).
        if p.handshake.as_ref().is_some_and(|h| h.to == from) && me < header.sender {
            return;
        }
        p.last_init = Some((their_epoch, counter));
        let mut payload = Vec::with_capacity(4 + GROUP_KEY_LEN);
        payload.extend_from_slice(&epoch.to_be_bytes());
        push_key(&mut payload, &state.group.disc, self.next_pn);
        let my_perms = state.list.get(&state.me.public()).map(|e| &e.permissions);
        if my_perms.is_some_and(|mine| entry.permissions.may_read_from(mine)) {
            push_key(&mut payload, &state.group.data, self.next_pn);
        }
        let mut msg2 = Vec::new();
        let Ok(keys) = resp.finish(&payload, &mut msg2) else {
            self.stats.handshakes_failed += 1;
            return;
        };
        let mut msg = HandshakeResp::emit_unmacked(state.net_tag, me, header.sender, &msg2);
        if p.tag_in_use(keys.hash[0]) {
            // One chance in 256: the initiator retries with a new ephemeral key.
            self.stats.handshakes_failed += 1;
            return;
        }
        let answer_mac = noise::mac1_answer(&p.key, &msg, &mac1);
        msg.extend_from_slice(&answer_mac);
        p.handshake = None;
        // Pending until the initiator's first frame opens under it: only then do its epoch and
        // address count (a replayed message 1 changes neither).
        p.add_pending(Session::new(&keys, now, false, their_epoch));
        state.raw.push_back((Destination::Unicast(from), msg));
    }

    fn handle_resp(&mut self, now: Instant, from: SocketAddr, datagram: &[u8], resp: &HandshakeResp<'_>) {
        let Some(state) = self.security.identity_mut() else { return };
        let me = state.me.node_id();
        let header = &resp.header;
        let Some(p) = state.peers.get_mut(&header.sender) else {
            self.stats.handshakes_failed += 1;
            return;
        };
        // The answer's mac1 covers our message 1's: without the handshake under way, or from a
        // forger who never saw that message, it is refused here, with one BLAKE2s.
        let covered = HandshakeResp::covered(datagram);
        let expected = p.handshake.as_ref().map(|h| noise::mac1_answer(&state.me.public(), covered, &h.mac1));
        if resp.receiver != me || !expected.is_some_and(|m| noise::mac_eq(&m, &resp.mac1)) {
            self.stats.handshakes_failed += 1;
            return;
        }
        // Only an answer to the handshake under way counts; replays of old answers fail here.
        // One that fails to open (forged with public keys alone, or for an earlier try) must
        // not cancel the handshake: it is restarted at once, a few times per try.
        if p.handshake.as_ref().is_none_or(|h| h.bad_responses >= MAX_BAD_RESPONSES) {
            self.stats.handshakes_failed += 1;
            return;
        }
        let msg2 = resp.message;
        if low_order_ephemeral(msg2) {
            self.stats.handshakes_failed += 1;
            return;
        }
        let hs = p.handshake.take().expect("checked above");
        let (tries, bad, next_at) = (hs.tries, hs.bad_responses, hs.next_at);
        let Ok((keys, payload)) = hs.init.finish(msg2) else {
            self.stats.handshakes_failed += 1;
            let id = header.sender;
            if let Some(mut fresh) = self.new_message1(id, tries.saturating_sub(1), now) {
                fresh.bad_responses = bad + 1;
                fresh.next_at = next_at;
                if let Some(p) = self.security.identity_mut().and_then(|s| s.peers.get_mut(&id)) {
                    p.handshake = Some(fresh);
                    // The new message goes out now, so the genuine answer is not lost.
                    self.send_handshake(now, id);
                }
            }
            return;
        };
        if payload.len() < 4 || (payload.len() - 4) % GROUP_KEY_LEN != 0 || p.tag_in_use(keys.hash[0]) {
            self.stats.handshakes_failed += 1;
            return;
        }
        let their_epoch = u32::from_be_bytes(payload[..4].try_into().expect("4 bytes"));
        p.epoch = their_epoch;
        p.install(Box::new(Session::new(&keys, now, true, their_epoch)));
        p.pending = Vec::new();
        // Message 2 opened under our ephemeral key: only the responder could make it.
        p.addr = from;
        p.proven = true;
        p.announced = None;
        for g in payload[4..].chunks_exact(GROUP_KEY_LEN) {
            let key: [u8; 32] = g[1..33].try_into().expect("32 bytes");
            let floor = u64::from_be_bytes(g[33..41].try_into().expect("8 bytes"));
            install_group(p, g[0], key, floor, now);
        }
        self.stats.handshakes_completed += 1;
        let id = header.sender;
        self.session_up(now, id, from, their_epoch);
        // Our first frame confirms the session to the responder, and carries our keys.
        self.send_group_keys(id);
    }

    fn handle_cookie(&mut self, now: Instant, c: &CookieReply<'_>) {
        let Some(state) = self.security.identity_mut() else { return };
        if c.receiver != state.me.node_id() {
            return;
        }
        let Some(p) = state.peers.get_mut(&c.header.sender) else { return };
        let Some(hs) = p.handshake.as_mut() else { return };
        match noise::open_cookie(&p.key, c.reply, &hs.mac1) {
            Some(c) => {
                p.cookie = Some((c, now));
                // Try again soon, now able to prove our address.
                hs.next_at = hs.next_at.min(now + Duration::from_millis(20));
            }
            None => self.stats.handshakes_failed += 1,
        }
    }

    /// A session with `id` is established (as initiator) or confirmed (as responder).
    fn session_up(&mut self, now: Instant, id: NodeId, from: SocketAddr, epoch: u32) {
        if !self.peers.contains_key(&id) {
            if self.peers.len() >= self.config.max_peers {
                match self.evictable() {
                    Some(victim) => self.evict(victim),
                    None => {
                        self.stats.drop_peer_table_full += 1;
                        return;
                    }
                }
            }
            self.insert_peer(now, from, id, None);
        }
        // Ids are bound to keys, so a device that restarts keeps its id: a new epoch in the
        // (authenticated) handshake is a new incarnation, whatever state the old one left.
        let new_incarnation = self.peers.get(&id).is_some_and(|p| p.epoch != epoch);
        let restarted = new_incarnation && self.peers.get(&id).is_some_and(|p| p.status == PeerStatus::Up);
        if let Some(p) = self.peers.get_mut(&id) {
            p.epoch = epoch;
            p.addr = from;
            if new_incarnation {
                // Its packet numbers start afresh: the old incarnation's Leave says nothing now.
                p.left_pn = None;
                if p.status == PeerStatus::Down {
                    p.status = PeerStatus::Unannounced;
                }
            }
            if new_incarnation {
                // Our stream to it goes on; what it held for the old incarnation is gone.
                p.in_mcast = None;
                p.in_ucast = None;
            }
            if let Some(name) = self.security.identity().and_then(|s| s.list.by_id(id)) {
                p.name = name.name.clone();
            }
        }
        if new_incarnation {
            self.reassembly.forget(id);
            self.cache.forget(id);
        }
        if restarted {
            let info = self.peers[&id].info(id);
            self.push_event(Event::PeerRestarted(info));
        }
        if new_incarnation {
            // Calls the old incarnation received end `Interrupted`; the others go again.
            self.callee_restarted(now, id);
        }
        // Our beacon (sealed with our multicast key) tells it our name and subscriptions soon.
        self.schedule_early_beacon(now);
    }

    fn open_sealed(&mut self, now: Instant, from: SocketAddr, header: &Header, datagram: &[u8]) -> bool {
        let Some(state) = self.security.identity_mut() else { return false };
        let Some(p) = state.peers.get_mut(&header.sender) else {
            self.stats.drop_no_session += 1;
            return false;
        };
        let unicast = header.suite == SUITE_UNICAST;
        let mut slot = None;
        let (key, replay, floor) = if unicast {
            match p.session_mut(header.net_tag) {
                Some((s, which)) => {
                    slot = Some(which);
                    (&s.recv, &mut s.replay, 0)
                }
                None => {
                    self.stats.drop_no_session += 1;
                    return false;
                }
            }
        } else {
            match p.groups.iter_mut().find(|g| g.tag == header.net_tag) {
                Some(g) => (&g.key, &mut g.replay, g.floor),
                None => {
                    self.stats.drop_no_key += 1;
                    let ask = p.current.is_some()
                        && p.last_key_request.is_none_or(|t| now.saturating_duration_since(t) >= KEY_REQUEST_GAP);
                    if ask {
                        p.last_key_request = Some(now);
                        self.enqueue_to_peer(header.sender, &Record::KeyRequest);
                    }
                    return false;
                }
            }
        };
        if header.pn < floor {
            // Sealed before this node was given the key: a replay of a captured frame, or a genuine
            // frame that arrived after the key did (multicast and unicast sockets do not keep one
            // order). Either way refused; counted apart from replay-window hits.
            self.stats.drop_before_key += 1;
            return false;
        }
        let max_age = self.config.freshness_window;
        if replay.check(header.pn, now, max_age).is_err() {
            self.stats.drop_replay += 1;
            return false;
        }
        self.scratch.clear();
        self.scratch.extend_from_slice(datagram);
        if key.open(header.pn, &mut self.scratch, HEADER_LEN).is_err() {
            self.stats.drop_auth += 1;
            // A multicast key that fails may be stale (its replacement was lost): ask again.
            let ask = !unicast
                && p.current.is_some()
                && p.last_key_request.is_none_or(|t| now.saturating_duration_since(t) >= KEY_REQUEST_GAP);
            if ask {
                p.last_key_request = Some(now);
                self.enqueue_to_peer(header.sender, &Record::KeyRequest);
            }
            return false;
        }
        let body = &self.scratch[HEADER_LEN..self.scratch.len() - TAG_LEN];
        // Only the records of the key's class (PROTOCOL.md §2.7): a member holding someone's
        // multicast keys can pass off neither publications under the discovery key nor calls,
        // responses or their acks under either.
        let class = match (unicast, header.net_tag & DISCOVERY_TAG != 0) {
            (true, _) => KeyClass::Pairwise,
            (false, true) => KeyClass::GroupDiscovery,
            (false, false) => KeyClass::GroupData,
        };
        if !super::records_valid(body, class) {
            self.stats.drop_malformed += 1;
            return false;
        }
        let _ = replay.accept(header.pn, now, max_age);
        // The session proves the address; only its newest frame moves it (a late frame, or a
        // replay of one this node lost, from elsewhere does not).
        if unicast && replay.highest() == Some(header.pn) {
            p.addr = from;
            p.proven = true;
            p.announced = None;
        }
        let promote = match slot {
            Some(Slot::Pending(i)) => Some(i),
            _ => None,
        };
        if slot == Some(Slot::Current) {
            // The peer uses the new session: the old one has served its purpose.
            p.previous = None;
        }
        if !unicast {
            forget_older_keys(p, header.net_tag);
        }
        if let Some(i) = promote {
            let s = Box::new(p.pending.remove(i));
            // The others were answers to replays or to tries the initiator gave up.
            p.pending = Vec::new();
            p.epoch = s.peer_epoch;
            p.install(s);
            self.stats.handshakes_completed += 1;
        }
        let epoch = p.epoch;
        if promote.is_some() || !self.peers.contains_key(&header.sender) {
            self.session_up(now, header.sender, from, epoch);
            if !self.peers.contains_key(&header.sender) {
                return false;
            }
        }
        true
    }

    /// Acts on a key record; they only count inside a pairwise session.
    pub(super) fn handle_key_record(&mut self, now: Instant, header: &Header, record: Record<'_>) {
        if header.suite != SUITE_UNICAST {
            self.stats.unknown_records += 1;
            return;
        }
        let Some(state) = self.security.identity_mut() else { return };
        let Some(p) = state.peers.get_mut(&header.sender) else { return };
        match record {
            Record::GroupKey { tag, key, floor, replaces } => {
                install_group(p, tag, key, floor, now);
                if replaces {
                    // The sender revoked a member who may hold the older key: forget it now.
                    forget_older_keys(p, tag);
                }
            }
            Record::KeyRequest => self.send_group_keys(header.sender),
            _ => {}
        }
    }

    /// Sends our multicast keys to `id`: the discovery key always, the data key if its
    /// permissions let it read what we may publish.
    fn send_group_keys(&mut self, id: NodeId) {
        let next_pn = self.next_pn;
        let Some(state) = self.security.identity() else { return };
        let Some(p) = state.peers.get(&id) else { return };
        let allowed = match (state.list.get(&p.key), state.list.get(&state.me.public())) {
            (Some(them), Some(me)) => them.permissions.may_read_from(&me.permissions),
            _ => false,
        };
        let mut keys: Vec<(OwnGroupKey, bool)> = Vec::with_capacity(4);
        let current = core::iter::once((&state.group, state.group_replaces));
        for (k, replaces) in current.chain(state.next_group.as_ref().map(|(k, _)| (k, false))) {
            keys.push((k.disc.clone(), replaces));
            if allowed {
                keys.push((k.data.clone(), replaces));
            }
        }
        for (g, replaces) in keys {
            self.enqueue_to_peer(id, &Record::GroupKey { tag: g.tag, key: g.raw, floor: next_pn, replaces });
        }
    }

    fn enqueue_to_peer(&mut self, id: NodeId, record: &Record<'_>) {
        self.enqueue(To::Peer(id), record);
    }

    /// Replaces this node's multicast keys. `at_once` switches at once (revocation: the old keys
    /// may be known to a device that is no longer allowed); otherwise the new keys are handed out
    /// first and used a second later.
    fn rotate_group_key(&mut self, now: Instant, at_once: bool) {
        let Some(state) = self.security.identity_mut() else { return };
        let g = new_keys(&mut self.rng, Some(&state.group));
        state.group_rotate_at = now + self.config.identity.group_key_rotation;
        // After a revocation the older keys may be known to the revoked member: receivers are
        // told to forget them at once, not when a frame under the new key arrives.
        state.group_replaces = at_once;
        if at_once {
            state.group = g;
            state.next_group = None;
        } else {
            state.next_group = Some((g, now + GROUP_KEY_LEAD));
        }
        self.stats.group_key_rotations += 1;
        let ids: Vec<NodeId> = state.peers.iter().filter(|(_, p)| p.current.is_some()).map(|(id, _)| *id).collect();
        for id in ids {
            self.send_group_keys(id);
        }
    }

    // ----- send -----

    /// Announces this node's key and epoch (with every beacon).
    pub(super) fn announce(&mut self) {
        let epoch = self.boot.epoch;
        let Some(state) = self.security.identity_mut() else { return };
        let f = Announce { net_tag: state.net_tag, sender: state.me.node_id(), key: state.me.public().0, epoch }.emit();
        state.raw.push_back((Destination::Multicast, f));
    }

    /// The next unsealed frame, if any.
    pub(super) fn poll_raw(&mut self, buf: &mut [u8]) -> Option<Transmit> {
        let (destination, f) = self.security.identity_mut()?.raw.pop_front()?;
        buf[..f.len()].copy_from_slice(&f);
        self.stats.tx_datagrams += 1;
        self.stats.tx_bytes += f.len() as u64;
        Some(Transmit { destination, len: f.len() })
    }

    /// How a frame to `to` is sealed, or `None` when no session with that peer exists yet (then
    /// a handshake is started, and the records are dropped: streams resend). Sessions are found
    /// by the peer's id, and frames go to the address its session proved.
    pub(super) fn identity_sealer(&mut self, now: Instant, to: To, data: bool) -> Option<Sealer> {
        let rekey_frames = self.config.identity.rekey_after_frames;
        let state = self.security.identity_mut()?;
        match to {
            To::Group => {
                let g = if data { &state.group.data } else { &state.group.disc };
                Some(Sealer {
                    destination: Destination::Multicast,
                    suite: SUITE_MULTICAST,
                    tag: g.tag,
                    key: g.key.clone(),
                })
            }
            To::Peer(id) => {
                let p = state.peers.get_mut(&id)?;
                match p.current.as_mut() {
                    Some(s) => {
                        s.sent += 1;
                        let sealer = Sealer {
                            destination: Destination::Unicast(p.addr),
                            suite: SUITE_UNICAST,
                            tag: s.tag,
                            key: s.send.clone(),
                        };
                        // The frame budget is checked as frames go; the time budget by the timer.
                        if s.initiator && s.sent >= rekey_frames && p.handshake.is_none() {
                            self.initiate(now, id);
                        }
                        Some(sealer)
                    }
                    None => {
                        self.stats.tx_no_session += 1;
                        // A peer whose handshake we answered confirms it with its next frame: no
                        // second handshake for that.
                        if p.pending.is_empty() {
                            self.initiate(now, id);
                        }
                        None
                    }
                }
            }
        }
    }

    // ----- timers -----

    /// The next deadline of handshakes, rekeying and key rotation.
    pub(super) fn identity_timeout(&self) -> Option<Instant> {
        let state = self.security.identity()?;
        let rekey = self.config.identity.rekey_after;
        let peers = state.peers.values().flat_map(|p| {
            [
                p.handshake.as_ref().map(|h| h.next_at),
                // While the renewal is under way its retry time (above) is the deadline.
                p.current.as_ref().filter(|s| s.initiator && p.handshake.is_none()).map(|s| s.created + rekey),
                p.previous.as_ref().map(|s| s.created + rekey * 3),
            ]
        });
        [Some(state.group_rotate_at), Some(state.cookie_rotate_at), state.next_group.as_ref().map(|(_, at)| *at)]
            .into_iter()
            .chain(peers)
            .flatten()
            .min()
    }

    /// Retries handshakes, renews old sessions, rotates keys and cookie secrets.
    pub(super) fn identity_on_timeout(&mut self, now: Instant) {
        let rekey = self.config.identity.rekey_after;
        let rekey_frames = self.config.identity.rekey_after_frames;
        let fresh_secret = random32(&mut self.rng);
        let Some(state) = self.security.identity_mut() else { return };
        if state.cookie_rotate_at <= now {
            state.old_cookie_secret = core::mem::replace(&mut state.cookie_secret, fresh_secret);
            state.cookie_rotate_at = now + COOKIE_LIFETIME;
        }
        if let Some((g, at)) = state.next_group.take() {
            if at <= now {
                state.group = g;
            } else {
                state.next_group = Some((g, at));
            }
        }
        let mut retry = Vec::new();
        let mut renew = Vec::new();
        for (id, p) in state.peers.iter_mut() {
            if p.previous.as_ref().is_some_and(|s| s.created + rekey * 3 <= now) {
                p.previous = None;
            }
            if p.handshake.as_ref().is_some_and(|h| h.next_at <= now) {
                retry.push(*id);
            } else if p.handshake.is_none()
                && p.current
                    .as_ref()
                    .is_some_and(|s| s.initiator && (s.created + rekey <= now || s.sent >= rekey_frames))
            {
                renew.push(*id);
            }
            // A session never renewed (its initiator is gone) expires: the peer must handshake again.
            if p.current.as_ref().is_some_and(|s| s.created + rekey * 3 <= now) {
                p.current = None;
            }
        }
        let rotate = state.group_rotate_at <= now;
        for id in retry {
            self.send_handshake(now, id);
        }
        for id in renew {
            self.initiate(now, id);
        }
        if rotate {
            self.rotate_group_key(now, false);
        }
    }

    // ----- authorization -----

    /// May `from` publish on `topic`? Always true in PSK mode and for this node itself.
    pub(super) fn may_publish(&self, from: NodeId, topic: &Topic<'_>) -> bool {
        self.permissions_of(from).is_none_or(|p| p.is_some_and(|p| p.may_publish(topic)))
    }

    /// May this node itself publish on `topic`, by its own allowlist entry? Always true in PSK
    /// mode (and if the entry is missing, which the allowlist's own checks prevent).
    pub(super) fn may_publish_own(&self, topic: &Topic<'_>) -> bool {
        self.security
            .identity()
            .is_none_or(|state| state.list.by_id(state.me.node_id()).is_none_or(|e| e.permissions.may_publish(topic)))
    }

    /// May `from` call `method`? Always true in PSK mode.
    pub(super) fn may_call(&self, from: NodeId, method: &str) -> bool {
        self.permissions_of(from).is_none_or(|p| p.is_some_and(|p| p.may_call(method)))
    }

    /// May this node itself receive `topic`? An honest member delivers nothing outside its own
    /// subscribe rights, even what a sender may publish to others. Always true in PSK mode.
    pub(super) fn may_receive_self(&self, topic: &Topic<'_>) -> bool {
        self.security
            .identity()
            .is_none_or(|s| s.list.get(&s.me.public()).is_some_and(|e| e.permissions.may_subscribe(topic)))
    }

    /// May `peer` receive messages on `topic` (so a reliable publication waits for it)?
    pub(super) fn may_receive(&self, peer: NodeId, topic: &Topic<'_>) -> bool {
        self.permissions_of(peer).is_none_or(|p| p.is_some_and(|p| p.may_subscribe(topic)))
    }

    /// `None` when there is nothing to check (PSK mode, or this node); `Some(None)` for an id with
    /// no allowlist entry.
    fn permissions_of(&self, id: NodeId) -> Option<Option<&Permissions>> {
        let state = self.security.identity()?;
        if id == state.me.node_id() {
            return None;
        }
        Some(state.list.by_id(id).map(|e| &e.permissions))
    }
}

/// A handshake message whose ephemeral key (its first 32 bytes) is a small-order point: refused
/// before any Diffie-Hellman with it.
fn low_order_ephemeral(msg: &[u8]) -> bool {
    msg.first_chunk::<32>().is_none_or(|e| PublicKey(*e).is_low_order())
}

fn install_group(p: &mut IdPeer, tag: u8, key: [u8; 32], floor: u64, now: Instant) {
    if p.groups.iter().any(|g| g.tag == tag) {
        return; // already have it; keep its replay window
    }
    let class = tag & DISCOVERY_TAG;
    if p.groups.iter().filter(|g| g.tag & DISCOVERY_TAG == class).count() >= 2 {
        let oldest = p.groups.iter().position(|g| g.tag & DISCOVERY_TAG == class).expect("two exist");
        p.groups.remove(oldest);
    }
    // The window starts at the floor, as of now: even the first frame under the key cannot be
    // further ahead than the sender can have counted since it handed the key over.
    p.groups.push(RxGroup { tag, key: SenderKey::from_raw(key), floor, replay: AgedWindow::starting_at(floor, now) });
}

/// A frame opened under the key `tag`: the sender uses it now, so older keys of its class go
/// (a receiver holds two per class only while a replacement is being handed out).
fn forget_older_keys(p: &mut IdPeer, tag: u8) {
    let class = tag & DISCOVERY_TAG;
    if let Some(newest) = p.groups.iter().rposition(|g| g.tag == tag) {
        let mut i = 0;
        p.groups.retain(|g| {
            let keep = g.tag & DISCOVERY_TAG != class || i >= newest;
            i += 1;
            keep
        });
    }
}

/// Whether an encoded record goes under the data key.
pub(super) fn is_data(record: &[u8]) -> bool {
    record.first().is_some_and(|&k| is_data_record(k))
}
