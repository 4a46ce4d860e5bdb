//! PSK mode (PROTOCOL.md §3): every member holds [`NETWORK_KEY`] and seals with its per-sender key.

use starling::crypto::NetworkKeys;
use starling::wire::{Header, KeyClass, RecordIter, HEADER_LEN, SUITE_PSK, SUITE_PSK_UNICAST, TAG_LEN};
use starling::{Boot, Config, Instant, NetworkKey, Node, NodeId};

use crate::harness::Mode;
use crate::{NETWORK_KEY, PEER_A, PEER_B, VICTIM};

/// The PSK [`Mode`]: fixed peers that hold the network key.
pub struct Psk {
    key: NetworkKey,
    keys: NetworkKeys,
}

impl Default for Psk {
    fn default() -> Self {
        let key = NetworkKey::from_bytes(NETWORK_KEY);
        Psk { keys: NetworkKeys::derive(&key), key }
    }
}

impl Psk {
    /// The network key.
    pub fn key(&self) -> &NetworkKey {
        &self.key
    }

    /// The one-byte network tag of [`NETWORK_KEY`].
    pub fn net_tag(&self) -> u8 {
        self.keys.net_tag()
    }

    /// Opens any frame sealed under the network key: its header and plaintext body (a unicast
    /// frame if it was sent to the victim or to one of the fixed peers).
    pub fn open(&self, frame: &[u8]) -> Option<(Header, Vec<u8>)> {
        let header = Header::parse(frame).ok()?;
        if header.net_tag != self.keys.net_tag() {
            return None;
        }
        let open = |key: starling::crypto::SenderKey| {
            let mut buf = frame.to_vec();
            key.open(header.pn, &mut buf, HEADER_LEN).ok()?;
            Some(buf[HEADER_LEN..buf.len() - TAG_LEN].to_vec())
        };
        let body = match header.suite {
            SUITE_PSK => open(self.keys.sender_key(header.sender))?,
            SUITE_PSK_UNICAST => [VICTIM, PEER_A, PEER_B]
                .into_iter()
                .find_map(|to| open(self.keys.pair_key(header.sender, NodeId::from_u64(to))))?,
            _ => return None,
        };
        Some((header, body))
    }
}

impl Mode for Psk {
    fn node(&self, config: Config) -> Node {
        Node::new(config, &self.key, Boot::ephemeral(NodeId::from_u64(VICTIM)), Instant::ZERO)
            .expect("the victim's configuration is valid")
    }

    /// A multicast frame when every record may go to the group, else a unicast frame to the
    /// victim (PROTOCOL.md §2.7), so fuzzed bodies reach the records' handlers either way.
    fn seal(&self, sender: NodeId, pn: u64, body: &[u8]) -> Vec<u8> {
        let group = RecordIter::new(body).all(|r| r.is_ok_and(|r| r.allowed_in(KeyClass::Group)));
        let (suite, key) = if group {
            (SUITE_PSK, self.keys.sender_key(sender))
        } else {
            (SUITE_PSK_UNICAST, self.keys.pair_key(sender, NodeId::from_u64(VICTIM)))
        };
        let mut buf = vec![0u8; HEADER_LEN + body.len() + TAG_LEN];
        Header { suite, net_tag: self.keys.net_tag(), sender, pn }.emit(&mut buf);
        buf[HEADER_LEN..HEADER_LEN + body.len()].copy_from_slice(body);
        key.seal(pn, &mut buf, HEADER_LEN);
        buf
    }

    fn open_own(&self, frame: &[u8]) -> Option<(Header, Vec<u8>)> {
        self.open(frame)
    }
}
