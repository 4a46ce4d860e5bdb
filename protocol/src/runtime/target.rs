//! Whom a call goes to, and which interface a node uses: an id or a name, an address or a name.
//! Names are resolved here so that programs need not repeat the CLI's lookup loops.

use std::net::Ipv4Addr;
use std::string::String;
use std::time::Duration;
use std::vec::Vec;
use std::{fmt, format};

use tokio::sync::broadcast::error::RecvError;

use super::{Error, Node};
use crate::NodeId;

/// The peer a call goes to: its [`NodeId`], or its name as its beacons announce it. Every
/// call method takes `impl Into<Target>`, so a `NodeId` and a `&str` name both work.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// A node id: used as it is.
    Id(NodeId),
    /// A node name: the call waits (within its timeout) for one peer of that name to be up.
    Name(String),
}

impl Target {
    /// Reads command-line text as the CLI does: exactly 16 hex digits are an id, anything else
    /// is a name.
    pub fn parse(text: &str) -> Target {
        match text.parse::<NodeId>() {
            Ok(id) if text.len() == 16 => Target::Id(id),
            _ => Target::Name(text.into()),
        }
    }
}

impl From<NodeId> for Target {
    fn from(id: NodeId) -> Self {
        Target::Id(id)
    }
}

impl From<&NodeId> for Target {
    fn from(id: &NodeId) -> Self {
        Target::Id(*id)
    }
}

/// A name (not parsed as an id; see [`Target::parse`] for that).
impl From<&str> for Target {
    fn from(name: &str) -> Self {
        Target::Name(name.into())
    }
}

/// A name (not parsed as an id; see [`Target::parse`] for that).
impl From<String> for Target {
    fn from(name: String) -> Self {
        Target::Name(name)
    }
}

/// A name (not parsed as an id; see [`Target::parse`] for that).
impl From<&String> for Target {
    fn from(name: &String) -> Self {
        Target::Name(name.clone())
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Id(id) => id.fmt(f),
            Target::Name(name) => write!(f, "'{name}'"),
        }
    }
}

/// The interface a node sends and receives multicast on: an IPv4 address, or text that is an
/// interface name (`lo`, `wlan0`) or an address, resolved when the node opens.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Interface {
    /// This address, used as it is.
    Addr(Ipv4Addr),
    /// An interface name or IPv4 address in text, resolved by [`super::resolve_interface`].
    Name(String),
}

impl Interface {
    /// The address to bind to, or why there is none (naming the interfaces there are).
    pub fn resolve(&self) -> Result<Ipv4Addr, Error> {
        match self {
            Interface::Addr(a) => Ok(*a),
            Interface::Name(text) => super::resolve_interface(text).map_err(Error::Interface),
        }
    }
}

impl From<Ipv4Addr> for Interface {
    fn from(addr: Ipv4Addr) -> Self {
        Interface::Addr(addr)
    }
}

impl From<&str> for Interface {
    fn from(text: &str) -> Self {
        Interface::Name(text.into())
    }
}

impl From<String> for Interface {
    fn from(text: String) -> Self {
        Interface::Name(text)
    }
}

impl From<&String> for Interface {
    fn from(text: &String) -> Self {
        Interface::Name(text.clone())
    }
}

/// How often the peer table is looked at again while waiting for a name, besides peer events
/// (a peer's name may be learned after it came up).
const NAME_POLL: Duration = Duration::from_millis(50);

impl Node {
    /// The id of `target`: an id at once; a name once exactly one peer of that name is up,
    /// waiting up to `limit` for it to appear. Fails with [`Error::NoSuchNode`] if none appears
    /// in time and [`Error::AmbiguousName`] if several distinct ids carry the name.
    pub async fn resolve(&self, target: impl Into<Target>, limit: Duration) -> Result<NodeId, Error> {
        let name = match target.into() {
            Target::Id(id) => return Ok(id),
            Target::Name(name) => name,
        };
        // Subscribed before the first look, so that no arrival between the two is missed.
        let mut events = self.peer_events();
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let mut ids: Vec<NodeId> =
                self.peers().await?.into_iter().filter(|p| p.name == name).map(|p| p.id).collect();
            ids.sort();
            ids.dedup();
            match ids.as_slice() {
                [one] => return Ok(*one),
                [] => {}
                _ => return Err(Error::AmbiguousName { name, ids }),
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Err(Error::NoSuchNode { name, waited: limit });
            }
            let wake = deadline.min(now + NAME_POLL);
            // An event, a lag or the poll interval: look again.
            if let Ok(Err(RecvError::Closed)) = tokio::time::timeout_at(wake, events.recv()).await {
                return Err(Error::Closed);
            }
        }
    }
}

/// The text of [`Error::AmbiguousName`], as the CLI has always printed it.
pub(super) fn ambiguous(name: &str, ids: &[NodeId]) -> String {
    let list: Vec<String> = ids.iter().map(|id| format!("{id}")).collect();
    format!("{} nodes are named '{name}'; call one by id: {}", ids.len(), list.join(", "))
}
