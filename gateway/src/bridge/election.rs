//! Which of several gateways bridges: elected over the mesh, never over MQTT.
//!
//! Any MQTT client that may publish under the prefix could claim to be a gateway there, so the
//! broker's word counts for nothing. Each gateway instead publishes [`ALIVE_TOPIC`] on the mesh
//! every [`ALIVE_EVERY`] while it is connected to its broker, with what it bridges to (broker
//! address and prefix, `mqtt <host>:<port> <prefix>`) as the payload. Mesh frames are sealed,
//! and the sender id of a message is the authenticated one, so only a mesh member can take part.
//! The active gateway is the lowest node id among those heard with the same key in the last
//! [`LEADER_TIMEOUT`]; a gateway that leaves the mesh is forgotten at once, one that dies or
//! loses its broker after that timeout.
//!
//! `#` does not match `$` topics, so the announcements cross to no MQTT broker and reach no
//! ordinary subscriber. In identity mode a gateway needs `$gateway/#` in its allowlist entry's
//! `publish` and `subscribe`; without them each gateway only hears itself, and all of them
//! bridge (messages cross more than once rather than not at all).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use starling::runtime::Node;
use starling::NodeId;

/// The mesh topic on which gateways announce themselves to each other.
pub const ALIVE_TOPIC: &str = "$gateway/alive";
/// A gateway not heard from for this long no longer counts for the election of the active one.
pub const LEADER_TIMEOUT: Duration = Duration::from_secs(3);
/// How often a gateway says it is alive.
pub const ALIVE_EVERY: Duration = Duration::from_secs(1);

/// The election as one gateway sees it.
pub(super) struct Election {
    me: NodeId,
    key: Vec<u8>,
    others: Mutex<BTreeMap<NodeId, Instant>>,
    /// Whether this gateway's broker connection is up: only then does it announce itself.
    pub connected: AtomicBool,
}

impl Election {
    /// Gateways compete only with those bridging the same mesh to the same broker address and
    /// prefix: one on another broker must go on bridging there.
    pub fn new(me: NodeId, host: &str, port: u16, prefix: &str) -> Self {
        Election {
            me,
            key: format!("mqtt {host}:{port} {prefix}").into_bytes(),
            others: Mutex::default(),
            connected: AtomicBool::new(false),
        }
    }

    /// A mesh announcement from `from` (authenticated by the mesh).
    pub fn heard(&self, from: NodeId, payload: &[u8]) {
        if from != self.me && payload == self.key.as_slice() {
            self.others.lock().expect("not poisoned").insert(from, Instant::now());
        }
    }

    /// `id` left the mesh or went silent there.
    pub fn forget(&self, id: NodeId) {
        self.others.lock().expect("not poisoned").remove(&id);
    }

    /// Whether this gateway bridges now.
    pub fn is_active(&self) -> bool {
        let now = Instant::now();
        let mut others = self.others.lock().expect("not poisoned");
        others.retain(|_, t| now.duration_since(*t) < LEADER_TIMEOUT);
        others.keys().all(|&id| self.me < id)
    }

    /// Listens to the other gateways and announces this one, until the node shuts down.
    pub async fn run(self: Arc<Self>, node: Node) {
        let mut sub = match node.subscribe(ALIVE_TOPIC).await {
            Ok(sub) => sub,
            Err(e) => {
                tracing::warn!("cannot subscribe to '{ALIVE_TOPIC}' on the mesh: {e}; bridging as if alone");
                return;
            }
        };
        let mut tick = tokio::time::interval(ALIVE_EVERY);
        loop {
            tokio::select! {
                m = sub.recv() => match m {
                    Some(m) => self.heard(m.from, &m.payload),
                    None => return,
                },
                _ = tick.tick() => {
                    if self.connected.load(Ordering::Relaxed) {
                        if let Err(e) = node.publish(ALIVE_TOPIC, self.key.clone()).await {
                            tracing::debug!("announcing on the mesh: {e}");
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u64) -> NodeId {
        format!("{n:016x}").parse().unwrap()
    }

    #[test]
    fn lowest_id_with_the_same_key_wins() {
        let e = Election::new(id(5), "127.0.0.1", 1883, "starling");
        assert!(e.is_active(), "alone");
        let key = b"mqtt 127.0.0.1:1883 starling";
        e.heard(id(9), key);
        assert!(e.is_active(), "higher ids do not matter");
        e.heard(id(3), b"mqtt 10.0.0.1:1883 starling");
        e.heard(id(2), b"mqtt 127.0.0.1:1883 other");
        assert!(e.is_active(), "gateways to another broker or prefix do not compete");
        e.heard(id(5), key);
        assert!(e.is_active(), "itself");
        e.heard(id(1), key);
        assert!(!e.is_active());
        e.forget(id(1));
        assert!(e.is_active(), "left the mesh");
    }
}
