//! Identity-mode handshakes (PROTOCOL.md §11.3): Noise `IK` through `snow`, with randomness
//! injected by the node, plus WireGuard-style `mac1`/`mac2` fields and cookies that let a node
//! under load refuse handshakes before paying for any Diffie-Hellman.

use alloc::boxed::Box;
use alloc::vec::Vec;
use blake2::digest::consts::U16;
use blake2::digest::{KeyInit, Mac};
use blake2::{Blake2sMac, Blake2sMac256};
use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{Tag, XChaCha20Poly1305, XNonce};
use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use snow::params::{CipherChoice, DHChoice, HashChoice};
use snow::resolvers::{CryptoResolver, DefaultResolver};
use snow::types::{Cipher, Dh, Hash, Random};

use crate::identity::{Identity, PublicKey};

/// The Noise protocol name: every handshake of a Starling network uses it.
pub const PATTERN: &str = "Noise_IK_25519_ChaChaPoly_BLAKE2s";
/// Length of `mac1` and `mac2`.
pub const MAC_LEN: usize = 16;
/// Length of a cookie.
pub const COOKIE_LEN: usize = 16;
/// Length of a cookie reply's body after the receiver id: nonce, sealed cookie.
pub const COOKIE_REPLY_LEN: usize = 24 + COOKIE_LEN + 16;

const LABEL_MAC1: &[u8] = b"starling/v1/mac1";
const LABEL_COOKIE: &[u8] = b"starling/v1/cookie";
const PROLOGUE: &[u8] = b"starling/v1/IK/";

/// A handshake failed: bad message, wrong key, or not meant for us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandshakeError;

/// Keys of one established session, from Noise's final split.
#[derive(Clone)]
pub struct SessionKeys {
    /// Seals what this side sends.
    pub send: [u8; 32],
    /// Opens what the other side sends.
    pub recv: [u8; 32],
    /// The handshake hash: both sides agree on it; its first byte is the session tag.
    pub hash: [u8; 32],
}

impl core::fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("SessionKeys(<redacted>)")
    }
}

/// `snow`'s randomness, seeded by the node: the core never reads OS randomness.
struct SeededRandom(ChaCha20Rng);

impl Random for SeededRandom {
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), snow::Error> {
        self.0.fill_bytes(dest);
        Ok(())
    }
}

/// Resolves `snow`'s primitives to the RustCrypto defaults, and its RNG to a seeded one.
struct Resolver {
    seed: [u8; 32],
}

impl CryptoResolver for Resolver {
    fn resolve_rng(&self) -> Option<Box<dyn Random>> {
        Some(Box::new(SeededRandom(ChaCha20Rng::from_seed(self.seed))))
    }
    fn resolve_dh(&self, choice: &DHChoice) -> Option<Box<dyn Dh>> {
        DefaultResolver.resolve_dh(choice)
    }
    fn resolve_hash(&self, choice: &HashChoice) -> Option<Box<dyn Hash>> {
        DefaultResolver.resolve_hash(choice)
    }
    fn resolve_cipher(&self, choice: &CipherChoice) -> Option<Box<dyn Cipher>> {
        DefaultResolver.resolve_cipher(choice)
    }
}

fn builder<'a>(local: &'a Identity, prologue: &'a [u8], seed: [u8; 32]) -> snow::Builder<'a> {
    let params = PATTERN.parse().expect("the pattern name is valid");
    snow::Builder::with_resolver(params, Box::new(Resolver { seed }))
        .local_private_key(local.secret())
        .expect("a 32-byte key")
        .prologue(prologue)
        .expect("set once")
}

/// The prologue binds a handshake to its network name.
pub fn prologue(network: &str) -> Vec<u8> {
    let mut p = Vec::with_capacity(PROLOGUE.len() + network.len());
    p.extend_from_slice(PROLOGUE);
    p.extend_from_slice(network.as_bytes());
    p
}

/// The initiator's side, between its first message and the answer.
pub struct Initiator {
    hs: snow::HandshakeState,
}

impl Initiator {
    /// Starts a handshake to `remote`, appending message 1 (with `payload`) to `out`.
    pub fn start(
        local: &Identity,
        remote: &PublicKey,
        prologue: &[u8],
        seed: [u8; 32],
        payload: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<Self, HandshakeError> {
        let mut hs = builder(local, prologue, seed)
            .remote_public_key(&remote.0)
            .map_err(|_| HandshakeError)?
            .build_initiator()
            .map_err(|_| HandshakeError)?;
        write(&mut hs, payload, out)?;
        Ok(Initiator { hs })
    }

    /// Reads message 2: the session keys and the responder's payload.
    pub fn finish(mut self, msg2: &[u8]) -> Result<(SessionKeys, Vec<u8>), HandshakeError> {
        let payload = read(&mut self.hs, msg2)?;
        Ok((split(&mut self.hs, true), payload))
    }
}

/// The responder's side after reading message 1.
pub struct Responder {
    hs: snow::HandshakeState,
    /// The initiator's static key (authenticated by message 1, but replayable until confirmed).
    pub remote: PublicKey,
    /// The initiator's payload.
    pub payload: Vec<u8>,
}

impl Responder {
    /// Reads message 1.
    pub fn read(local: &Identity, prologue: &[u8], seed: [u8; 32], msg1: &[u8]) -> Result<Self, HandshakeError> {
        let mut hs = builder(local, prologue, seed).build_responder().map_err(|_| HandshakeError)?;
        let payload = read(&mut hs, msg1)?;
        let remote = hs.get_remote_static().and_then(|k| <[u8; 32]>::try_from(k).ok()).ok_or(HandshakeError)?;
        Ok(Responder { hs, remote: PublicKey(remote), payload })
    }

    /// Appends message 2 (with `payload`) to `out` and returns the session keys.
    pub fn finish(mut self, payload: &[u8], out: &mut Vec<u8>) -> Result<SessionKeys, HandshakeError> {
        write(&mut self.hs, payload, out)?;
        Ok(split(&mut self.hs, false))
    }
}

fn write(hs: &mut snow::HandshakeState, payload: &[u8], out: &mut Vec<u8>) -> Result<(), HandshakeError> {
    let start = out.len();
    out.resize(start + 96 + payload.len() + 32, 0);
    let n = hs.write_message(payload, &mut out[start..]).map_err(|_| HandshakeError)?;
    out.truncate(start + n);
    Ok(())
}

fn read(hs: &mut snow::HandshakeState, msg: &[u8]) -> Result<Vec<u8>, HandshakeError> {
    let mut payload = alloc::vec![0u8; msg.len()];
    let n = hs.read_message(msg, &mut payload).map_err(|_| HandshakeError)?;
    payload.truncate(n);
    Ok(payload)
}

fn split(hs: &mut snow::HandshakeState, initiator: bool) -> SessionKeys {
    let hash: [u8; 32] = hs.get_handshake_hash().try_into().expect("BLAKE2s hashes are 32 bytes");
    let (i_to_r, r_to_i) = hs.dangerously_get_raw_split();
    let (send, recv) = if initiator { (i_to_r, r_to_i) } else { (r_to_i, i_to_r) };
    SessionKeys { send, recv, hash }
}

fn keyed(label: &[u8], key: &PublicKey) -> [u8; 32] {
    let mut mac = <Blake2sMac256 as KeyInit>::new_from_slice(label).expect("labels are short");
    mac.update(&key.0);
    mac.finalize().into_bytes().into()
}

fn mac16(key: &[u8], parts: &[&[u8]]) -> [u8; MAC_LEN] {
    let mut mac = <Blake2sMac<U16> as KeyInit>::new_from_slice(key).expect("keys are at most 32 bytes");
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

/// Compares two MACs in constant time (`subtle`): how long a refusal takes must not tell an
/// attacker how many leading bytes of a forged MAC were right.
pub fn mac_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// `mac1` of a handshake message to `receiver`: anyone who knows its public key can make it, so it
/// only proves the sender meant this receiver; it costs one BLAKE2s to check, no Diffie-Hellman.
pub fn mac1(receiver: &PublicKey, covered: &[u8]) -> [u8; MAC_LEN] {
    mac16(&keyed(LABEL_MAC1, receiver), &[covered])
}

/// `mac1` of a HandshakeResp: also covers the mac1 of the message 1 it answers, so only a node
/// that saw that message 1 can make an answer the initiator will spend Diffie-Hellman on; a
/// forger who knows only public keys is refused with one BLAKE2s (PROTOCOL.md §11.3).
pub fn mac1_answer(receiver: &PublicKey, covered: &[u8], init_mac1: &[u8; MAC_LEN]) -> [u8; MAC_LEN] {
    mac16(&keyed(LABEL_MAC1, receiver), &[covered, init_mac1])
}

/// `mac2` of a handshake message with a cookie: proves the sender receives at its address.
pub fn mac2(cookie: &[u8; COOKIE_LEN], covered: &[u8]) -> [u8; MAC_LEN] {
    mac16(cookie, &[covered])
}

/// The cookie of a source address under the responder's current secret (which rotates).
pub fn cookie(secret: &[u8; 32], addr: &core::net::SocketAddr) -> [u8; COOKIE_LEN] {
    let mut a = [0u8; 18];
    match addr.ip() {
        core::net::IpAddr::V4(ip) => a[..4].copy_from_slice(&ip.octets()),
        core::net::IpAddr::V6(ip) => a[..16].copy_from_slice(&ip.octets()),
    }
    a[16..].copy_from_slice(&addr.port().to_be_bytes());
    mac16(secret, &[&a])
}

fn cookie_cipher(responder: &PublicKey) -> XChaCha20Poly1305 {
    XChaCha20Poly1305::new_from_slice(&keyed(LABEL_COOKIE, responder)).expect("32-byte key")
}

/// Seals `cookie` for the initiator, bound to the `mac1` of the message it answers.
pub fn seal_cookie(
    responder: &PublicKey,
    nonce: [u8; 24],
    cookie: &[u8; COOKIE_LEN],
    mac1: &[u8; MAC_LEN],
) -> [u8; COOKIE_REPLY_LEN] {
    let mut out = [0u8; COOKIE_REPLY_LEN];
    out[..24].copy_from_slice(&nonce);
    out[24..24 + COOKIE_LEN].copy_from_slice(cookie);
    let tag = cookie_cipher(responder)
        .encrypt_in_place_detached(XNonce::from_slice(&nonce), mac1, &mut out[24..24 + COOKIE_LEN])
        .expect("small messages always seal");
    out[24 + COOKIE_LEN..].copy_from_slice(&tag);
    out
}

/// Opens a cookie reply from `responder` to a message whose `mac1` we sent.
pub fn open_cookie(responder: &PublicKey, reply: &[u8], mac1: &[u8; MAC_LEN]) -> Option<[u8; COOKIE_LEN]> {
    if reply.len() != COOKIE_REPLY_LEN {
        return None;
    }
    let mut cookie = [0u8; COOKIE_LEN];
    cookie.copy_from_slice(&reply[24..24 + COOKIE_LEN]);
    let tag = Tag::clone_from_slice(&reply[24 + COOKIE_LEN..]);
    cookie_cipher(responder)
        .decrypt_in_place_detached(XNonce::from_slice(&reply[..24]), mac1, &mut cookie, &tag)
        .ok()?;
    Some(cookie)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ik_round_trip_gives_matching_keys() {
        let a = Identity::from_secret([1; 32]);
        let b = Identity::from_secret([2; 32]);
        let pro = prologue("home");
        let mut m1 = Vec::new();
        let init = Initiator::start(&a, &b.public(), &pro, [7; 32], b"hello", &mut m1).unwrap();
        let resp = Responder::read(&b, &pro, [8; 32], &m1).unwrap();
        assert_eq!(resp.remote, a.public());
        assert_eq!(resp.payload, b"hello");
        let mut m2 = Vec::new();
        let kb = resp.finish(b"world", &mut m2).unwrap();
        let (ka, payload) = init.finish(&m2).unwrap();
        assert_eq!(payload, b"world");
        assert_eq!(ka.send, kb.recv);
        assert_eq!(ka.recv, kb.send);
        assert_eq!(ka.hash, kb.hash);
        assert_ne!(ka.send, ka.recv);
    }

    #[test]
    fn wrong_network_or_key_fails() {
        let a = Identity::from_secret([1; 32]);
        let b = Identity::from_secret([2; 32]);
        let c = Identity::from_secret([3; 32]);
        let mut m1 = Vec::new();
        Initiator::start(&a, &b.public(), &prologue("home"), [7; 32], b"", &mut m1).unwrap();
        // The prologue (network name) is authenticated: another network's node cannot read it.
        assert!(Responder::read(&b, &prologue("work"), [8; 32], &m1).is_err());
        // Message 1 for b cannot be read by c.
        assert!(Responder::read(&c, &prologue("home"), [8; 32], &m1).is_err());
        // Truncated messages are refused.
        assert!(Responder::read(&b, &prologue("home"), [8; 32], &m1[..40]).is_err());
    }

    #[test]
    fn cookies_round_trip_and_bind_to_mac1() {
        let b = Identity::from_secret([2; 32]).public();
        let addr: core::net::SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let c = cookie(&[5; 32], &addr);
        assert_ne!(c, cookie(&[5; 32], &"127.0.0.1:4001".parse().unwrap()));
        let m1 = mac1(&b, b"msg");
        let reply = seal_cookie(&b, [9; 24], &c, &m1);
        assert_eq!(open_cookie(&b, &reply, &m1), Some(c));
        assert_eq!(open_cookie(&b, &reply, &[0; 16]), None);
        assert_ne!(mac2(&c, b"msg"), mac2(&c, b"msh"));
    }
}
