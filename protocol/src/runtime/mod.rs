//! The tokio runtime (feature `std`): a thin driver that moves datagrams, time and events
//! between a real multicast socket and the sans-IO [`Node`](crate::Node), plus the async API.
//!
//! ```no_run
//! # async fn demo() -> Result<(), starling::runtime::Error> {
//! use starling::{runtime::NodeBuilder, NetworkKey};
//! let key = NetworkKey::parse(&std::fs::read_to_string("net.key").unwrap()).unwrap();
//! let node = NodeBuilder::new(key).name("kitchen").open().await?;
//! let mut sub = node.subscribe("home/+/temp").await?;
//! node.publish("home/kitchen/temp", b"21.5").await?;
//! while let Some(msg) = sub.recv().await {
//!     println!("{} from {}: {:?}", msg.topic, msg.from, msg.payload);
//! }
//! # Ok(()) }
//! ```

mod driver;
mod socket;
mod state_file;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::string::String;
use std::task::{Context, Poll};
use std::time::Duration;
use std::vec::Vec;
use std::{fmt, io};

use tokio::sync::{broadcast, mpsc, oneshot};

use crate::{Config, ConfigError, NetworkKey, NodeId, PeerInfo, PublishError, StateError, Stats, SubscribeError};
use crate::{DownReason, SubscriptionId};

pub use socket::resolve_interface;
pub use state_file::StateFile;

/// Default multicast group: organisation-local scope (RFC 2365), so routers never forward it.
pub const DEFAULT_GROUP: Ipv4Addr = Ipv4Addr::new(239, 255, 83, 76);
/// Default UDP port.
pub const DEFAULT_PORT: u16 = 4783;

/// Errors of the async API. Each says what failed and, where it can, what to do.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// A socket could not be set up.
    Socket {
        /// What was being done.
        action: String,
        /// The OS error.
        source: io::Error,
    },
    /// The state file could not be read, locked or written.
    StateFile {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        problem: String,
    },
    /// The stored state is unusable.
    State {
        /// The file.
        path: PathBuf,
        /// Why.
        source: StateError,
    },
    /// The configuration is invalid.
    Config(ConfigError),
    /// A publication was refused.
    Publish(PublishError),
    /// A subscription was refused.
    Subscribe(SubscribeError),
    /// The node has shut down.
    Closed,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Socket { action, source } => write!(f, "{action}: {source}"),
            Error::StateFile { path, problem } => write!(f, "state file {}: {problem}", path.display()),
            Error::State { path, source } => write!(f, "state file {}: {source}", path.display()),
            Error::Config(e) => e.fmt(f),
            Error::Publish(e) => e.fmt(f),
            Error::Subscribe(e) => e.fmt(f),
            Error::Closed => f.write_str("the node has shut down"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Socket { source, .. } => Some(source),
            Error::State { source, .. } => Some(source),
            Error::Config(e) => Some(e),
            Error::Publish(e) => Some(e),
            Error::Subscribe(e) => Some(e),
            Error::StateFile { .. } | Error::Closed => None,
        }
    }
}

/// A message received by a [`Subscription`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The topic it was published on.
    pub topic: String,
    /// The payload, byte for byte.
    pub payload: Vec<u8>,
    /// The publishing node.
    pub from: NodeId,
    /// The publisher's name, if its beacon has been heard.
    pub from_name: Option<String>,
}

/// A change in the mesh, from [`Node::peer_events`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PeerEvent {
    /// A peer appeared or came back.
    Up(PeerInfo),
    /// A peer restarted (new boot epoch).
    Restarted(PeerInfo),
    /// A peer left or went silent.
    Down {
        /// Its id.
        id: NodeId,
        /// Why.
        reason: DownReason,
    },
    /// Another device uses this node's id (cloned state file); restart with a new state file.
    IdConflict {
        /// Where its frame came from.
        addr: SocketAddr,
    },
}

/// Counters of the core plus those of the driver.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RuntimeStats {
    /// The core's counters.
    pub core: Stats,
    /// Messages dropped because a subscriber did not keep up with its channel.
    pub subscriber_lagged: u64,
    /// Datagrams the socket refused to send.
    pub send_errors: u64,
}

/// How a node keeps its identity and packet-number lease between runs.
#[derive(Debug, Clone)]
pub enum Persistence {
    /// In a state file (created if missing, locked while the node runs).
    File(PathBuf),
    /// Not at all: a fresh random id each run (fine for short-lived tools; peers see a new node).
    Ephemeral,
}

/// Opens a [`Node`]. Only the network key is required.
#[derive(Debug, Clone)]
pub struct NodeBuilder {
    key: NetworkKey,
    name: String,
    group: Ipv4Addr,
    port: u16,
    interface: Ipv4Addr,
    ttl: u32,
    persistence: Persistence,
    subscription_capacity: usize,
    tweak: Option<fn(&mut Config)>,
    beacon_interval: Option<Duration>,
}

impl NodeBuilder {
    /// A builder for a node of the network `key`, on the default group and port, on loopback.
    pub fn new(key: NetworkKey) -> Self {
        NodeBuilder {
            key,
            name: String::new(),
            group: DEFAULT_GROUP,
            port: DEFAULT_PORT,
            interface: Ipv4Addr::LOCALHOST,
            ttl: 1,
            persistence: Persistence::Ephemeral,
            subscription_capacity: 1024,
            tweak: None,
            beacon_interval: None,
        }
    }

    /// The node's human-readable name (at most 32 bytes).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The multicast group (default [`DEFAULT_GROUP`]).
    pub fn group(mut self, group: Ipv4Addr) -> Self {
        self.group = group;
        self
    }

    /// The UDP port (default [`DEFAULT_PORT`]).
    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    /// The IPv4 address of the interface to use (default 127.0.0.1, loopback). See
    /// [`resolve_interface`] to accept interface names.
    pub fn interface(mut self, addr: Ipv4Addr) -> Self {
        self.interface = addr;
        self
    }

    /// Multicast TTL (default 1: the local link only).
    pub fn ttl(mut self, ttl: u32) -> Self {
        self.ttl = ttl;
        self
    }

    /// Keep identity and packet-number lease in `path` (recommended for long-lived nodes: peers
    /// then see restarts as restarts, and old frames stay replays).
    pub fn state_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.persistence = Persistence::File(path.into());
        self
    }

    /// Mean beacon interval (default 5 s).
    pub fn beacon_interval(mut self, interval: Duration) -> Self {
        self.beacon_interval = Some(interval);
        self
    }

    /// Messages buffered per subscription before further ones are dropped and counted.
    pub fn subscription_capacity(mut self, n: usize) -> Self {
        self.subscription_capacity = n.max(1);
        self
    }

    /// Adjusts any other core setting (bounds, datagram size) before the node starts.
    pub fn configure(mut self, f: fn(&mut Config)) -> Self {
        self.tweak = Some(f);
        self
    }

    /// Opens the sockets, claims the state file and starts the driver task on the current tokio
    /// runtime. The node announces itself at once.
    pub async fn open(self) -> Result<Node, Error> {
        let mut seed = [0u8; 32];
        os_random(&mut seed)?;
        let mut config = Config::new(self.name.clone(), seed);
        if let Some(i) = self.beacon_interval {
            config.beacon_interval = i;
        }
        if let Some(f) = self.tweak {
            f(&mut config);
        }
        config.validate().map_err(Error::Config)?;
        let fresh_id = NodeId::from_u64(random_u64()?);
        let (boot, state_file) = match &self.persistence {
            Persistence::Ephemeral => (crate::Boot::ephemeral(fresh_id), None),
            Persistence::File(path) => {
                let (file, boot) = StateFile::open_boot(path, fresh_id, config.lease_block)?;
                (boot, Some(file))
            }
        };
        let sockets = socket::Sockets::open(self.group, self.port, self.interface, self.ttl)?;
        let local_addr = sockets.local_addr();
        let origin = std::time::Instant::now();
        let node = crate::Node::new(config, &self.key, boot, crate::Instant::ZERO).map_err(Error::Config)?;
        let (cmd_tx, cmd_rx) = mpsc::channel(1024);
        let (peer_tx, _) = broadcast::channel(256);
        let driver = driver::Driver::new(node, sockets, state_file, origin, cmd_rx, peer_tx.clone());
        tokio::spawn(driver.run());
        Ok(Node {
            id: boot.node_id,
            epoch: boot.epoch,
            local_addr,
            cmd: cmd_tx,
            peer_events: peer_tx,
            sub_capacity: self.subscription_capacity,
            origin,
        })
    }
}

fn os_random(buf: &mut [u8]) -> Result<(), Error> {
    getrandom::fill(buf).map_err(|e| Error::Socket {
        action: "reading OS randomness".into(),
        source: io::Error::other(std::format!("{e}")),
    })
}

fn random_u64() -> Result<u64, Error> {
    let mut b = [0u8; 8];
    os_random(&mut b)?;
    Ok(u64::from_le_bytes(b))
}

pub(crate) enum Command {
    Publish {
        topic: String,
        payload: Vec<u8>,
        reply: oneshot::Sender<Result<(), PublishError>>,
    },
    Subscribe {
        filter: String,
        tx: mpsc::Sender<Message>,
        reply: oneshot::Sender<Result<SubscriptionId, SubscribeError>>,
    },
    Unsubscribe(SubscriptionId),
    Peers(oneshot::Sender<Vec<PeerInfo>>),
    Stats(oneshot::Sender<RuntimeStats>),
    Close(oneshot::Sender<()>),
}

/// A running node. Cheap to clone; the node leaves the mesh (announcing it) when
/// [`close`](Self::close) is called or the last clone is dropped.
#[derive(Debug, Clone)]
pub struct Node {
    id: NodeId,
    epoch: u32,
    local_addr: SocketAddr,
    cmd: mpsc::Sender<Command>,
    peer_events: broadcast::Sender<PeerEvent>,
    sub_capacity: usize,
    origin: std::time::Instant,
}

impl Node {
    /// Time elapsed since an instant this node reported, such as [`PeerInfo::last_heard`].
    pub fn elapsed_since(&self, t: crate::Instant) -> Duration {
        self.origin.elapsed().saturating_sub(Duration::from_micros(t.as_micros()))
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// This run's boot epoch.
    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    /// The unicast address this node sends from (and that peers see).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    async fn request<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, Error> {
        let (tx, rx) = oneshot::channel();
        self.cmd.send(make(tx)).await.map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)
    }

    /// Publishes `payload` on `topic` (best effort). Returns once the datagram is handed to the
    /// socket; errors say why nothing was sent (bad topic, too large, closed).
    pub async fn publish(&self, topic: &str, payload: impl Into<Vec<u8>>) -> Result<(), Error> {
        let (topic, payload) = (topic.into(), payload.into());
        self.request(|reply| Command::Publish { topic, payload, reply }).await?.map_err(Error::Publish)
    }

    /// Subscribes to `filter` (MQTT wildcards `+` and `#`). Dropping the subscription ends it.
    pub async fn subscribe(&self, filter: &str) -> Result<Subscription, Error> {
        let (tx, rx) = mpsc::channel(self.sub_capacity);
        let filter = filter.into();
        let id = self.request(|reply| Command::Subscribe { filter, tx, reply }).await?.map_err(Error::Subscribe)?;
        Ok(Subscription { id, rx, cmd: self.cmd.clone() })
    }

    /// The peers currently up.
    pub async fn peers(&self) -> Result<Vec<PeerInfo>, Error> {
        self.request(Command::Peers).await
    }

    /// Traffic and drop counters.
    pub async fn stats(&self) -> Result<RuntimeStats, Error> {
        self.request(Command::Stats).await
    }

    /// A stream of peer changes from now on.
    pub fn peer_events(&self) -> broadcast::Receiver<PeerEvent> {
        self.peer_events.subscribe()
    }

    /// Announces departure to the mesh and stops the driver.
    pub async fn close(self) -> Result<(), Error> {
        self.request(Command::Close).await
    }
}

/// Messages matching one filter, in arrival order. Implements `futures_core::Stream`.
#[derive(Debug)]
pub struct Subscription {
    id: SubscriptionId,
    rx: mpsc::Receiver<Message>,
    cmd: mpsc::Sender<Command>,
}

impl Subscription {
    /// The next message; `None` once the node has shut down.
    pub async fn recv(&mut self) -> Option<Message> {
        self.rx.recv().await
    }
}

impl futures_core::Stream for Subscription {
    type Item = Message;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        self.rx.poll_recv(cx)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let _ = self.cmd.try_send(Command::Unsubscribe(self.id));
    }
}
