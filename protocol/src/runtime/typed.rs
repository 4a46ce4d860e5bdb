//! Typed calls and pub/sub (feature `typed`): requests, replies and messages are Rust values,
//! encoded with [postcard](https://docs.rs/postcard) through serde, so programs need not write
//! their own encoding and decoding around [`Node::call`], [`Node::serve`], [`Node::publish`]
//! and [`Node::subscribe`]. Every decode failure is reported, naming the type that failed.
//!
//! The bytes on the wire are postcard's: a non-Rust peer (or `starling call --hex`) can speak to
//! these methods and topics by producing the same bytes.
//!
//! ```
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use serde::{Deserialize, Serialize};
//! use starling::prelude::*;
//!
//! #[derive(Serialize, Deserialize)]
//! struct Add { a: i32, b: i32 }
//!
//! # let port = std::net::UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port();
//! let key = NetworkKey::generate();
//! let open = |name: &str| NodeBuilder::new(key.clone()).name(name).port(port).open();
//! let (server, client) = (open("adder").await?, open("client").await?);
//! server.serve_typed("add", |r: Add| r.a + r.b).await?;
//! let sum: i32 = client.call_typed("adder", "add", &Add { a: 2, b: 3 }, Duration::from_secs(10)).await?;
//! assert_eq!(sum, 5);
//! # Ok(()) }
//! ```

use std::any::type_name;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::string::{String, ToString};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use std::vec::Vec;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{Error, Message, Node, Publish, Request, Subscription, Target};
use crate::NodeId;

/// Bytes that do not decode as the type they were meant to be: a reply, a request or a
/// message. Says which type, what the bytes were, and why; keeps the bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    /// The Rust type that was expected (`std::any::type_name`).
    pub type_name: &'static str,
    /// What the bytes were, such as "the reply to `add` from 'adder'".
    pub what: String,
    /// Why they do not decode, in postcard's words.
    pub problem: String,
    /// The bytes as received.
    pub payload: Vec<u8>,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({} bytes) does not decode as {}: {}",
            self.what,
            self.payload.len(),
            self.type_name,
            self.problem
        )
    }
}

impl std::error::Error for DecodeError {}

/// Encodes `value` as the typed API sends it (postcard). Fails with [`Error::Encode`] for
/// values postcard cannot express (such as sequences of unknown length).
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, Error> {
    postcard::to_allocvec(value).map_err(|e| Error::Encode { type_name: type_name::<T>(), problem: e.to_string() })
}

/// Decodes bytes as the typed API does: the whole of `bytes` must be one `T` (trailing bytes
/// are an error, as they mean the sender used another type). `what` names the bytes in the
/// error.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], what: impl FnOnce() -> String) -> Result<T, DecodeError> {
    let fail = |problem: String, what: String| DecodeError {
        type_name: type_name::<T>(),
        what,
        problem,
        payload: bytes.to_vec(),
    };
    match postcard::take_from_bytes::<T>(bytes) {
        Ok((value, [])) => Ok(value),
        Ok((_, rest)) => Err(fail(std::format!("{} bytes left over after the value", rest.len()), what())),
        Err(e) => Err(fail(e.to_string(), what())),
    }
}

/// The reply bytes of a typed handler: its value encoded, or an error text the caller gets as
/// `CallError::Remote`.
fn reply_of<Resp: Serialize>(resp: &Resp) -> Result<Vec<u8>, Vec<u8>> {
    encode(resp).map_err(|e| e.to_string().into_bytes())
}

fn request_what(req: &Request) -> String {
    std::format!("the request to `{}` from {}", req.method, req.from)
}

impl Node {
    /// Calls `method` on `peer` (an id or a name, as [`call`](Self::call)) with `req` encoded,
    /// and decodes the reply as `Resp`. A reply that does not decode is
    /// [`Error::Decode`], naming `Resp`; a request the server could not decode comes back as
    /// `CallError::Remote` with the server's text.
    pub async fn call_typed<Req, Resp>(
        &self,
        peer: impl Into<Target>,
        method: &str,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, Error>
    where
        Req: Serialize + ?Sized,
        Resp: DeserializeOwned,
    {
        let peer = peer.into();
        let what = || std::format!("the reply to `{method}` from {peer}");
        let bytes = self.call(peer.clone(), method, encode(req)?, timeout).await?;
        decode(&bytes, what).map_err(Error::Decode)
    }

    /// Serves `method` with a function from a decoded `Req` to a `Resp` that is encoded as the
    /// reply. A request that does not decode as `Req` is answered with an error naming `Req`
    /// (the caller's `CallError::Remote`). To report failures as values, make `Resp` a
    /// `Result<T, E>`; for handlers that await, see [`serve_typed_async`](Self::serve_typed_async).
    pub async fn serve_typed<Req, Resp, F>(&self, method: &str, handler: F) -> Result<(), Error>
    where
        Req: DeserializeOwned + Send + 'static,
        Resp: Serialize + 'static,
        F: Fn(Req) -> Resp + Send + Sync + 'static,
    {
        let handler = Arc::new(handler);
        self.serve(method, move |req: Request| {
            let handler = handler.clone();
            async move {
                let value: Req = decode(&req.payload, || request_what(&req)).map_err(|e| e.to_string().into_bytes())?;
                reply_of(&handler(value))
            }
        })
        .await
    }

    /// As [`serve_typed`](Self::serve_typed), for a handler that is async (one that calls other
    /// nodes, say). Calls run concurrently.
    pub async fn serve_typed_async<Req, Resp, F, Fut>(&self, method: &str, handler: F) -> Result<(), Error>
    where
        Req: DeserializeOwned + Send + 'static,
        Resp: Serialize + 'static,
        F: Fn(Req) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Resp> + Send + 'static,
    {
        let handler = Arc::new(handler);
        self.serve(method, move |req: Request| {
            let handler = handler.clone();
            async move {
                let value: Req = decode(&req.payload, || request_what(&req)).map_err(|e| e.to_string().into_bytes())?;
                reply_of(&handler(value).await)
            }
        })
        .await
    }

    /// Publishes `value` encoded on `topic`; `.reliable()` and `.ttl()` apply as for
    /// [`publish`](Self::publish). A value that cannot be encoded fails when awaited, with
    /// [`Error::Encode`].
    pub fn publish_typed<T: Serialize + ?Sized>(&self, topic: &str, value: &T) -> Publish<'_> {
        match encode(value) {
            Ok(bytes) => self.publish(topic, bytes),
            Err(e) => Publish { error: Some(e), ..self.publish(topic, Vec::new()) },
        }
    }

    /// Subscribes to `filter` and decodes each message as `T`: a message that does not decode
    /// is yielded as a [`DecodeError`] (with its bytes), never dropped in silence.
    pub async fn subscribe_typed<T: DeserializeOwned>(&self, filter: &str) -> Result<TypedSubscription<T>, Error> {
        Ok(TypedSubscription { inner: self.subscribe(filter).await?, _type: PhantomData })
    }
}

/// A message of a [`TypedSubscription`]: the decoded value and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypedMessage<T> {
    /// The topic it was published on.
    pub topic: String,
    /// The decoded payload.
    pub value: T,
    /// The publishing node.
    pub from: NodeId,
    /// The publisher's name, if its beacon has been heard.
    pub from_name: Option<String>,
    /// Sequence number in the publisher's reliable stream (`None` for best effort).
    pub seq: Option<u64>,
}

/// Messages decoded as `T`, from [`Node::subscribe_typed`]. Also a `futures_core::Stream` of
/// the same items as [`recv`](Self::recv).
#[derive(Debug)]
pub struct TypedSubscription<T> {
    inner: Subscription,
    _type: PhantomData<fn() -> T>,
}

impl<T: DeserializeOwned> TypedSubscription<T> {
    /// The next message, decoded, or the reason it does not decode; `None` once the node has
    /// shut down.
    pub async fn recv(&mut self) -> Option<Result<TypedMessage<T>, DecodeError>> {
        self.inner.recv().await.map(typed)
    }

    /// The untyped subscription underneath (its gap count, for one).
    pub fn untyped(&self) -> &Subscription {
        &self.inner
    }
}

fn typed<T: DeserializeOwned>(m: Message) -> Result<TypedMessage<T>, DecodeError> {
    let Message { topic, payload, from, from_name, seq } = m;
    let value = decode(&payload, || std::format!("the message on {topic} from {from}"))?;
    Ok(TypedMessage { topic, value, from, from_name, seq })
}

impl<T: DeserializeOwned> futures_core::Stream for TypedSubscription<T> {
    type Item = Result<TypedMessage<T>, DecodeError>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.inner).poll_next(cx).map(|m| m.map(typed))
    }
}
