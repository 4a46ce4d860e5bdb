//! Identity mode: per-device X25519 keys and the network allowlist (PROTOCOL.md §11).
//!
//! Each device holds a static key pair; the network's allowlist names every public key that may
//! join, with what it may publish, subscribe to and call. The allowlist is plain data here: the
//! node enforces it (`node::identity`), the host runtime reads it from a TOML file.

use alloc::string::String;
use alloc::vec::Vec;
use blake2::digest::{KeyInit, Mac};
use blake2::Blake2sMac256;
use core::fmt;
use curve25519_dalek::montgomery::MontgomeryPoint;

use crate::topic::{Topic, TopicFilter};
use crate::wire::NodeId;

/// Length of X25519 keys.
pub const KEY_LEN: usize = 32;

const LABEL_NODE_ID: &[u8] = b"starling/v1/node-id";
const LABEL_NET_TAG: &[u8] = b"starling/v1/identity-net-tag";

fn prf(key: &[u8], label: &[u8], context: &[u8]) -> [u8; 32] {
    let mut mac = <Blake2sMac256 as KeyInit>::new_from_slice(key).expect("BLAKE2s takes keys up to 32 bytes");
    mac.update(label);
    mac.update(context);
    mac.finalize().into_bytes().into()
}

/// An X25519 public key that identifies a device.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PublicKey(pub [u8; KEY_LEN]);

impl PublicKey {
    /// The node id every member derives from this key: `BLAKE2s("starling/v1/node-id", key)[..8]`.
    /// Ids are bound to keys, so no member can claim another member's id.
    pub fn node_id(&self) -> NodeId {
        let h = prf(LABEL_NODE_ID, &self.0, &[]);
        NodeId::from_u64(u64::from_be_bytes(h[..8].try_into().expect("8 bytes")))
    }

    /// True for the small-order points of Curve25519 (and their non-canonical encodings): a
    /// Diffie-Hellman with them gives a value an attacker knows, so they are never accepted.
    pub fn is_low_order(&self) -> bool {
        // A clamped scalar is a multiple of the cofactor 8, so the product is the identity
        // (all zero bytes) exactly when the point's order divides 8.
        MontgomeryPoint(self.0).mul_clamped([0x55; 32]).0 == [0u8; 32]
    }

    /// Parses 64 hex digits.
    pub fn parse_hex(s: &str) -> Result<Self, KeyError> {
        let s = s.trim();
        if s.len() != 2 * KEY_LEN {
            return Err(KeyError::WrongLength { found: s.chars().count() });
        }
        let mut k = [0u8; KEY_LEN];
        crate::hex::decode_into(s, &mut k).map_err(|at| KeyError::NotHex { at })?;
        let key = PublicKey(k);
        if key.is_low_order() {
            return Err(KeyError::LowOrder);
        }
        Ok(key)
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// Why a textual key was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyError {
    /// Not 64 hex digits.
    WrongLength {
        /// Characters found.
        found: usize,
    },
    /// A character that is not a hex digit.
    NotHex {
        /// Its offset.
        at: usize,
    },
    /// A small-order Curve25519 point: useless as a key and a sign of an attack.
    LowOrder,
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyError::WrongLength { found } => {
                write!(f, "a key is 64 hexadecimal digits (32 bytes), found {found} characters")
            }
            KeyError::NotHex { at } => write!(f, "character {} of the key is not a hexadecimal digit", at + 1),
            KeyError::LowOrder => f.write_str("the key is a small-order Curve25519 point, which is never a valid key"),
        }
    }
}

impl core::error::Error for KeyError {}

/// A device's static key pair. `Debug` never prints the secret.
#[derive(Clone)]
pub struct Identity {
    secret: [u8; KEY_LEN],
    public: PublicKey,
}

impl Identity {
    /// The key pair of a secret (32 random bytes; clamped by X25519 itself).
    pub fn from_secret(secret: [u8; KEY_LEN]) -> Self {
        Identity { secret, public: PublicKey(MontgomeryPoint::mul_base_clamped(secret).0) }
    }

    /// The public half, to put in an allowlist.
    pub fn public(&self) -> PublicKey {
        self.public
    }

    /// The secret bytes, for writing an identity file.
    pub fn secret(&self) -> &[u8; KEY_LEN] {
        &self.secret
    }

    /// This device's node id (derived from its public key).
    pub fn node_id(&self) -> NodeId {
        self.public.node_id()
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity").field("public", &self.public).finish_non_exhaustive()
    }
}

/// A method pattern in an allowlist: an exact name, `*` (every method), or a prefix ending in
/// `*` such as `relay.*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MethodPattern(String);

impl MethodPattern {
    /// Checks and wraps a pattern: non-empty, no whitespace, `*` only at the end.
    pub fn new(s: &str) -> Result<Self, &'static str> {
        if s.is_empty() {
            return Err("a method pattern is empty");
        }
        if s.contains(char::is_whitespace) {
            return Err("a method pattern contains whitespace");
        }
        if s.find('*').is_some_and(|i| i != s.len() - 1) {
            return Err("`*` may only end a method pattern (e.g. `relay.*`)");
        }
        Ok(MethodPattern(String::from(s)))
    }

    /// Whether `method` is covered.
    pub fn matches(&self, method: &str) -> bool {
        match self.0.strip_suffix('*') {
            Some(prefix) => method.starts_with(prefix),
            None => self.0 == method,
        }
    }

    /// The pattern text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What one allowlisted key may do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Permissions {
    /// Topics it may publish on: receivers drop its messages elsewhere.
    pub publish: Vec<TopicFilter>,
    /// Topics it may receive: senders hand it their multicast keys only if these meet their own
    /// publish permissions.
    pub subscribe: Vec<TopicFilter>,
    /// Methods it may call: callees answer anything else with `Denied`.
    pub call: Vec<MethodPattern>,
}

impl Permissions {
    /// May it publish on `topic`?
    pub fn may_publish(&self, topic: &Topic<'_>) -> bool {
        self.publish.iter().any(|f| f.matches(topic))
    }

    /// May it receive messages on `topic`?
    pub fn may_subscribe(&self, topic: &Topic<'_>) -> bool {
        self.subscribe.iter().any(|f| f.matches(topic))
    }

    /// May it call `method`?
    pub fn may_call(&self, method: &str) -> bool {
        self.call.iter().any(|p| p.matches(method))
    }

    /// Could it receive anything a publisher with `publisher`'s permissions may send?
    pub fn may_read_from(&self, publisher: &Permissions) -> bool {
        self.subscribe.iter().any(|s| publisher.publish.iter().any(|p| s.overlaps(p)))
    }
}

/// One member of the network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowEntry {
    /// Its name: what other members and tools display (the name in its beacons is not trusted).
    pub name: String,
    /// Its public key.
    pub key: PublicKey,
    /// What it may do.
    pub permissions: Permissions,
}

/// The network's allowlist: who may join and what each member may do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allowlist {
    /// The network's name, bound into every handshake: two allowlists with different names are two
    /// networks even on one multicast group.
    pub network: String,
    /// The members.
    pub entries: Vec<AllowEntry>,
}

/// Why an allowlist was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowlistError {
    /// Index of the offending entry.
    pub entry: usize,
    /// What is wrong.
    pub problem: &'static str,
}

impl fmt::Display for AllowlistError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "allow entry {}: {}", self.entry + 1, self.problem)
    }
}

impl core::error::Error for AllowlistError {}

impl Allowlist {
    /// Checks what the types cannot: unique names and keys, no small-order keys.
    pub fn validate(&self) -> Result<(), AllowlistError> {
        for (i, e) in self.entries.iter().enumerate() {
            let err = |problem| Err(AllowlistError { entry: i, problem });
            if e.name.is_empty() {
                return err("the name is empty");
            }
            if e.key.is_low_order() {
                return err("the key is a small-order Curve25519 point");
            }
            if self.entries[..i].iter().any(|o| o.key == e.key) {
                return err("this key is listed twice; each device appears once");
            }
            if self.entries[..i].iter().any(|o| o.name == e.name) {
                return err("this name is listed twice; names must be unique");
            }
        }
        Ok(())
    }

    /// The entry of `key`, if it is a member.
    pub fn get(&self, key: &PublicKey) -> Option<&AllowEntry> {
        self.entries.iter().find(|e| &e.key == key)
    }

    /// The entry whose key derives `id`, if any.
    pub fn by_id(&self, id: NodeId) -> Option<&AllowEntry> {
        self.entries.iter().find(|e| e.key.node_id() == id)
    }

    /// The one-byte tag of this network in handshake and announce headers: a cheap filter for
    /// other networks on the same group.
    pub fn net_tag(&self) -> u8 {
        prf(LABEL_NET_TAG, self.network.as_bytes(), &[])[0]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_key_and_node_id_are_deterministic() {
        let a = Identity::from_secret([1; 32]);
        let b = Identity::from_secret([1; 32]);
        assert_eq!(a.public(), b.public());
        assert_eq!(a.node_id(), b.node_id());
        assert_ne!(a.node_id(), Identity::from_secret([2; 32]).node_id());
        assert!(!a.public().is_low_order());
        assert!(!alloc::format!("{a:?}").contains("0101"));
    }

    #[test]
    fn low_order_points_are_refused() {
        // The identity, a point of order 2 and one of order 8 (canonical encodings).
        let mut zero = [0u8; 32];
        assert!(PublicKey(zero).is_low_order());
        zero[0] = 1;
        assert!(PublicKey(zero).is_low_order());
        let order8 = "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800";
        assert_eq!(PublicKey::parse_hex(order8), Err(KeyError::LowOrder));
        let ok = Identity::from_secret([9; 32]).public();
        assert_eq!(PublicKey::parse_hex(&alloc::format!("{ok}")), Ok(ok));
        assert_eq!(PublicKey::parse_hex("abc"), Err(KeyError::WrongLength { found: 3 }));
    }

    #[test]
    fn permissions_and_patterns() {
        let f = |s: &str| TopicFilter::new(s).unwrap();
        let p = Permissions {
            publish: alloc::vec![f("home/kitchen/#")],
            subscribe: alloc::vec![f("home/+/cmd")],
            call: alloc::vec![MethodPattern::new("relay.*").unwrap(), MethodPattern::new("info").unwrap()],
        };
        assert!(p.may_publish(&Topic::new("home/kitchen/temp").unwrap()));
        assert!(!p.may_publish(&Topic::new("home/hall/temp").unwrap()));
        assert!(p.may_subscribe(&Topic::new("home/hall/cmd").unwrap()));
        assert!(p.may_call("relay.set") && p.may_call("info") && !p.may_call("reboot") && !p.may_call("infos"));
        let reader = Permissions { subscribe: alloc::vec![f("home/kitchen/temp")], ..Default::default() };
        assert!(reader.may_read_from(&p));
        let other = Permissions { subscribe: alloc::vec![f("garden/#")], ..Default::default() };
        assert!(!other.may_read_from(&p));
        assert!(MethodPattern::new("a*b").is_err());
        assert!(MethodPattern::new("").is_err());
    }

    #[test]
    fn allowlist_validation_names_the_entry() {
        let k = Identity::from_secret([3; 32]).public();
        let e = |name: &str, key| AllowEntry { name: name.into(), key, permissions: Permissions::default() };
        let mut list = Allowlist { network: "home".into(), entries: alloc::vec![e("a", k)] };
        assert!(list.validate().is_ok());
        list.entries.push(e("b", k));
        assert_eq!(list.validate().unwrap_err().entry, 1);
        list.entries[1] = e("a", Identity::from_secret([4; 32]).public());
        assert!(list.validate().unwrap_err().problem.contains("name"));
        assert_eq!(list.by_id(k.node_id()).unwrap().name, "a");
    }
}
