//! Identity mode's unsealed frames (PROTOCOL.md §11.2): Announce, HandshakeInit, HandshakeResp
//! and Cookie, parsed and emitted here with every offset named once, as smoltcp's `wire` does,
//! so the node (`node/identity.rs`) never indexes into a datagram. Parsing checks only the
//! layout (suite, packet number 0, lengths, zero padding); MACs, Noise and the allowlist are
//! the node's business. Every parser takes a whole datagram, header included, and never panics.

use alloc::vec::Vec;

use super::{Header, NodeId, WireError, HEADER_LEN, SUITE_ANNOUNCE, SUITE_COOKIE, SUITE_HS_INIT, SUITE_HS_RESP};

/// Length of a MAC (mac1, mac2) on the wire.
pub const MAC_LEN: usize = 16;
/// Unsealed frames carry this in the packet-number field.
pub const UNSEALED_PN: u64 = 0;
/// Payload of message 1: the initiator's epoch and a counter that only grows.
pub const MSG1_PAYLOAD_LEN: usize = 4 + 8;
/// Noise IK message 1: e (32), s (32 + 16), payload (12 + 16).
pub const MSG1_LEN: usize = 32 + 48 + MSG1_PAYLOAD_LEN + 16;
/// Zero bytes after message 1, so a HandshakeInit is at least as large as any HandshakeResp.
pub const INIT_PAD: usize = 12;
/// Length of a whole HandshakeInit frame (and of an Announce).
pub const INIT_FRAME_LEN: usize = HEADER_LEN + 8 + MSG1_LEN + INIT_PAD + 2 * MAC_LEN;
/// Length of a whole Announce frame: padded to a HandshakeInit's size, so a forged Announce
/// never makes a node send more than it cost.
pub const ANNOUNCE_FRAME_LEN: usize = INIT_FRAME_LEN;
/// What an Announce says before its padding: public key, epoch.
const ANNOUNCE_FIELDS: usize = 32 + 4;
/// A group key in a handshake payload: tag, key, floor.
pub const PAYLOAD_KEY_LEN: usize = 1 + 32 + 8;
/// Longest Noise message 2: e (32), payload (epoch 4 + two multicast keys) + 16.
pub const MSG2_MAX: usize = 32 + 4 + 2 * PAYLOAD_KEY_LEN + 16;
/// Shortest Noise message 2: e (32) and an empty payload's tag (16).
pub const MSG2_MIN: usize = 32 + 16;
/// A Cookie frame's body after the receiver id: nonce (24), sealed cookie (16 + 16).
pub const COOKIE_REPLY_LEN: usize = 24 + 16 + 16;

fn header(frame: &[u8], suite: u8) -> Result<Header, WireError> {
    let h = Header::parse(frame)?;
    if h.suite != suite || h.pn != UNSEALED_PN {
        return Err(WireError::Malformed);
    }
    Ok(h)
}

fn id_at(frame: &[u8], at: usize) -> NodeId {
    let mut b = [0u8; 8];
    b.copy_from_slice(&frame[at..at + 8]);
    NodeId::from_u64(u64::from_be_bytes(b))
}

fn start(suite: u8, net_tag: u8, sender: NodeId, len: usize) -> Vec<u8> {
    let mut f = alloc::vec![0u8; HEADER_LEN];
    Header { suite, net_tag, sender, pn: UNSEALED_PN }.emit(&mut f);
    f.reserve(len - HEADER_LEN);
    f
}

/// Suite 1: a node's public key and epoch, multicast with every beacon, unauthenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Announce {
    /// The network tag (byte 1).
    pub net_tag: u8,
    /// The announcing node's id (it must derive from `key`; the node checks).
    pub sender: NodeId,
    /// Its X25519 public key.
    pub key: [u8; 32],
    /// Its boot epoch.
    pub epoch: u32,
}

impl Announce {
    /// Parses a whole Announce frame: exactly [`ANNOUNCE_FRAME_LEN`] bytes, zero padding.
    pub fn parse(frame: &[u8]) -> Result<Self, WireError> {
        let h = header(frame, SUITE_ANNOUNCE)?;
        if frame.len() != ANNOUNCE_FRAME_LEN {
            return Err(WireError::Malformed);
        }
        let body = &frame[HEADER_LEN..];
        if body[ANNOUNCE_FIELDS..].iter().any(|&b| b != 0) {
            return Err(WireError::Malformed);
        }
        let mut key = [0u8; 32];
        key.copy_from_slice(&body[..32]);
        let epoch = u32::from_be_bytes([body[32], body[33], body[34], body[35]]);
        Ok(Announce { net_tag: h.net_tag, sender: h.sender, key, epoch })
    }

    /// The whole frame.
    pub fn emit(&self) -> Vec<u8> {
        let mut f = start(SUITE_ANNOUNCE, self.net_tag, self.sender, ANNOUNCE_FRAME_LEN);
        f.extend_from_slice(&self.key);
        f.extend_from_slice(&self.epoch.to_be_bytes());
        f.resize(ANNOUNCE_FRAME_LEN, 0);
        f
    }
}

/// Suite 2: message 1 of a handshake, unicast to `receiver`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandshakeInit<'a> {
    /// The frame's header.
    pub header: Header,
    /// The node it is meant for.
    pub receiver: NodeId,
    /// Noise message 1.
    pub message: &'a [u8],
    /// mac1 (covers everything before it, padding included).
    pub mac1: [u8; MAC_LEN],
    /// mac2 (zero without a cookie).
    pub mac2: [u8; MAC_LEN],
}

impl<'a> HandshakeInit<'a> {
    /// Where mac1 starts in the frame: it covers `frame[..MAC1_AT]`.
    pub const MAC1_AT: usize = INIT_FRAME_LEN - 2 * MAC_LEN;
    /// Where mac2 starts: it covers `frame[..MAC2_AT]`.
    pub const MAC2_AT: usize = INIT_FRAME_LEN - MAC_LEN;

    /// Parses a whole HandshakeInit frame: exactly [`INIT_FRAME_LEN`] bytes, zero padding.
    pub fn parse(frame: &'a [u8]) -> Result<Self, WireError> {
        let header = header(frame, SUITE_HS_INIT)?;
        if frame.len() != INIT_FRAME_LEN {
            return Err(WireError::Malformed);
        }
        let msg_at = HEADER_LEN + 8;
        if frame[msg_at + MSG1_LEN..Self::MAC1_AT].iter().any(|&b| b != 0) {
            return Err(WireError::Malformed);
        }
        let mut mac1 = [0u8; MAC_LEN];
        mac1.copy_from_slice(&frame[Self::MAC1_AT..Self::MAC2_AT]);
        let mut mac2 = [0u8; MAC_LEN];
        mac2.copy_from_slice(&frame[Self::MAC2_AT..]);
        Ok(HandshakeInit {
            header,
            receiver: id_at(frame, HEADER_LEN),
            message: &frame[msg_at..msg_at + MSG1_LEN],
            mac1,
            mac2,
        })
    }

    /// The frame up to mac1 (header, receiver id, message 1, padding): what mac1 covers. The
    /// caller appends mac1, then mac2 ([`Self::MAC1_AT`], [`Self::MAC2_AT`]).
    pub fn emit_unmacked(net_tag: u8, sender: NodeId, receiver: NodeId, message: &[u8]) -> Vec<u8> {
        debug_assert_eq!(message.len(), MSG1_LEN);
        let mut f = start(SUITE_HS_INIT, net_tag, sender, INIT_FRAME_LEN);
        f.extend_from_slice(&receiver.to_bytes());
        f.extend_from_slice(message);
        f.resize(Self::MAC1_AT, 0);
        f
    }
}

/// Suite 3: message 2 of a handshake, unicast back to the initiator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandshakeResp<'a> {
    /// The frame's header.
    pub header: Header,
    /// The initiator it answers.
    pub receiver: NodeId,
    /// Noise message 2.
    pub message: &'a [u8],
    /// mac1 (covers everything before it and the mac1 of the message 1 it answers).
    pub mac1: [u8; MAC_LEN],
}

impl<'a> HandshakeResp<'a> {
    /// Parses a whole HandshakeResp frame (message 2 between [`MSG2_MIN`] and [`MSG2_MAX`]).
    pub fn parse(frame: &'a [u8]) -> Result<Self, WireError> {
        let header = header(frame, SUITE_HS_RESP)?;
        let fixed = HEADER_LEN + 8 + MAC_LEN;
        if frame.len() < fixed + MSG2_MIN || frame.len() > fixed + MSG2_MAX {
            return Err(WireError::Malformed);
        }
        let mac1_at = frame.len() - MAC_LEN;
        let mut mac1 = [0u8; MAC_LEN];
        mac1.copy_from_slice(&frame[mac1_at..]);
        Ok(HandshakeResp { header, receiver: id_at(frame, HEADER_LEN), message: &frame[HEADER_LEN + 8..mac1_at], mac1 })
    }

    /// What mac1 covers in `frame` (a frame [`parse`](Self::parse) accepted): all before it.
    pub fn covered(frame: &[u8]) -> &[u8] {
        &frame[..frame.len().saturating_sub(MAC_LEN)]
    }

    /// The frame up to mac1; the caller appends mac1.
    pub fn emit_unmacked(net_tag: u8, sender: NodeId, receiver: NodeId, message: &[u8]) -> Vec<u8> {
        let mut f = start(SUITE_HS_RESP, net_tag, sender, HEADER_LEN + 8 + message.len() + MAC_LEN);
        f.extend_from_slice(&receiver.to_bytes());
        f.extend_from_slice(message);
        f
    }
}

/// Suite 4: a cookie, sealed for the initiator whose message 1 was refused under load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CookieReply<'a> {
    /// The frame's header.
    pub header: Header,
    /// The initiator it answers.
    pub receiver: NodeId,
    /// Nonce and sealed cookie ([`COOKIE_REPLY_LEN`] bytes).
    pub reply: &'a [u8; COOKIE_REPLY_LEN],
}

impl<'a> CookieReply<'a> {
    /// Parses a whole Cookie frame.
    pub fn parse(frame: &'a [u8]) -> Result<Self, WireError> {
        let header = header(frame, SUITE_COOKIE)?;
        if frame.len() != HEADER_LEN + 8 + COOKIE_REPLY_LEN {
            return Err(WireError::Malformed);
        }
        let reply = frame[HEADER_LEN + 8..].try_into().map_err(|_| WireError::Malformed)?;
        Ok(CookieReply { header, receiver: id_at(frame, HEADER_LEN), reply })
    }

    /// The whole frame.
    pub fn emit(&self) -> Vec<u8> {
        let mut f = start(SUITE_COOKIE, self.header.net_tag, self.header.sender, HEADER_LEN + 8 + COOKIE_REPLY_LEN);
        f.extend_from_slice(&self.receiver.to_bytes());
        f.extend_from_slice(self.reply);
        f
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_bad_layouts_are_refused() {
        let a = Announce { net_tag: 7, sender: NodeId::from_u64(1), key: [9; 32], epoch: 3 };
        let f = a.emit();
        assert_eq!(f.len(), ANNOUNCE_FRAME_LEN);
        assert_eq!(Announce::parse(&f), Ok(a));
        let mut padded = f.clone();
        padded[ANNOUNCE_FRAME_LEN - 1] = 1;
        assert_eq!(Announce::parse(&padded), Err(WireError::Malformed));
        assert_eq!(Announce::parse(&f[..52]), Err(WireError::Malformed), "the unpadded form of 48cd6cf");

        let msg = [5u8; MSG1_LEN];
        let mut i = HandshakeInit::emit_unmacked(7, NodeId::from_u64(1), NodeId::from_u64(2), &msg);
        assert_eq!(i.len(), HandshakeInit::MAC1_AT);
        i.extend_from_slice(&[1; MAC_LEN]);
        i.extend_from_slice(&[2; MAC_LEN]);
        let p = HandshakeInit::parse(&i).unwrap();
        assert_eq!((p.receiver, p.message, p.mac1, p.mac2), (NodeId::from_u64(2), &msg[..], [1; 16], [2; 16]));
        assert_eq!(HandshakeInit::parse(&i[..INIT_FRAME_LEN - 1]), Err(WireError::Malformed));
        assert_eq!(Announce::parse(&i), Err(WireError::Malformed), "suite checked");

        let mut r = HandshakeResp::emit_unmacked(7, NodeId::from_u64(2), NodeId::from_u64(1), &[3; MSG2_MIN]);
        r.extend_from_slice(&[4; MAC_LEN]);
        let p = HandshakeResp::parse(&r).unwrap();
        assert_eq!((p.receiver, p.message.len(), p.mac1), (NodeId::from_u64(1), MSG2_MIN, [4; 16]));
        assert_eq!(HandshakeResp::covered(&r).len(), r.len() - MAC_LEN);
        assert_eq!(HandshakeResp::parse(&r[..r.len() - 1]), Err(WireError::Malformed));

        let reply = [6u8; COOKIE_REPLY_LEN];
        let h = Header { suite: SUITE_COOKIE, net_tag: 7, sender: NodeId::from_u64(2), pn: 0 };
        let c = CookieReply { header: h, receiver: NodeId::from_u64(1), reply: &reply };
        assert_eq!(CookieReply::parse(&c.emit()), Ok(c));
    }
}
