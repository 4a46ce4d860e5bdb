//! PSK mode (PROTOCOL.md §3): every member holds [`NETWORK_KEY`] and seals with its per-sender key.

use starling::crypto::NetworkKeys;
use starling::wire::{Header, HEADER_LEN, SUITE_PSK, TAG_LEN};
use starling::{Boot, Config, Instant, NetworkKey, Node, NodeId};

use crate::harness::Mode;
use crate::{NETWORK_KEY, VICTIM};

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

    /// Opens any frame sealed under the network key: its header and plaintext body.
    pub fn open(&self, frame: &[u8]) -> Option<(Header, Vec<u8>)> {
        let header = Header::parse(frame).ok()?;
        if header.net_tag != self.keys.net_tag() {
            return None;
        }
        let mut buf = frame.to_vec();
        self.keys.sender_key(header.sender).open(header.pn, &mut buf, HEADER_LEN).ok()?;
        Some((header, buf[HEADER_LEN..buf.len() - TAG_LEN].to_vec()))
    }
}

impl Mode for Psk {
    fn node(&self, config: Config) -> Node {
        Node::new(config, &self.key, Boot::ephemeral(NodeId::from_u64(VICTIM)), Instant::ZERO)
            .expect("the victim's configuration is valid")
    }

    fn seal(&self, sender: NodeId, pn: u64, body: &[u8]) -> Vec<u8> {
        let mut buf = vec![0u8; HEADER_LEN + body.len() + TAG_LEN];
        Header { suite: SUITE_PSK, net_tag: self.keys.net_tag(), sender, pn }.emit(&mut buf);
        buf[HEADER_LEN..HEADER_LEN + body.len()].copy_from_slice(body);
        self.keys.sender_key(sender).seal(pn, &mut buf, HEADER_LEN);
        buf
    }

    fn open_own(&self, frame: &[u8]) -> Option<(Header, Vec<u8>)> {
        self.open(frame)
    }
}
