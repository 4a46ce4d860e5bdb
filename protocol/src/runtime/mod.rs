//! The tokio runtime (feature `std`): a thin driver that moves datagrams, time and events
//! between a real multicast socket and the sans-IO [`Node`](crate::Node), plus the async API.
//!
//! Inside: `socket` opens the two UDP sockets, `batch` moves datagrams through them in as few
//! system calls as the kernel allows (GSO, GRO, `sendmmsg`, `recvmmsg`, with fallbacks), `driver`
//! is the loop around the core, `state_file` and [`identity_file`] keep what survives a restart.
//!
//! A complete program (the one in `examples/hello.rs` and the README): two nodes find each
//! other on loopback, one calls the other by name, and a reliable message goes across.
//!
//! ```
//! use std::time::Duration;
//!
//! use starling::prelude::*; // runtime::Node (the async one), NodeBuilder, NetworkKey, ...
//! use tokio::time::timeout;
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! #   let port = std::net::UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port();
//!     // A real mesh shares one key: NetworkKey::parse(&std::fs::read_to_string("net.key")?)?
//!     let key = NetworkKey::generate();
//!     // Loopback by default; .interface("wlan0") (or an Ipv4Addr) for a real network.
//!     let kitchen = NodeBuilder::new(key.clone()).name("kitchen").port(port).open().await?;
//!     let display = NodeBuilder::new(key).name("display").port(port).open().await?;
//!
//!     // Subscribed first: the filter is announced at once, so by the time the call below is answered
//!     // kitchen knows that display wants home/+/temp and its reliable publish waits for display.
//!     let mut sub = display.subscribe("home/+/temp").await?; // also a Stream of messages
//!     kitchen.serve("relay.set", |req| async move { Ok(req.payload) }).await?;
//!     // By name (or NodeId): waits, within the timeout, for a node named "kitchen" to be up.
//!     let reply = display.call("kitchen", "relay.set", vec![1], Duration::from_secs(10)).await?;
//!     assert_eq!(reply, [1]);
//!
//!     kitchen.publish("home/kitchen/temp", b"21.5".to_vec()).reliable().await?; // acked by every subscriber
//!     let msg = timeout(Duration::from_secs(5), sub.recv()).await?.ok_or("the node shut down")?;
//!     println!("{} from {} ({:?}): {}", msg.topic, msg.from, msg.from_name, String::from_utf8_lossy(&msg.payload));
//!     assert_eq!((msg.from, msg.payload.as_slice()), (kitchen.id(), &b"21.5"[..]));
//!
//!     kitchen.close().await?;
//!     display.close().await?;
//!     Ok(())
//! }
//! ```

mod batch;
mod driver;
pub mod identity_file;
mod socket;
mod state_file;
mod target;
#[cfg(feature = "typed")]
pub mod typed;

use std::boxed::Box;
use std::future::{Future, IntoFuture};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::string::{String, ToString};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use std::vec::Vec;
use std::{fmt, io};

use tokio::sync::{broadcast, mpsc, oneshot};

use crate::identity::{Allowlist, Identity};
use crate::{CallError, Config, ConfigError, NetworkKey, NodeId, PeerInfo, PublishError, StateError, Stats};
use crate::{DownReason, PublishFailure, SubscribeError, SubscriptionId};

pub use socket::resolve_interface;
pub use state_file::StateFile;
pub use target::{Interface, Target};
#[cfg(feature = "typed")]
pub use typed::{DecodeError, TypedMessage, TypedSubscription};

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
    /// A reliable publication was not acknowledged by every matching subscriber.
    NotDelivered(PublishFailure),
    /// A reliable publication found no subscriber to wait for: it was sent (and stays retained
    /// for subscribers that turn up), but nothing is known to have arrived. Not a success.
    NoSubscribers,
    /// A call failed.
    Call(CallError),
    /// An allowlist was refused.
    Allowlist(String),
    /// The node has shut down.
    Closed,
    /// No peer of this name was up within the time the call or lookup allowed.
    NoSuchNode {
        /// The name looked for.
        name: String,
        /// How long it was waited for.
        waited: Duration,
    },
    /// Several distinct nodes carry the name: call one of them by id.
    AmbiguousName {
        /// The name.
        name: String,
        /// The ids carrying it, in order.
        ids: Vec<NodeId>,
    },
    /// The interface given to [`NodeBuilder::interface`] does not exist or has no IPv4 address.
    Interface(String),
    /// A value could not be encoded for a typed call or publication (feature `typed`).
    #[cfg(feature = "typed")]
    Encode {
        /// The Rust type of the value.
        type_name: &'static str,
        /// Why, in postcard's words.
        problem: String,
    },
    /// Received bytes did not decode as the expected type (feature `typed`).
    #[cfg(feature = "typed")]
    Decode(typed::DecodeError),
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
            Error::NotDelivered(e) => e.fmt(f),
            Error::NoSubscribers => f.write_str(crate::node::NO_SUBSCRIBERS),
            Error::Call(e) => e.fmt(f),
            Error::Allowlist(e) => write!(f, "allowlist: {e}"),
            Error::Closed => f.write_str("the node has shut down"),
            Error::NoSuchNode { name, waited } => write!(f, "no node named '{name}' appeared within {waited:?}"),
            Error::AmbiguousName { name, ids } => f.write_str(&target::ambiguous(name, ids)),
            Error::Interface(e) => f.write_str(e),
            #[cfg(feature = "typed")]
            Error::Encode { type_name, problem } => write!(f, "a {type_name} cannot be encoded: {problem}"),
            #[cfg(feature = "typed")]
            Error::Decode(e) => e.fmt(f),
        }
    }
}

/// `Display` already includes the cause, so no `source` is reported (printing the chain would
/// repeat it).
impl std::error::Error for Error {}

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
    /// Sequence number in the publisher's reliable stream (`None` for best effort).
    pub seq: Option<u64>,
}

/// What a [`Subscription`] yields with [`Subscription::recv_event`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// A message.
    Message(Message),
    /// Reliable messages from `from` were lost for good: sequence numbers `first..end`. Their
    /// topics are unknown, so every subscription hears of it.
    Gap {
        /// The publisher.
        from: NodeId,
        /// First lost sequence number.
        first: u64,
        /// One past the last.
        end: u64,
    },
}

/// A call received by a handler given to [`Node::serve`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The caller.
    pub from: NodeId,
    /// Method name.
    pub method: String,
    /// Argument bytes.
    pub payload: Vec<u8>,
}

/// What a handler returns: reply bytes, or error bytes the caller gets as `CallError::Remote`.
pub type Reply = Result<Vec<u8>, Vec<u8>>;

pub(crate) type Handler = Arc<dyn Fn(Request) -> Pin<Box<dyn Future<Output = Reply> + Send>> + Send + Sync>;

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

pub use driver::{INFO_METHOD, STATS_METHOD};

/// What a monitor wants to know about a peer beyond [`PeerInfo`]: the filters it announced (so
/// its topics are known before anything is published) and the round-trip time measured to it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PeerDetails {
    /// Id, name, address, epoch, last heard.
    pub info: PeerInfo,
    /// Its subscription filters, as it last announced them.
    pub filters: Vec<String>,
    /// Smoothed round-trip time, once a unicast exchange with it measured one.
    pub rtt: Option<Duration>,
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
    /// Bytes of received datagrams dropped by test loss injection (0 outside tests and benches).
    pub injected_loss_bytes: u64,
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
    security: Security,
    /// The core's settings so far: name, beacon interval and [`configure`](Self::configure)'s
    /// changes, in call order. Its `rng_seed` stays zero unless set, and is then drawn at open.
    config: Config,
    group: Ipv4Addr,
    port: u16,
    interface: Interface,
    ttl: u32,
    persistence: Persistence,
    subscription_capacity: usize,
    rx_loss_percent: u8,
    udp_offload: bool,
}

/// How a node proves membership: the network key, or its own key pair and the allowlist.
#[derive(Debug, Clone)]
enum Security {
    Psk(NetworkKey),
    Identity { identity: Identity, allowlist: Allowlist, file: Option<PathBuf> },
}

impl NodeBuilder {
    /// A builder for a node of the network `key` (PSK mode), on the default group and port, on
    /// loopback.
    pub fn new(key: NetworkKey) -> Self {
        Self::with(Security::Psk(key))
    }

    /// A builder for a node in identity mode (PROTOCOL.md §11): its key pair and the network's
    /// allowlist, which must list it.
    pub fn identity(identity: Identity, allowlist: Allowlist) -> Self {
        Self::with(Security::Identity { identity, allowlist, file: None })
    }

    /// Identity mode: reload the allowlist from `path` whenever the file changes (checked twice a
    /// second), so that editing it revokes or adds members without restarting. A file that fails
    /// to parse is reported in the log and the previous allowlist stays in force.
    pub fn allowlist_file(mut self, path: impl Into<PathBuf>) -> Self {
        if let Security::Identity { file, .. } = &mut self.security {
            *file = Some(path.into());
        }
        self
    }

    fn with(security: Security) -> Self {
        NodeBuilder {
            security,
            config: Config::new(String::new(), UNSET_SEED),
            group: DEFAULT_GROUP,
            port: DEFAULT_PORT,
            interface: Interface::Addr(Ipv4Addr::LOCALHOST),
            ttl: 1,
            persistence: Persistence::Ephemeral,
            subscription_capacity: 1024,
            rx_loss_percent: 0,
            udp_offload: true,
        }
    }

    /// The node's human-readable name (at most 32 bytes).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.config.name = name.into();
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

    /// The interface to use (default 127.0.0.1, loopback): an `Ipv4Addr`, or text naming an
    /// interface (`"lo"`, `"wlan0"`) or giving its address (`"192.168.1.20"`). Text is resolved
    /// by [`resolve_interface`] when the node opens; a name without an IPv4 address makes
    /// [`open`](Self::open) fail with [`Error::Interface`], listing the interfaces there are.
    pub fn interface(mut self, interface: impl Into<Interface>) -> Self {
        self.interface = interface.into();
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
        self.config.beacon_interval = interval;
        self
    }

    /// Messages buffered per subscription before further ones are dropped and counted.
    pub fn subscription_capacity(mut self, n: usize) -> Self {
        self.subscription_capacity = n.max(1);
        self
    }

    /// Drops this share of received datagrams at random, to test reliability over real sockets.
    #[cfg(feature = "_test-loss")]
    pub fn rx_loss_percent(mut self, percent: u8) -> Self {
        self.rx_loss_percent = percent.min(100);
        self
    }

    /// Whether to batch socket calls where the kernel can (default `true`): on Linux, runs of
    /// same-size datagrams to one destination leave in one segmentation-offload send (GSO), the
    /// sends of one burst share a `sendmmsg`, and one `recvmmsg` takes many datagrams, coalesced
    /// ones (GRO) included. Paths the kernel lacks or refuses fall back by themselves; `false`
    /// sends and receives one datagram per call, to compare or to rule offload out.
    pub fn udp_offload(mut self, on: bool) -> Self {
        self.udp_offload = on;
        self
    }

    /// Adjusts any other core setting (bounds, datagram size) with a closure or a `fn`, which
    /// runs now, on the settings given so far: a later [`name`](Self::name) or
    /// [`beacon_interval`](Self::beacon_interval) call wins over it, an earlier one does not.
    /// The random seed is drawn when the node opens, unless `f` sets one.
    ///
    /// ```
    /// # use starling::{runtime::NodeBuilder, NetworkKey};
    /// let peers = 16;
    /// let builder = NodeBuilder::new(NetworkKey::generate()).configure(|c| c.max_peers = peers);
    /// ```
    pub fn configure(mut self, f: impl FnOnce(&mut Config)) -> Self {
        f(&mut self.config);
        self
    }

    /// Opens the sockets, claims the state file and starts the driver task on the current tokio
    /// runtime. The node announces itself at once.
    pub async fn open(self) -> Result<Node, Error> {
        let mut config = self.config.clone();
        if config.rng_seed == UNSET_SEED {
            os_random(&mut config.rng_seed)?;
        }
        config.validate().map_err(Error::Config)?;
        let fresh_id = match &self.security {
            Security::Psk(_) => NodeId::from_u64(random_u64()?),
            // Identity mode: the id is bound to the key.
            Security::Identity { identity, .. } => identity.node_id(),
        };
        let (boot, state_file) = match &self.persistence {
            Persistence::Ephemeral => {
                let mut boot = crate::Boot::ephemeral(fresh_id);
                if let Security::Identity { .. } = self.security {
                    // The id survives restarts, so a random epoch tells peers it restarted.
                    boot.epoch = (random_u64()? as u32) | 1;
                }
                (boot, None)
            }
            Persistence::File(path) => {
                let (file, boot) = StateFile::open_boot(path, fresh_id, config.lease_block)?;
                (boot, Some(file))
            }
        };
        let interface = self.interface.resolve()?;
        let sockets = socket::Sockets::open(self.group, self.port, interface, self.ttl)?;
        let local_addr = sockets.local_addr();
        let origin = std::time::Instant::now();
        // Identity mode only: PSK nodes resume whatever id their state file holds.
        if matches!(self.security, Security::Identity { .. }) && boot.node_id != fresh_id {
            if let Persistence::File(path) = &self.persistence {
                return Err(Error::StateFile {
                    path: path.clone(),
                    problem: "holds another node id than this identity's; give each identity its own state file".into(),
                });
            }
        }
        let mut node = match &self.security {
            Security::Psk(key) => crate::Node::new(config, key, boot, crate::Instant::ZERO),
            Security::Identity { identity, allowlist, .. } => {
                crate::Node::new_identity(config, identity.clone(), allowlist.clone(), boot, crate::Instant::ZERO)
            }
        }
        .map_err(Error::Config)?;
        node.serve(STATS_METHOD).expect("a valid method name");
        node.serve(INFO_METHOD).expect("a valid method name");
        let (cmd_tx, cmd_rx) = mpsc::channel(1024);
        let (peer_tx, _) = broadcast::channel(256);
        let mut driver = driver::Driver::new(
            node,
            sockets,
            self.udp_offload,
            state_file,
            origin,
            cmd_rx,
            cmd_tx.downgrade(),
            peer_tx.clone(),
        );
        driver.loss.percent = self.rx_loss_percent;
        tokio::spawn(driver.run());
        if let Security::Identity { allowlist, file: Some(path), .. } = self.security {
            tokio::spawn(watch_allowlist(path, allowlist, cmd_tx.downgrade()));
        }
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

/// Reloads the allowlist when its file changes, until the node is gone.
async fn watch_allowlist(path: PathBuf, mut current: Allowlist, cmd: mpsc::WeakSender<Command>) {
    let stamp = |p: &PathBuf| std::fs::metadata(p).ok().map(|m| (m.modified().ok(), m.len()));
    let mut last = stamp(&path);
    let mut tick = tokio::time::interval(ALLOWLIST_POLL);
    loop {
        tick.tick().await;
        let Some(cmd) = cmd.upgrade() else { return };
        let now = stamp(&path);
        if now == last {
            continue;
        }
        last = now;
        match identity_file::read_allowlist(&path) {
            Ok(list) if list == current => {}
            Ok(list) => {
                let (reply, done) = oneshot::channel();
                if cmd.send(Command::SetAllowlist(list.clone(), reply)).await.is_err() {
                    return;
                }
                match done.await {
                    Ok(Ok(())) => {
                        tracing::info!(file = %path.display(), members = list.entries.len(), "allowlist reloaded");
                        current = list;
                    }
                    Ok(Err(e)) => tracing::warn!(file = %path.display(), "allowlist refused: {e}"),
                    Err(_) => return,
                }
            }
            Err(e) => tracing::warn!("allowlist not reloaded, the previous one stays in force: {e}"),
        }
    }
}

/// The seed a builder's settings hold until one is drawn at open: never used as a seed.
const UNSET_SEED: [u8; 32] = [0; 32];

/// How often a watched allowlist file is checked for changes.
const ALLOWLIST_POLL: Duration = Duration::from_millis(500);

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
        reliable: bool,
        ttl: Option<Duration>,
        reply: oneshot::Sender<Result<(), Error>>,
    },
    Serve {
        method: String,
        handler: Handler,
        reply: oneshot::Sender<Result<(), CallError>>,
    },
    Call {
        peer: NodeId,
        method: String,
        payload: Vec<u8>,
        timeout: Duration,
        reply: oneshot::Sender<Result<Vec<u8>, CallError>>,
    },
    Respond {
        to: NodeId,
        call_id: u64,
        reply: Reply,
    },
    Subscribe {
        filter: String,
        tx: mpsc::Sender<Received>,
        reply: oneshot::Sender<Result<SubscriptionId, SubscribeError>>,
    },
    Unsubscribe(SubscriptionId),
    Peers(oneshot::Sender<Vec<PeerInfo>>),
    PeerDetails(oneshot::Sender<Vec<PeerDetails>>),
    Stats(oneshot::Sender<RuntimeStats>),
    SetAllowlist(Allowlist, oneshot::Sender<Result<(), crate::identity::AllowlistError>>),
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

impl RuntimeStats {
    /// Every counter with its name, the core's first.
    pub fn fields(&self) -> std::vec::Vec<(&'static str, u64)> {
        let mut v = self.core.fields().to_vec();
        v.push(("subscriber_lagged", self.subscriber_lagged));
        v.push(("send_errors", self.send_errors));
        v
    }
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

    /// Publishes `payload` on `topic`. Awaiting it sends it best effort (done once handed to the
    /// socket); `.reliable()` waits until every matching subscriber known now has it, and
    /// `.ttl(d)` bounds how long it may be delivered or repaired.
    ///
    /// ```no_run
    /// # async fn f(node: starling::runtime::Node) -> Result<(), starling::runtime::Error> {
    /// node.publish("plant/line1/count", b"42".to_vec()).reliable().ttl(std::time::Duration::from_secs(30)).await?;
    /// # Ok(()) }
    /// ```
    pub fn publish(&self, topic: &str, payload: impl Into<Vec<u8>>) -> Publish<'_> {
        Publish { node: self, topic: topic.into(), payload: payload.into(), reliable: false, ttl: None, error: None }
    }

    /// Serves `method`: each call runs `handler` (concurrently with others); its `Ok` bytes are
    /// the reply, its `Err` bytes reach the caller as `CallError::Remote`. A retransmitted
    /// request never runs the handler twice.
    pub async fn serve<F, Fut>(&self, method: &str, handler: F) -> Result<(), Error>
    where
        F: Fn(Request) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Reply> + Send + 'static,
    {
        let handler: Handler = Arc::new(move |req| Box::pin(handler(req)));
        let method = method.into();
        self.request(|reply| Command::Serve { method, handler, reply }).await?.map_err(Error::Call)
    }

    /// Calls `method` on `peer`, a [`NodeId`] or a node name (see [`Target`]): the reply bytes,
    /// or an error at the latest after `timeout`: a [`CallError`] (`Timeout`, `Unreachable`,
    /// `NoSuchMethod`, `Denied`, `Remote(bytes)`), or for a name [`Error::NoSuchNode`] or
    /// [`Error::AmbiguousName`]. A name is looked up as [`resolve`](Self::resolve) does, within
    /// the same `timeout`. If the peer restarts or is not up yet, the call goes to it as soon as
    /// it is.
    pub async fn call(
        &self,
        peer: impl Into<Target>,
        method: &str,
        payload: impl Into<Vec<u8>>,
        timeout: Duration,
    ) -> Result<Vec<u8>, Error> {
        let started = tokio::time::Instant::now();
        let peer = self.resolve(peer, timeout).await?;
        let timeout = timeout.saturating_sub(started.elapsed());
        let (method, payload) = (method.into(), payload.into());
        self.request(|reply| Command::Call { peer, method, payload, timeout, reply }).await?.map_err(Error::Call)
    }

    /// Subscribes to `filter` (MQTT wildcards `+` and `#`). Dropping the subscription ends it.
    pub async fn subscribe(&self, filter: &str) -> Result<Subscription, Error> {
        self.subscribe_many(&[filter]).await
    }

    /// Subscribes to several filters as one subscription: a message matching more than one of
    /// them arrives once.
    pub async fn subscribe_many(&self, filters: &[&str]) -> Result<Subscription, Error> {
        let (tx, rx) = mpsc::channel(self.sub_capacity);
        let mut sub = Subscription { ids: Vec::new(), rx, cmd: self.cmd.clone(), gaps: 0 };
        for filter in filters {
            let (filter, tx) = ((*filter).into(), tx.clone());
            let id = self.request(|reply| Command::Subscribe { filter, tx, reply }).await?.map_err(Error::Subscribe)?;
            sub.ids.push(id);
        }
        Ok(sub)
    }

    /// The peers currently up.
    pub async fn peers(&self) -> Result<Vec<PeerInfo>, Error> {
        self.request(Command::Peers).await
    }

    /// The peers currently up, with their announced filters and measured round-trip times.
    pub async fn peer_details(&self) -> Result<Vec<PeerDetails>, Error> {
        self.request(Command::PeerDetails).await
    }

    /// Identity mode: replaces the allowlist now; members no longer on it are cut off (see
    /// [`crate::Node::set_allowlist`]). PSK nodes ignore it.
    pub async fn set_allowlist(&self, list: Allowlist) -> Result<(), Error> {
        let (reply, rx) = oneshot::channel();
        self.cmd.send(Command::SetAllowlist(list, reply)).await.map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)?.map_err(|e| Error::Allowlist(e.to_string()))
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

/// A publication being prepared by [`Node::publish`]; await it to send.
#[must_use = "a publication is sent when awaited"]
pub struct Publish<'a> {
    node: &'a Node,
    topic: String,
    payload: Vec<u8>,
    reliable: bool,
    ttl: Option<Duration>,
    /// Why it cannot be sent, found before it was awaited (a typed value that did not encode).
    error: Option<Error>,
}

impl Publish<'_> {
    /// Deliver reliably: retransmitted until acknowledged, once and in order per publisher, and
    /// the await resolves when every matching subscriber known now has it (or fails naming who
    /// did not).
    pub fn reliable(mut self) -> Self {
        self.reliable = true;
        self
    }

    /// The message is never delivered or repaired after `ttl`.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }
}

impl Publish<'_> {
    /// Hands the publication to the node in order and returns at once with a handle that
    /// resolves when it is done (for reliable ones: acknowledged). Lets a caller keep many
    /// reliable publications in flight without waiting for each.
    pub async fn submit(self) -> Result<PublishHandle, Error> {
        let Publish { node, topic, payload, reliable, ttl, error } = self;
        if let Some(e) = error {
            return Err(e);
        }
        let (reply, rx) = oneshot::channel();
        node.cmd.send(Command::Publish { topic, payload, reliable, ttl, reply }).await.map_err(|_| Error::Closed)?;
        Ok(PublishHandle(rx))
    }
}

/// The outcome of a [`Publish::submit`]ted publication, as a future.
#[derive(Debug)]
#[must_use = "the handle tells whether the publication was delivered"]
pub struct PublishHandle(oneshot::Receiver<Result<(), Error>>);

impl Future for PublishHandle {
    type Output = Result<(), Error>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx).map(|r| r.unwrap_or(Err(Error::Closed)))
    }
}

impl<'a> IntoFuture for Publish<'a> {
    type Output = Result<(), Error>;
    type IntoFuture = Pin<Box<dyn Future<Output = Result<(), Error>> + Send + 'a>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move { self.submit().await?.await })
    }
}

/// Messages matching one filter, in order per publisher. Implements `futures_core::Stream`
/// of messages; [`recv_event`](Self::recv_event) also shows gaps.
#[derive(Debug)]
pub struct Subscription {
    ids: Vec<SubscriptionId>,
    rx: mpsc::Receiver<Received>,
    cmd: mpsc::Sender<Command>,
    gaps: u64,
}

impl Subscription {
    /// The next message; `None` once the node has shut down. Gaps are counted in
    /// [`gaps`](Self::gaps); use [`recv_event`](Self::recv_event) to see them in sequence.
    pub async fn recv(&mut self) -> Option<Message> {
        loop {
            match self.rx.recv().await? {
                Received::Message(m) => return Some(m),
                Received::Gap { first, end, .. } => self.gaps += end - first,
            }
        }
    }

    /// The next message or gap; `None` once the node has shut down.
    pub async fn recv_event(&mut self) -> Option<Received> {
        self.rx.recv().await
    }

    /// Reliable sequence numbers reported lost to this subscription so far by `recv`.
    pub fn gaps(&self) -> u64 {
        self.gaps
    }
}

impl futures_core::Stream for Subscription {
    type Item = Message;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        loop {
            match self.rx.poll_recv(cx) {
                Poll::Ready(Some(Received::Message(m))) => return Poll::Ready(Some(m)),
                Poll::Ready(Some(Received::Gap { first, end, .. })) => self.gaps += end - first,
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        for id in &self.ids {
            let _ = self.cmd.try_send(Command::Unsubscribe(*id));
        }
    }
}
