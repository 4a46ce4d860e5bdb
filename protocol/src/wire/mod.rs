//! Wire format v1 (PROTOCOL.md §2): a 16-byte cleartext header, then a sealed body that is a
//! sequence of type-length-value records, then the 16-byte Poly1305 tag.
//!
//! Two layers, as in smoltcp: [`Header`] parses and emits the fixed header with every field
//! offset named here; [`Record`] and [`RecordIter`] parse and emit the records of an opened body.

use alloc::vec::Vec;
use core::fmt;
use serde::{Deserialize, Serialize};

/// Protocol version carried in the high nibble of byte 0 (PROTOCOL.md §2.1).
pub const VERSION: u8 = 1;
/// Security suite in the low nibble of byte 0: 0 is PSK mode (PROTOCOL.md §3).
pub const SUITE_PSK: u8 = 0;
/// Identity mode (PROTOCOL.md §11): an unsealed announcement of a node's public key and epoch.
pub const SUITE_ANNOUNCE: u8 = 1;
/// Identity mode: first Noise IK handshake message.
pub const SUITE_HS_INIT: u8 = 2;
/// Identity mode: second Noise IK handshake message.
pub const SUITE_HS_RESP: u8 = 3;
/// Identity mode: a cookie reply to a handshake refused under load.
pub const SUITE_COOKIE: u8 = 4;
/// Identity mode: a frame sealed with a pairwise session key (byte 1 is the session tag).
pub const SUITE_UNICAST: u8 = 5;
/// Identity mode: a frame sealed with the sender's multicast key (byte 1 is the key tag).
pub const SUITE_MULTICAST: u8 = 6;
/// PSK mode: a frame to one peer, sealed with the key of that pair (sender, receiver), so it
/// opens only at the node it was sent to (PROTOCOL.md §3.1).
pub const SUITE_PSK_UNICAST: u8 = 7;
/// Highest suite this version speaks.
const SUITE_MAX: u8 = SUITE_PSK_UNICAST;
/// Length of the cleartext, authenticated header.
pub const HEADER_LEN: usize = 16;
/// Length of the Poly1305 tag that ends every frame.
pub const TAG_LEN: usize = 16;
/// Bytes every frame spends on header and tag: the budget is 32 (PROTOCOL.md §2.4).
pub const FRAME_OVERHEAD: usize = HEADER_LEN + TAG_LEN;
/// Largest datagram a node ever sends: fits a 1280-byte IPv6 minimum MTU with room to spare,
/// so IP fragmentation never happens (PROTOCOL.md §2.4).
pub const MAX_DATAGRAM: usize = 1200;
/// Largest packet number: packet numbers are 48 bits on the wire.
pub const MAX_PN: u64 = (1 << 48) - 1;

/// Field offsets within the header (PROTOCOL.md §2.1).
mod field {
    use core::ops::Range;
    pub const VERSION_SUITE: usize = 0;
    pub const NET_TAG: usize = 1;
    pub const SENDER: Range<usize> = 2..10;
    pub const PN: Range<usize> = 10..16;
}

/// A node's 64-bit identifier: random and persisted in PSK mode, shown as 16 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeId(u64);

impl NodeId {
    /// Wraps a raw identifier.
    pub const fn from_u64(v: u64) -> Self {
        NodeId(v)
    }
    /// The raw identifier.
    pub const fn as_u64(self) -> u64 {
        self.0
    }
    /// Big-endian bytes, as on the wire.
    pub const fn to_bytes(self) -> [u8; 8] {
        self.0.to_be_bytes()
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({:016x})", self.0)
    }
}

impl core::str::FromStr for NodeId {
    type Err = WireError;
    /// Parses 1 to 16 hex digits.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() || s.len() > 16 {
            return Err(WireError::Malformed);
        }
        u64::from_str_radix(s, 16).map(NodeId).map_err(|_| WireError::Malformed)
    }
}

/// Why a datagram or record could not be parsed. Each maps to a drop counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum WireError {
    /// Shorter than header plus tag, or a record runs past the end of the body.
    Truncated,
    /// Longer than [`MAX_DATAGRAM`].
    Oversized,
    /// Version or suite this node does not speak.
    UnsupportedVersion,
    /// Structurally invalid content (bad length, bad UTF-8, bad encoding).
    Malformed,
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WireError::Truncated => "frame is truncated",
            WireError::Oversized => "frame is larger than the 1200-byte datagram limit",
            WireError::UnsupportedVersion => "frame has an unsupported version or security suite",
            WireError::Malformed => "frame content is malformed",
        })
    }
}

impl core::error::Error for WireError {}

/// The fixed frame header (PROTOCOL.md §2.1). It travels in clear and is the AEAD's associated data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Security suite (low nibble of byte 0).
    pub suite: u8,
    /// One-byte tag: the network tag in PSK mode and in identity-mode handshakes; the session or
    /// multicast key tag in identity-mode sealed frames.
    pub net_tag: u8,
    /// The sending node.
    pub sender: NodeId,
    /// The sender's packet number: unique per sender for the network key's lifetime.
    pub pn: u64,
}

impl Header {
    /// Parses the header of a whole datagram, checking the cheap things first: length, version.
    pub fn parse(datagram: &[u8]) -> Result<Header, WireError> {
        if datagram.len() > MAX_DATAGRAM {
            return Err(WireError::Oversized);
        }
        if datagram.len() < FRAME_OVERHEAD {
            return Err(WireError::Truncated);
        }
        let vs = datagram[field::VERSION_SUITE];
        if vs >> 4 != VERSION || vs & 0x0f > SUITE_MAX {
            return Err(WireError::UnsupportedVersion);
        }
        let mut sender = [0u8; 8];
        sender.copy_from_slice(&datagram[field::SENDER]);
        let mut pn = [0u8; 8];
        pn[2..].copy_from_slice(&datagram[field::PN]);
        Ok(Header {
            suite: vs & 0x0f,
            net_tag: datagram[field::NET_TAG],
            sender: NodeId(u64::from_be_bytes(sender)),
            pn: u64::from_be_bytes(pn),
        })
    }

    /// Writes the header into `buf[..HEADER_LEN]`. `pn` must not exceed [`MAX_PN`].
    pub fn emit(&self, buf: &mut [u8]) {
        debug_assert!(self.pn <= MAX_PN);
        buf[field::VERSION_SUITE] = (VERSION << 4) | (self.suite & 0x0f);
        buf[field::NET_TAG] = self.net_tag;
        buf[field::SENDER].copy_from_slice(&self.sender.to_bytes());
        buf[field::PN].copy_from_slice(&self.pn.to_be_bytes()[2..]);
    }
}

/// Record type codes (PROTOCOL.md §2.3). Unknown codes are skipped, so new ones can be added.
pub mod kind {
    /// Discovery beacon.
    pub const BEACON: u8 = 0x01;
    /// Best-effort publication.
    pub const PUBLISH: u8 = 0x02;
    /// The sender is shutting down.
    pub const LEAVE: u8 = 0x03;
    /// A chunk of a reliable stream.
    pub const DATA: u8 = 0x04;
    /// Acknowledgement and negative acknowledgement of a reliable stream.
    pub const ACK: u8 = 0x05;
    /// A reliable stream's extent, so receivers notice tail losses.
    pub const HEARTBEAT: u8 = 0x06;
    /// A fragment of a best-effort message too large for one datagram.
    pub const FRAGMENT: u8 = 0x07;
    /// The sender's subscription filters.
    pub const SUBSCRIPTIONS: u8 = 0x08;
    /// A freshness challenge to a sender the receiver has no replay state for.
    pub const CHALLENGE: u8 = 0x09;
    /// The answer to a challenge.
    pub const ECHO: u8 = 0x0a;
    /// Identity mode: the sender's multicast key, over a pairwise session.
    pub const GROUP_KEY: u8 = 0x0b;
    /// Identity mode: ask a peer for its current multicast key.
    pub const KEY_REQUEST: u8 = 0x0c;
    /// The sender just started and asks every node to beacon soon (PROTOCOL.md §4).
    pub const SOLICIT: u8 = 0x0d;
    /// A parity (erasure-coded) repair symbol of a multicast stream's message (PROTOCOL.md §6.8).
    pub const REPAIR: u8 = 0x0e;
    /// A parity repair symbol of a block of one-chunk messages of a multicast stream (§6.9).
    pub const BLOCK_REPAIR: u8 = 0x0f;
}

/// Reliable stream identifiers (PROTOCOL.md §6.1).
pub mod stream {
    /// The sender's multicast stream of reliable publications.
    pub const MULTICAST: u8 = 0;
    /// The sender's unicast stream to the receiving peer (RPC).
    pub const UNICAST: u8 = 1;
}

/// Header of a Data record; the chunk follows it (PROTOCOL.md §6.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataHeader {
    /// Which of the sender's streams ([`stream`]).
    pub stream: u8,
    /// The sender's boot epoch: a new epoch is a new stream.
    pub epoch: u32,
    /// Sequence number of this chunk.
    pub seq: u64,
    /// Lowest sequence number the sender can still repair; receivers give up on anything below.
    pub low: u64,
    /// Index of this chunk within its message.
    pub index: u32,
    /// Number of chunks of its message (at least 1); chunks of a message have consecutive numbers.
    pub count: u32,
    /// Remaining lifetime of the message in milliseconds when sent, 0 for none.
    pub ttl_ms: u32,
}

/// One missing range in an [`Ack`]: `len` sequence numbers from `start`.
pub type SeqRange = (u64, u32);

/// Most missing ranges one Ack carries.
pub const MAX_ACK_RANGES: usize = 16;

/// Acknowledgement of a stream, sent by a receiver to the stream's sender (PROTOCOL.md §6.3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// The stream's sender (multicast NACKs are heard by every node; only the target acts).
    pub target: u64,
    /// Which of the target's streams.
    pub stream: u8,
    /// The target's epoch the ack refers to.
    pub epoch: u32,
    /// Every sequence number below this was received or given up.
    pub next: u64,
    /// Ranges at or above `next` still missing (a request to repair them).
    pub missing: Vec<SeqRange>,
}

/// A stream's extent, multicast while the sender retains unacknowledged data (PROTOCOL.md §6.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Which stream.
    pub stream: u8,
    /// The sender's epoch.
    pub epoch: u32,
    /// Lowest repairable sequence number.
    pub low: u64,
    /// Next sequence number the sender will assign.
    pub next: u64,
}

/// Header of a Repair record; the repair symbol follows it (PROTOCOL.md §6.8). The message it
/// repairs is the one whose chunks are `first..first + K`, `K = ceil(len / symbol)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepairHeader {
    /// Which of the sender's streams: only the multicast stream ([`stream::MULTICAST`]).
    pub stream: u8,
    /// The sender's boot epoch.
    pub epoch: u32,
    /// Sequence number of the message's first chunk.
    pub first: u64,
    /// The message's length in bytes (its chunks' bytes together).
    pub len: u32,
    /// Symbol size: the length of every chunk of the message but the last, and of the symbol.
    pub symbol: u16,
    /// RaptorQ encoding symbol id (RFC 6330), at least K: which repair symbol this is.
    pub esi: u32,
    /// Remaining lifetime of the message in milliseconds when sent, 0 for none.
    pub ttl_ms: u32,
}

/// Largest RaptorQ encoding symbol id a Repair record may carry (RFC 6330 uses 24 bits).
pub const MAX_REPAIR_ESI: u32 = (1 << 24) - 1;

/// Most chunks a message repaired by parity may have: far above any receive window, and well
/// within RaptorQ's 56 403 source symbols per block.
pub const MAX_REPAIR_CHUNKS: u32 = 8192;

impl RepairHeader {
    /// Number of chunks (source symbols) of the message.
    pub fn chunks(&self) -> u32 {
        self.len.div_ceil(u32::from(self.symbol.max(1)))
    }
}

/// Sequence numbers per block of one-chunk messages repaired together (PROTOCOL.md §6.9): blocks
/// are aligned, `first` a multiple of this.
pub const REPAIR_BLOCK: u64 = 16;

/// Header of a BlockRepair record; the repair symbol follows it (PROTOCOL.md §6.9).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockRepairHeader {
    /// Which of the sender's streams: only the multicast stream ([`stream::MULTICAST`]).
    pub stream: u8,
    /// The sender's boot epoch.
    pub epoch: u32,
    /// First sequence number of the block, a multiple of [`REPAIR_BLOCK`].
    pub first: u64,
    /// The block's members: bit `i` is sequence number `first + i`, a one-chunk message.
    pub members: u16,
    /// Symbol size: the longest member's length; every member is zero-padded to it.
    pub symbol: u16,
    /// RaptorQ encoding symbol id, at least K (the number of members).
    pub esi: u32,
    /// Each member's length, in sequence order (K of them).
    pub lens: Vec<u16>,
}

impl BlockRepairHeader {
    /// The members' sequence numbers, in order.
    pub fn member_seqs(&self) -> impl Iterator<Item = u64> + '_ {
        (0..REPAIR_BLOCK).filter(|i| self.members & (1 << i) != 0).map(|i| self.first + i)
    }
}

/// Header of a best-effort Fragment record; the chunk follows (PROTOCOL.md §6.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FragmentHeader {
    /// Per-sender message number.
    pub msg_id: u32,
    /// Index of this fragment.
    pub index: u32,
    /// Number of fragments.
    pub count: u32,
}

/// Body of a beacon record, encoded with postcard. Fields may be appended in later versions:
/// receivers ignore bytes after the last field they know.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Beacon<'a> {
    /// Boot counter of the sender, incremented (and persisted) at every start.
    pub epoch: u32,
    /// The sender's beacon interval in milliseconds; receivers derive its liveness timeout from it.
    pub interval_ms: u32,
    /// Human-readable node name (at most [`MAX_NAME_LEN`] bytes).
    pub name: &'a str,
    /// What the sender can do beyond version 1's base ([`feature`] bits); 0 in beacons of nodes
    /// that predate the field (it was appended).
    pub features: u32,
}

/// The beacon as it was before `features` was appended.
#[derive(Deserialize)]
struct BeaconV0<'a> {
    epoch: u32,
    interval_ms: u32,
    name: &'a str,
}

/// Bits of [`Beacon::features`] (PROTOCOL.md §4).
pub mod feature {
    /// The sender uses parity Repair records (PROTOCOL.md §6.8): a multicast stream may repair
    /// its holes with them. Without it, its NACKs are answered with the chunks themselves.
    pub const PARITY: u32 = 1;
    /// The sender also rebuilds one-chunk messages from BlockRepair records (PROTOCOL.md §6.9):
    /// it keeps what it delivered of a block until the block is behind it.
    pub const BLOCK_PARITY: u32 = 2;
}

/// Longest node name in bytes.
pub const MAX_NAME_LEN: usize = 32;

/// One record of an opened frame body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record<'a> {
    /// Discovery beacon.
    Beacon(Beacon<'a>),
    /// A best-effort message. The topic is not yet validated here.
    Publish {
        /// Topic name.
        topic: &'a str,
        /// Payload bytes, possibly empty.
        payload: &'a [u8],
    },
    /// The sender is leaving the mesh.
    Leave,
    /// A chunk of a reliable stream.
    Data {
        /// Stream, sequence and message position.
        header: DataHeader,
        /// The chunk's bytes.
        chunk: &'a [u8],
    },
    /// Acknowledgement of a stream.
    Ack(Ack),
    /// A stream's extent.
    Heartbeat(Heartbeat),
    /// A fragment of a large best-effort message.
    Fragment {
        /// Message and position.
        header: FragmentHeader,
        /// The fragment's bytes.
        chunk: &'a [u8],
    },
    /// The sender's subscription filters (not yet validated here).
    Subscriptions(Vec<&'a str>),
    /// Prove freshness by echoing this nonce (PROTOCOL.md §3.4).
    Challenge(u64),
    /// Answer to a challenge.
    Echo {
        /// The challenge's nonce.
        nonce: u64,
        /// The sender's packet number of a freshness window ago: older frames may be replays.
        floor: u64,
    },
    /// Identity mode, unicast only: the sender's multicast key (PROTOCOL.md §11.4).
    GroupKey {
        /// The key's tag, carried in byte 1 of the frames it seals.
        tag: u8,
        /// The ChaCha20-Poly1305 key.
        key: [u8; 32],
        /// The sender's packet number when it handed the key out: older frames are refused.
        floor: u64,
        /// The key replaces every other key of its class at once (the sender rotated because a
        /// member was revoked): receivers forget the older ones without waiting for a frame.
        replaces: bool,
    },
    /// Identity mode, unicast only: please send your current multicast key.
    KeyRequest,
    /// A parity repair symbol for a message of a multicast stream (PROTOCOL.md §6.8).
    Repair {
        /// The message and which symbol.
        header: RepairHeader,
        /// The symbol's bytes, exactly `header.symbol` of them.
        symbol: &'a [u8],
    },
    /// A parity repair symbol for a block of one-chunk messages (PROTOCOL.md §6.9).
    BlockRepair {
        /// The block, its members and which symbol.
        header: BlockRepairHeader,
        /// The symbol's bytes, exactly `header.symbol` of them.
        symbol: &'a [u8],
    },
    /// The sender just started: nodes answer with an early beacon (PROTOCOL.md §4).
    Solicit,
    /// A record type this version does not know; skipped.
    Unknown {
        /// Its type code.
        kind: u8,
    },
}

/// The class of key a sealed frame opened under: what decides which records it may carry
/// (PROTOCOL.md §2.7). A record outside its frame's class makes the frame malformed, so a key
/// many nodes hold can never carry what only a pairwise key may (calls, responses, their acks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyClass {
    /// PSK mode, suite 0: the sender's key, which every member can derive. Multicast.
    Group,
    /// PSK suite 7 (the pair's key) or identity suite 5 (the pair's Noise session). Unicast.
    Pairwise,
    /// Identity suite 6 under the sender's data key: publications and their stream.
    GroupData,
    /// Identity suite 6 under the sender's discovery key: beacons, subscriptions, NACKs.
    GroupDiscovery,
}

impl Record<'_> {
    /// Whether this record may arrive in a frame of `class`: the table of PROTOCOL.md §2.7,
    /// enforced in this one place for both modes.
    pub fn allowed_in(&self, class: KeyClass) -> bool {
        use KeyClass::{Group, GroupData, GroupDiscovery, Pairwise};
        let multicast_stream = |s: u8| s == stream::MULTICAST;
        match self {
            // Publications and the multicast stream that carries them.
            Record::Publish { .. } | Record::Fragment { .. } => matches!(class, Group | GroupData),
            Record::Data { header, .. } if multicast_stream(header.stream) => matches!(class, Group | GroupData),
            Record::Heartbeat(h) if multicast_stream(h.stream) => matches!(class, Group | GroupData),
            Record::Repair { .. } | Record::BlockRepair { .. } => matches!(class, Group | GroupData),
            // A unicast stream (calls and responses) and its acks: pairwise keys only.
            Record::Data { .. } | Record::Heartbeat(_) => class == Pairwise,
            Record::Ack(a) if multicast_stream(a.stream) => matches!(class, Group | Pairwise | GroupDiscovery),
            Record::Ack(_) => class == Pairwise,
            // Discovery.
            Record::Beacon(_) | Record::Leave | Record::Subscriptions(_) => matches!(class, Group | GroupDiscovery),
            Record::Solicit => class != GroupData,
            // Freshness and key handling answer one peer.
            Record::Challenge(_) | Record::Echo { .. } | Record::GroupKey { .. } | Record::KeyRequest => {
                class == Pairwise
            }
            // Skipped by every receiver, so harmless anywhere.
            Record::Unknown { .. } => true,
        }
    }
}

/// Length of the LEB128 (postcard varint) encoding of `v`.
pub fn varint_len(v: usize) -> usize {
    let bits = usize::BITS - (v | 1).leading_zeros();
    bits.div_ceil(7) as usize
}

fn push_varint(out: &mut Vec<u8>, mut v: usize) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Reads a varint of at most 3 bytes (record and topic lengths never exceed 2^21).
fn take_varint(buf: &[u8]) -> Result<(usize, &[u8]), WireError> {
    let mut v = 0usize;
    for (i, &b) in buf.iter().enumerate().take(3) {
        v |= usize::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            if i > 0 && b == 0 {
                return Err(WireError::Malformed); // non-canonical
            }
            return Ok((v, &buf[i + 1..]));
        }
    }
    Err(if buf.len() < 3 { WireError::Truncated } else { WireError::Malformed })
}

impl<'a> Record<'a> {
    /// Encoded length of the record body (without type and length prefix).
    fn body_len(&self) -> usize {
        match self {
            Record::Beacon(b) => size(b),
            Record::Publish { topic, payload } => varint_len(topic.len()) + topic.len() + payload.len(),
            Record::Data { header, chunk } => size(header) + chunk.len(),
            Record::Ack(a) => size(a),
            Record::Heartbeat(h) => size(h),
            Record::Fragment { header, chunk } => size(header) + chunk.len(),
            Record::Repair { header, symbol } => size(header) + symbol.len(),
            Record::BlockRepair { header, symbol } => size(header) + symbol.len(),
            Record::Subscriptions(f) => size(f),
            Record::Challenge(n) => size(n),
            Record::Echo { nonce, floor } => size(&(nonce, floor)),
            Record::GroupKey { tag, key, floor, replaces } => size(&(tag, key, floor, replaces)),
            Record::Leave | Record::KeyRequest | Record::Solicit | Record::Unknown { .. } => 0,
        }
    }

    /// Encoded length of the whole record: type, length prefix and body.
    pub fn encoded_len(&self) -> usize {
        let body = self.body_len();
        1 + varint_len(body) + body
    }

    /// The record's type code (PROTOCOL.md §2.3).
    pub fn kind(&self) -> u8 {
        match self {
            Record::Beacon(_) => kind::BEACON,
            Record::Publish { .. } => kind::PUBLISH,
            Record::Leave => kind::LEAVE,
            Record::Data { .. } => kind::DATA,
            Record::Ack(_) => kind::ACK,
            Record::Heartbeat(_) => kind::HEARTBEAT,
            Record::Fragment { .. } => kind::FRAGMENT,
            Record::Subscriptions(_) => kind::SUBSCRIPTIONS,
            Record::Challenge(_) => kind::CHALLENGE,
            Record::Echo { .. } => kind::ECHO,
            Record::GroupKey { .. } => kind::GROUP_KEY,
            Record::KeyRequest => kind::KEY_REQUEST,
            Record::Solicit => kind::SOLICIT,
            Record::Repair { .. } => kind::REPAIR,
            Record::BlockRepair { .. } => kind::BLOCK_REPAIR,
            Record::Unknown { kind } => *kind,
        }
    }

    /// Appends the record to `out`.
    pub fn emit(&self, out: &mut Vec<u8>) {
        let body = self.body_len();
        let code = self.kind();
        out.push(code);
        push_varint(out, body);
        match self {
            Record::Beacon(b) => put(out, b),
            Record::Publish { topic, payload } => {
                push_varint(out, topic.len());
                out.extend_from_slice(topic.as_bytes());
                out.extend_from_slice(payload);
            }
            Record::Data { header, chunk } => {
                put(out, header);
                out.extend_from_slice(chunk);
            }
            Record::Ack(a) => put(out, a),
            Record::Heartbeat(h) => put(out, h),
            Record::Fragment { header, chunk } => {
                put(out, header);
                out.extend_from_slice(chunk);
            }
            Record::Repair { header, symbol } => {
                put(out, header);
                out.extend_from_slice(symbol);
            }
            Record::BlockRepair { header, symbol } => {
                put(out, header);
                out.extend_from_slice(symbol);
            }
            Record::Subscriptions(f) => put(out, f),
            Record::Challenge(n) => put(out, n),
            Record::Echo { nonce, floor } => put(out, &(nonce, floor)),
            Record::GroupKey { tag, key, floor, replaces } => put(out, &(tag, key, floor, replaces)),
            Record::Leave | Record::KeyRequest | Record::Solicit | Record::Unknown { .. } => {}
        }
    }

    fn parse(code: u8, body: &'a [u8]) -> Result<Record<'a>, WireError> {
        match code {
            kind::BEACON => {
                let b = match postcard::take_from_bytes::<Beacon<'a>>(body) {
                    Ok((b, _rest)) => b,
                    Err(_) => {
                        let (v0, _rest): (BeaconV0<'a>, _) =
                            postcard::take_from_bytes(body).map_err(|_| WireError::Malformed)?;
                        Beacon { epoch: v0.epoch, interval_ms: v0.interval_ms, name: v0.name, features: 0 }
                    }
                };
                if b.name.len() > MAX_NAME_LEN {
                    return Err(WireError::Malformed);
                }
                Ok(Record::Beacon(b))
            }
            kind::PUBLISH => {
                let (len, rest) = take_varint(body)?;
                if len > rest.len() {
                    return Err(WireError::Truncated);
                }
                let (topic, payload) = rest.split_at(len);
                let topic = core::str::from_utf8(topic).map_err(|_| WireError::Malformed)?;
                Ok(Record::Publish { topic, payload })
            }
            kind::LEAVE => Ok(Record::Leave),
            kind::DATA => {
                let (header, chunk): (DataHeader, _) = take(body)?;
                if header.count == 0 || header.index >= header.count || u64::from(header.index) > header.seq {
                    return Err(WireError::Malformed);
                }
                Ok(Record::Data { header, chunk })
            }
            kind::ACK => {
                let (ack, _): (Ack, _) = take(body)?;
                if ack.missing.len() > MAX_ACK_RANGES {
                    return Err(WireError::Malformed);
                }
                Ok(Record::Ack(ack))
            }
            kind::HEARTBEAT => Ok(Record::Heartbeat(take(body)?.0)),
            kind::FRAGMENT => {
                let (header, chunk): (FragmentHeader, _) = take(body)?;
                if header.count == 0 || header.index >= header.count {
                    return Err(WireError::Malformed);
                }
                Ok(Record::Fragment { header, chunk })
            }
            kind::SUBSCRIPTIONS => Ok(Record::Subscriptions(take(body)?.0)),
            kind::CHALLENGE => Ok(Record::Challenge(take(body)?.0)),
            kind::ECHO => {
                let ((nonce, floor), _): ((u64, u64), _) = take(body)?;
                Ok(Record::Echo { nonce, floor })
            }
            kind::GROUP_KEY => {
                // `replaces` was appended to the record: a record without it replaces nothing.
                let ((tag, key, floor), rest): ((u8, [u8; 32], u64), _) = take(body)?;
                Ok(Record::GroupKey { tag, key, floor, replaces: rest.first() == Some(&1) })
            }
            kind::KEY_REQUEST => Ok(Record::KeyRequest),
            kind::SOLICIT => Ok(Record::Solicit),
            kind::REPAIR => {
                let (header, symbol): (RepairHeader, _) = take(body)?;
                let k = header.chunks();
                // Only multicast streams are repaired by parity; a message of one chunk is
                // repaired by resending it; the symbol is exactly one symbol long.
                if header.stream != stream::MULTICAST
                    || header.symbol == 0
                    || symbol.len() != usize::from(header.symbol)
                    || !(2..=MAX_REPAIR_CHUNKS).contains(&k)
                    || header.esi < k
                    || header.esi > MAX_REPAIR_ESI
                    || header.first.checked_add(u64::from(k)).is_none()
                {
                    return Err(WireError::Malformed);
                }
                Ok(Record::Repair { header, symbol })
            }
            kind::BLOCK_REPAIR => {
                let (header, symbol): (BlockRepairHeader, _) = take(body)?;
                let k = header.members.count_ones();
                let longest = header.lens.iter().copied().max().unwrap_or(0);
                if header.stream != stream::MULTICAST
                    || !header.first.is_multiple_of(REPAIR_BLOCK)
                    || k < 2
                    || header.lens.len() != k as usize
                    || header.symbol == 0
                    || longest != header.symbol
                    || symbol.len() != usize::from(header.symbol)
                    || header.esi < k
                    || header.esi > MAX_REPAIR_ESI
                    || header.first.checked_add(REPAIR_BLOCK).is_none()
                {
                    return Err(WireError::Malformed);
                }
                Ok(Record::BlockRepair { header, symbol })
            }
            kind => Ok(Record::Unknown { kind }),
        }
    }
}

/// Identity mode's unsealed frames (PROTOCOL.md §11.2).
pub mod identity;

/// Codes of inner messages: what a reassembled Fragment or stream message carries (PROTOCOL.md §6.6).
pub mod inner {
    /// A publication.
    pub const PUBLISH: u8 = 0x01;
    /// An RPC request.
    pub const REQUEST: u8 = 0x02;
    /// An RPC response.
    pub const RESPONSE: u8 = 0x03;
}

/// RPC response status codes (PROTOCOL.md §7).
pub mod status {
    /// The handler returned a reply.
    pub const OK: u8 = 0;
    /// The handler returned an error; the payload is its bytes.
    pub const REMOTE_ERROR: u8 = 1;
    /// The callee serves no such method.
    pub const NO_SUCH_METHOD: u8 = 2;
    /// The caller may not call this method.
    pub const DENIED: u8 = 3;
    /// A retransmitted request whose response the callee no longer holds.
    pub const RESPONSE_LOST: u8 = 4;
}

/// Longest RPC method name in bytes.
pub const MAX_METHOD_LEN: usize = 64;

/// A message carried by a reliable stream or by best-effort fragments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inner<'a> {
    /// A publication (topic not yet validated).
    Publish {
        /// Topic name.
        topic: &'a str,
        /// Payload.
        payload: &'a [u8],
    },
    /// An RPC request.
    Request {
        /// Caller-chosen id, unique per caller across its restarts.
        call_id: u64,
        /// The callee's boot epoch the caller addressed: another incarnation ignores the
        /// request, so a request captured before a callee restarted never runs again after it.
        to_epoch: u32,
        /// Method name.
        method: &'a str,
        /// Argument bytes.
        payload: &'a [u8],
    },
    /// An RPC response.
    Response {
        /// The request's id.
        call_id: u64,
        /// Outcome ([`status`]).
        status: u8,
        /// Reply or error bytes.
        payload: &'a [u8],
    },
}

impl<'a> Inner<'a> {
    /// Encodes the message: code, postcard header fields, then the payload bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            Inner::Publish { topic, payload } => {
                out.push(inner::PUBLISH);
                put(&mut out, topic);
                out.extend_from_slice(payload);
            }
            Inner::Request { call_id, to_epoch, method, payload } => {
                out.push(inner::REQUEST);
                put(&mut out, &(call_id, to_epoch, method));
                out.extend_from_slice(payload);
            }
            Inner::Response { call_id, status, payload } => {
                out.push(inner::RESPONSE);
                put(&mut out, &(call_id, status));
                out.extend_from_slice(payload);
            }
        }
        out
    }

    /// Parses a message; unknown codes and bad encodings are `Malformed`.
    pub fn parse(bytes: &'a [u8]) -> Result<Inner<'a>, WireError> {
        let (&code, rest) = bytes.split_first().ok_or(WireError::Truncated)?;
        match code {
            inner::PUBLISH => {
                let (topic, payload): (&str, _) = take(rest)?;
                Ok(Inner::Publish { topic, payload })
            }
            inner::REQUEST => {
                let ((call_id, to_epoch, method), payload): ((u64, u32, &str), _) = take(rest)?;
                if method.is_empty() || method.len() > MAX_METHOD_LEN {
                    return Err(WireError::Malformed);
                }
                Ok(Inner::Request { call_id, to_epoch, method, payload })
            }
            inner::RESPONSE => {
                let ((call_id, status), payload): ((u64, u8), _) = take(rest)?;
                Ok(Inner::Response { call_id, status, payload })
            }
            _ => Err(WireError::Malformed),
        }
    }
}

/// Appends the postcard encoding of `v`.
fn put<T: Serialize>(out: &mut Vec<u8>, v: &T) {
    let start = out.len();
    out.resize(start + size(v), 0);
    postcard::to_slice(v, &mut out[start..]).expect("sized by serialized_size");
}

/// Decodes a postcard value from the front of `body`, returning it and the bytes after it.
fn take<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<(T, &'a [u8]), WireError> {
    postcard::take_from_bytes(body).map_err(|_| WireError::Malformed)
}

/// Length of the postcard encoding of `v`.
fn size<T: Serialize + ?Sized>(v: &T) -> usize {
    postcard::experimental::serialized_size(v).unwrap_or(0)
}

/// Iterates over the records of an opened body. Stops at the first malformed record.
pub struct RecordIter<'a> {
    rest: &'a [u8],
}

impl<'a> RecordIter<'a> {
    /// Iterates over `body`, the plaintext between header and tag.
    pub fn new(body: &'a [u8]) -> Self {
        RecordIter { rest: body }
    }
}

impl<'a> Iterator for RecordIter<'a> {
    type Item = Result<Record<'a>, WireError>;

    fn next(&mut self) -> Option<Self::Item> {
        let (&code, rest) = self.rest.split_first()?;
        let item = take_varint(rest).and_then(|(len, rest)| {
            if len > rest.len() {
                return Err(WireError::Truncated);
            }
            let (body, after) = rest.split_at(len);
            self.rest = after;
            Record::parse(code, body)
        });
        if item.is_err() {
            self.rest = &[];
        }
        Some(item)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip() {
        let h = Header { suite: SUITE_PSK, net_tag: 0xab, sender: NodeId(0x0102030405060708), pn: MAX_PN };
        let mut buf = [0u8; FRAME_OVERHEAD];
        h.emit(&mut buf);
        assert_eq!(&buf[..HEADER_LEN], &[0x10, 0xab, 1, 2, 3, 4, 5, 6, 7, 8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
        assert_eq!(Header::parse(&buf), Ok(h));
        assert_eq!(Header::parse(&buf[..31]), Err(WireError::Truncated));
        buf[0] = 0x20;
        assert_eq!(Header::parse(&buf), Err(WireError::UnsupportedVersion));
        buf[0] = 0x16; // identity mode's multicast suite: parsed, the node decides
        assert_eq!(Header::parse(&buf).map(|h| h.suite), Ok(SUITE_MULTICAST));
        buf[0] = 0x17; // PSK mode's unicast suite
        assert_eq!(Header::parse(&buf).map(|h| h.suite), Ok(SUITE_PSK_UNICAST));
        buf[0] = 0x18;
        assert_eq!(Header::parse(&buf), Err(WireError::UnsupportedVersion));
        assert_eq!(Header::parse(&[0x10; MAX_DATAGRAM + 1]), Err(WireError::Oversized));
    }

    #[test]
    fn records_round_trip_and_unknown_is_skipped() {
        let recs = [
            Record::Beacon(Beacon { epoch: 3, interval_ms: 5000, name: "kitchen", features: 1 }),
            Record::Publish { topic: "a/b", payload: &[0, 0xff, 0] },
            Record::Unknown { kind: 0x7f },
            Record::Publish { topic: "e", payload: &[] },
            Record::Leave,
        ];
        let mut out = Vec::new();
        for r in &recs {
            let before = out.len();
            r.emit(&mut out);
            assert_eq!(out.len() - before, r.encoded_len());
        }
        let parsed: Vec<_> = RecordIter::new(&out).collect::<Result<_, _>>().unwrap();
        assert_eq!(parsed, recs);
    }

    #[test]
    fn bad_records_are_errors_not_panics() {
        assert_eq!(RecordIter::new(&[kind::PUBLISH, 5, 1]).next(), Some(Err(WireError::Truncated)));
        assert_eq!(RecordIter::new(&[kind::PUBLISH, 2, 5, b'a']).next(), Some(Err(WireError::Truncated)));
        assert_eq!(RecordIter::new(&[kind::PUBLISH, 3, 2, 0xff, 0xfe]).next(), Some(Err(WireError::Malformed)));
        assert_eq!(RecordIter::new(&[kind::PUBLISH, 0x80, 0x00]).next(), Some(Err(WireError::Malformed)));
        assert_eq!(RecordIter::new(&[kind::BEACON, 1, 0x80]).next(), Some(Err(WireError::Malformed)));
        let mut it = RecordIter::new(&[kind::LEAVE, 9]);
        assert_eq!(it.next(), Some(Err(WireError::Truncated)));
        assert_eq!(it.next(), None);
    }

    #[test]
    fn varint_lengths() {
        for (v, n) in [(0, 1), (127, 1), (128, 2), (16383, 2), (16384, 3)] {
            assert_eq!(varint_len(v), n);
            let mut out = Vec::new();
            push_varint(&mut out, v);
            assert_eq!(out.len(), n);
            assert_eq!(take_varint(&out), Ok((v, &[][..])));
        }
    }
}
