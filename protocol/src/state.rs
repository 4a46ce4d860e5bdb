//! What a node persists between boots: its id, its boot epoch and its packet-number lease
//! (PROTOCOL.md §3.3). The core only encodes and decodes it; drivers store it (a state file on
//! hosts, a flash sector on the ESP32).

use crate::wire::{NodeId, MAX_PN};
use blake2::digest::{Update, VariableOutput};
use blake2::Blake2sVar;
use core::fmt;

/// Encoded size of [`PersistedState`].
pub const STATE_LEN: usize = 32;
const MAGIC: &[u8; 4] = b"STL1";

/// Default number of packet numbers reserved per write: a write every million frames.
pub const DEFAULT_LEASE_BLOCK: u64 = 1 << 20;

/// The record a node keeps in stable storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PersistedState {
    /// The node's id, chosen at random on first start.
    pub node_id: NodeId,
    /// Boot counter: incremented at every start.
    pub epoch: u32,
    /// Every packet number below this may have been used; the next boot starts here.
    pub lease_end: u64,
}

/// Why stored state was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StateError {
    /// Wrong length or magic: not a Starling state record.
    NotState,
    /// The checksum does not match: a torn or corrupted write.
    Corrupt,
    /// The packet-number space is used up; the node needs a new id.
    Exhausted,
}

impl fmt::Display for StateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StateError::NotState => "not a Starling state record (wrong size or magic)",
            StateError::Corrupt => "state record checksum mismatch (torn or corrupted write)",
            StateError::Exhausted => "packet-number space exhausted; delete the state to get a new node id",
        })
    }
}

impl core::error::Error for StateError {}

fn checksum(body: &[u8]) -> [u8; 4] {
    let mut h = Blake2sVar::new(4).expect("4 is a valid BLAKE2s output length");
    h.update(body);
    let mut out = [0u8; 4];
    h.finalize_variable(&mut out).expect("length matches");
    out
}

impl PersistedState {
    /// Fixed 32-byte encoding: magic, id, epoch, lease end, 4 zero bytes, BLAKE2s-32 checksum.
    pub fn encode(&self) -> [u8; STATE_LEN] {
        let mut b = [0u8; STATE_LEN];
        b[0..4].copy_from_slice(MAGIC);
        b[4..12].copy_from_slice(&self.node_id.to_bytes());
        b[12..16].copy_from_slice(&self.epoch.to_be_bytes());
        b[16..24].copy_from_slice(&self.lease_end.to_be_bytes());
        let c = checksum(&b[..28]);
        b[28..32].copy_from_slice(&c);
        b
    }

    /// Decodes and verifies a record written by [`encode`](Self::encode).
    pub fn decode(b: &[u8]) -> Result<Self, StateError> {
        if b.len() != STATE_LEN || &b[0..4] != MAGIC {
            return Err(StateError::NotState);
        }
        if checksum(&b[..28]) != b[28..32] {
            return Err(StateError::Corrupt);
        }
        let u64_at = |r: core::ops::Range<usize>| {
            let mut x = [0u8; 8];
            x.copy_from_slice(&b[r]);
            u64::from_be_bytes(x)
        };
        let mut e = [0u8; 4];
        e.copy_from_slice(&b[12..16]);
        Ok(PersistedState {
            node_id: NodeId::from_u64(u64_at(4..12)),
            epoch: u32::from_be_bytes(e),
            lease_end: u64_at(16..24),
        })
    }
}

/// Everything a node needs to start: identity, epoch and the packet numbers it may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Boot {
    /// This node's id.
    pub node_id: NodeId,
    /// This boot's epoch, announced in beacons so peers see restarts.
    pub epoch: u32,
    /// First packet number of this boot.
    pub first_pn: u64,
    /// Packet numbers up to (excluding) this are covered by a durable lease.
    pub lease_end: u64,
}

impl Boot {
    /// Starts a boot from the previous stored state, or from a fresh id when there is none.
    ///
    /// Returns the boot and the state that must be written durably *before* the node is
    /// created: the lease end moves `block` past every packet number the last boot may have used.
    pub fn resume(
        prev: Option<PersistedState>,
        fresh_id: NodeId,
        block: u64,
    ) -> Result<(Boot, PersistedState), StateError> {
        let block = block.max(1);
        let (node_id, epoch, first_pn) = match prev {
            Some(p) => (p.node_id, p.epoch.wrapping_add(1), p.lease_end),
            None => (fresh_id, 1, 0),
        };
        let lease_end = first_pn.checked_add(block).filter(|&e| e <= MAX_PN + 1).ok_or(StateError::Exhausted)?;
        Ok((Boot { node_id, epoch, first_pn, lease_end }, PersistedState { node_id, epoch, lease_end }))
    }

    /// A node with no stable storage: a fresh random id every start, counting from zero.
    ///
    /// Safe because the AEAD key is derived from the id: a new id is a new key (PROTOCOL.md §3.3).
    pub fn ephemeral(fresh_id: NodeId) -> Boot {
        Boot { node_id: fresh_id, epoch: 1, first_pn: 0, lease_end: MAX_PN + 1 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_decode_and_corruption() {
        let s = PersistedState { node_id: NodeId::from_u64(0xdead_beef), epoch: 7, lease_end: 1 << 40 };
        let b = s.encode();
        assert_eq!(PersistedState::decode(&b), Ok(s));
        for i in 4..STATE_LEN {
            let mut t = b;
            t[i] ^= 0x80;
            assert_eq!(PersistedState::decode(&t), Err(StateError::Corrupt), "byte {i}");
        }
        assert_eq!(PersistedState::decode(&b[..31]), Err(StateError::NotState));
    }

    #[test]
    fn resume_never_reuses_packet_numbers() {
        let (b1, s1) = Boot::resume(None, NodeId::from_u64(1), 100).unwrap();
        assert_eq!((b1.epoch, b1.first_pn, b1.lease_end), (1, 0, 100));
        let (b2, s2) = Boot::resume(Some(s1), NodeId::from_u64(99), 100).unwrap();
        assert_eq!(b2.node_id, NodeId::from_u64(1), "the stored id wins over the fresh one");
        assert_eq!((b2.epoch, b2.first_pn, b2.lease_end), (2, 100, 200));
        assert!(b2.first_pn >= s1.lease_end);
        let worn = PersistedState { lease_end: MAX_PN, ..s2 };
        assert_eq!(Boot::resume(Some(worn), NodeId::from_u64(1), 100), Err(StateError::Exhausted));
    }
}
