//! PSK-mode keys and frame sealing (PROTOCOL.md §3).
//!
//! The network key is never used directly: every purpose gets its own key derived with keyed
//! BLAKE2s, and every sender gets its own AEAD key so that a nonce only has to be unique per sender.

use blake2::digest::{KeyInit, Mac};
use blake2::Blake2sMac256;
use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce, Tag};
use core::fmt;

use crate::wire::{NodeId, TAG_LEN};

/// Length of a network key in bytes.
pub const KEY_LEN: usize = 32;

/// Domain-separation labels for key derivation (PROTOCOL.md §3.1).
const LABEL_NET_TAG: &[u8] = b"starling/v1/net-tag";
const LABEL_DATA: &[u8] = b"starling/v1/data";
const LABEL_SENDER: &[u8] = b"starling/v1/sender";
const LABEL_PAIR: &[u8] = b"starling/v1/pair";

/// The 32-byte pre-shared key that every member of a PSK-mode network holds.
///
/// `Debug` never prints the key, so it cannot leak into logs.
#[derive(Clone, PartialEq, Eq)]
pub struct NetworkKey([u8; KEY_LEN]);

/// Why a textual network key was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyParseError {
    /// The text holds no key at all (only blank or `#` comment lines).
    Missing,
    /// The key is not 64 hexadecimal digits.
    WrongLength {
        /// Number of characters found on the key line.
        found: usize,
    },
    /// A character that is not a hexadecimal digit.
    NotHex {
        /// Character offset within the key line.
        at: usize,
    },
    /// More than one non-comment line.
    ExtraLines,
}

impl fmt::Display for KeyParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyParseError::Missing => write!(f, "no key found; create one with `starling keygen > net.key`"),
            KeyParseError::WrongLength { found } => write!(
                f,
                "a network key is 64 hexadecimal digits (32 bytes), found {found} characters; create one with `starling keygen`"
            ),
            KeyParseError::NotHex { at } => {
                write!(f, "character {} of the key is not a hexadecimal digit; a network key is 64 hexadecimal digits", at + 1)
            }
            KeyParseError::ExtraLines => {
                write!(f, "the key text has more than one key line; keep one key per file ('#' starts a comment)")
            }
        }
    }
}

impl core::error::Error for KeyParseError {}

impl NetworkKey {
    /// Wraps raw key bytes (for example from a hardware RNG or a provisioning blob).
    pub const fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        NetworkKey(bytes)
    }

    /// A fresh random key from the operating system's randomness (what `starling keygen` writes),
    /// for a new network or a test mesh of its own. Host builds only (feature `std`).
    ///
    /// # Panics
    /// If the OS cannot supply randomness (no such host is supported).
    #[cfg(feature = "std")]
    pub fn generate() -> Self {
        let mut key = [0u8; KEY_LEN];
        getrandom::fill(&mut key).expect("the OS supplies randomness");
        NetworkKey(key)
    }

    /// The raw key bytes, for writing a key file.
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// Parses the text form written by `starling keygen`: one line of 64 hex digits; blank lines
    /// and lines starting with `#` are ignored, surrounding whitespace is trimmed.
    pub fn parse(text: &str) -> Result<Self, KeyParseError> {
        let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#'));
        let line = lines.next().ok_or(KeyParseError::Missing)?;
        if lines.next().is_some() {
            return Err(KeyParseError::ExtraLines);
        }
        if line.len() != 2 * KEY_LEN {
            return Err(KeyParseError::WrongLength { found: line.chars().count() });
        }
        let mut key = [0u8; KEY_LEN];
        crate::hex::decode_into(line, &mut key).map_err(|at| KeyParseError::NotHex { at })?;
        Ok(NetworkKey(key))
    }

    /// Writes the key as 64 lowercase hex digits into `out`.
    pub fn to_hex(&self, out: &mut [u8; 2 * KEY_LEN]) {
        crate::hex::encode_into(&self.0, out);
    }
}

impl fmt::Debug for NetworkKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NetworkKey(<redacted>)")
    }
}

/// Keyed BLAKE2s-256 as a PRF: `BLAKE2s(key, label || context)`.
fn prf(key: &[u8; 32], label: &[u8], context: &[u8]) -> [u8; 32] {
    let mut mac = <Blake2sMac256 as KeyInit>::new_from_slice(key).expect("32-byte keys are valid for BLAKE2s");
    mac.update(label);
    mac.update(context);
    mac.finalize().into_bytes().into()
}

/// Keys derived once from the network key (PROTOCOL.md §3.1).
#[derive(Clone)]
pub struct NetworkKeys {
    net_tag: u8,
    data: [u8; 32],
}

impl fmt::Debug for NetworkKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NetworkKeys").field("net_tag", &self.net_tag).finish_non_exhaustive()
    }
}

impl NetworkKeys {
    /// Derives the per-purpose keys of a network.
    pub fn derive(key: &NetworkKey) -> Self {
        NetworkKeys { net_tag: prf(&key.0, LABEL_NET_TAG, &[])[0], data: prf(&key.0, LABEL_DATA, &[]) }
    }

    /// The one-byte network tag carried in every header: a cheap pre-filter for foreign networks.
    pub fn net_tag(&self) -> u8 {
        self.net_tag
    }

    /// The AEAD key of one sender: `BLAKE2s(data_key, "starling/v1/sender" || sender_id)`.
    pub fn sender_key(&self, sender: NodeId) -> SenderKey {
        SenderKey::new(prf(&self.data, LABEL_SENDER, &sender.to_bytes()))
    }

    /// The AEAD key of unicast frames from `sender` to `receiver`:
    /// `BLAKE2s(data_key, "starling/v1/pair" || sender_id || receiver_id)`. A frame sealed with it
    /// opens only at `receiver`, so a captured call cannot be replayed to another node.
    pub fn pair_key(&self, sender: NodeId, receiver: NodeId) -> SenderKey {
        let mut ids = [0u8; 16];
        ids[..8].copy_from_slice(&sender.to_bytes());
        ids[8..].copy_from_slice(&receiver.to_bytes());
        SenderKey::new(prf(&self.data, LABEL_PAIR, &ids))
    }
}

/// One sender's ChaCha20-Poly1305 key, used by that sender to seal and by everyone else to open.
#[derive(Clone)]
pub struct SenderKey {
    aead: ChaCha20Poly1305,
}

impl fmt::Debug for SenderKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SenderKey(<redacted>)")
    }
}

/// The 96-bit nonce of packet number `pn`: four zero bytes, then `pn` as 64-bit big endian.
fn nonce(pn: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&pn.to_be_bytes());
    n.into()
}

/// The AEAD open failed: wrong key, forged or corrupted frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenError;

impl SenderKey {
    fn new(raw: [u8; 32]) -> Self {
        SenderKey { aead: ChaCha20Poly1305::new(Key::from_slice(&raw)) }
    }

    /// A key from raw bytes: identity mode's session and multicast keys.
    pub fn from_raw(raw: [u8; 32]) -> Self {
        SenderKey::new(raw)
    }

    /// Encrypts `body` in place and writes the tag after it: `buf = header || body || tag`.
    /// `buf[..aad_len]` is the header, authenticated but not encrypted.
    pub fn seal(&self, pn: u64, buf: &mut [u8], aad_len: usize) {
        let (aad, rest) = buf.split_at_mut(aad_len);
        let body_len = rest.len() - TAG_LEN;
        let (body, tag_out) = rest.split_at_mut(body_len);
        let tag = self
            .aead
            .encrypt_in_place_detached(&nonce(pn), aad, body)
            .expect("ChaCha20-Poly1305 only fails beyond 256 GiB");
        tag_out.copy_from_slice(&tag);
    }

    /// Verifies and decrypts `buf = header || ciphertext || tag` in place; on success the
    /// plaintext is `buf[aad_len..len - TAG_LEN]`. On failure the buffer content is unspecified.
    pub fn open(&self, pn: u64, buf: &mut [u8], aad_len: usize) -> Result<(), OpenError> {
        if buf.len() < aad_len + TAG_LEN {
            return Err(OpenError);
        }
        let (aad, rest) = buf.split_at_mut(aad_len);
        let body_len = rest.len() - TAG_LEN;
        let (body, tag) = rest.split_at_mut(body_len);
        let tag = Tag::clone_from_slice(tag);
        self.aead.decrypt_in_place_detached(&nonce(pn), aad, body, &tag).map_err(|_| OpenError)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_accepts_keygen_output_and_names_errors() {
        let hex = "00112233445566778899aabbccddeeff00112233445566778899AABBCCDDEEFF";
        let k = NetworkKey::parse(&alloc::format!("# comment\n\n  {hex}  \n")).unwrap();
        assert_eq!(k.as_bytes()[1], 0x11);
        assert_eq!(k.as_bytes()[31], 0xff);
        assert_eq!(NetworkKey::parse("# only\n"), Err(KeyParseError::Missing));
        assert_eq!(NetworkKey::parse("abcd"), Err(KeyParseError::WrongLength { found: 4 }));
        let mut bad = alloc::string::String::from(hex);
        bad.replace_range(10..11, "g");
        assert_eq!(NetworkKey::parse(&bad), Err(KeyParseError::NotHex { at: 10 }));
        assert_eq!(NetworkKey::parse(&alloc::format!("{hex}\n{hex}")), Err(KeyParseError::ExtraLines));
        assert!(alloc::format!("{k:?}").contains("redacted"));
    }

    #[test]
    fn seal_open_round_trip_and_tamper() {
        let keys = NetworkKeys::derive(&NetworkKey::from_bytes([7; 32]));
        let sk = keys.sender_key(NodeId::from_u64(42));
        let mut buf = [1u8, 2, 3, 4, b'h', b'i', 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        sk.seal(9, &mut buf, 4);
        let sealed = buf;
        sk.open(9, &mut buf, 4).unwrap();
        assert_eq!(&buf[4..6], b"hi");
        for i in 0..sealed.len() {
            let mut t = sealed;
            t[i] ^= 0x01;
            assert_eq!(sk.open(9, &mut t, 4), Err(OpenError), "flip at {i} must fail");
        }
        let mut t = sealed;
        assert_eq!(sk.open(10, &mut t, 4), Err(OpenError), "wrong packet number must fail");
        let other = keys.sender_key(NodeId::from_u64(43));
        let mut t = sealed;
        assert_eq!(other.open(9, &mut t, 4), Err(OpenError), "another sender's key must fail");
    }
}
