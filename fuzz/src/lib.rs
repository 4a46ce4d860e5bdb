//! Shared pieces of the Starling fuzz targets.
//!
//! # Map
//! - [`Reader`]: turns the fuzzer's bytes into numbers and slices without ever failing.
//! - [`ops`]: the step language of the stateful node targets ([`Op`]), with an encoder so the
//!   corpus generator writes seeds in exactly the format the targets read.
//! - [`harness`]: a [`Driver`] that feeds steps to a node under test and checks its invariants
//!   after every step, generic over a [`Mode`] (how frames are sealed and opened) so an identity
//!   mode target is one more `Mode` and one more file in `fuzz_targets/`.
//! - [`psk`]: the PSK [`Mode`].

pub mod harness;
pub mod identity;
pub mod ops;
pub mod psk;

pub use harness::{Driver, Mode};
pub use ops::{AppOp, Op, PnChoice};

/// The network key of PROTOCOL.md §10, so the spec's test-vector frames are genuine frames for
/// the nodes under test and seed the corpus as they are.
pub const NETWORK_KEY: [u8; 32] = [
    0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f, 0x10, 0x11, 0x12,
    0x13, 0x14, 0x15, 0x16, 0x17, 0x18, 0x19, 0x1a, 0x1b, 0x1c, 0x1d, 0x1e, 0x1f,
];

/// The sender of the PROTOCOL.md vectors: the first fixed peer of the node targets.
pub const PEER_A: u64 = 0x0123_4567_89ab_cdef;
/// A second fixed peer, so targets reach code that tells peers apart (suppression, tables).
pub const PEER_B: u64 = 0x0fed_cba9_8765_4321;
/// The node under test.
pub const VICTIM: u64 = 0x0c0c_0c0c_0c0c_0c0c;

/// Reads little-endian numbers and length-prefixed slices from fuzz input. Past the end every
/// read yields zeros or an empty slice, so any input is a valid program.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    /// A reader over `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Reader { data }
    }

    /// True when everything was read.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Up to `n` bytes (fewer at the end of the input).
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (head, tail) = self.data.split_at(n.min(self.data.len()));
        self.data = tail;
        head
    }

    /// The rest of the input.
    pub fn rest(&mut self) -> &'a [u8] {
        self.bytes(self.data.len())
    }

    /// One byte.
    pub fn u8(&mut self) -> u8 {
        self.bytes(1).first().copied().unwrap_or(0)
    }

    /// Two bytes, little endian.
    pub fn u16(&mut self) -> u16 {
        let mut b = [0u8; 2];
        let s = self.bytes(2);
        b[..s.len()].copy_from_slice(s);
        u16::from_le_bytes(b)
    }

    /// Eight bytes, little endian.
    pub fn u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        let s = self.bytes(8);
        b[..s.len()].copy_from_slice(s);
        u64::from_le_bytes(b)
    }

    /// A slice prefixed by its length as one byte.
    pub fn short(&mut self) -> &'a [u8] {
        let n = self.u8();
        self.bytes(n.into())
    }

    /// A slice prefixed by its length as two bytes.
    pub fn long(&mut self) -> &'a [u8] {
        let n = self.u16();
        self.bytes(n.into())
    }
}

/// Appends `b` with a one-byte length prefix (the inverse of [`Reader::short`]); longer slices are cut.
pub fn put_short(out: &mut Vec<u8>, b: &[u8]) {
    let b = &b[..b.len().min(255)];
    out.push(b.len() as u8);
    out.extend_from_slice(b);
}

/// Appends `b` with a two-byte length prefix (the inverse of [`Reader::long`]); longer slices are cut.
pub fn put_long(out: &mut Vec<u8>, b: &[u8]) {
    let b = &b[..b.len().min(usize::from(u16::MAX))];
    out.extend_from_slice(&(b.len() as u16).to_le_bytes());
    out.extend_from_slice(b);
}
