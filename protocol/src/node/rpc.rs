//! Remote procedure calls over the unicast reliable streams (PROTOCOL.md §7): requests,
//! responses, deadlines, retries against a restarted callee, and at-most-once execution.

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;
use core::time::Duration;

use super::{Event, Lifecycle, Node, PeerStatus, To};
use crate::response_cache::Lookup;
use crate::stream::OutStream;
use crate::time::Instant;
use crate::wire::{status, stream, Inner, NodeId, MAX_METHOD_LEN};

/// Identifies one call, to match its [`Event::CallDone`]. Unique across this node's restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CallId(pub u64);

/// Why a call has no reply. Callers match on these.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CallError {
    /// The callee is up but no response came before the deadline.
    Timeout,
    /// At the deadline the callee is not up: it left, went silent, or was never seen.
    Unreachable,
    /// The callee serves no such method.
    NoSuchMethod,
    /// The callee refused the caller (identity mode permissions).
    Denied,
    /// The handler failed; these are its error bytes.
    Remote(Vec<u8>),
    /// The callee ran the call but no longer holds its response (a late retransmission).
    ResponseLost,
    /// The request is larger than `max_message`.
    TooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The method name is empty or longer than 64 bytes.
    InvalidMethod,
    /// `max_pending_calls` calls are already in flight.
    TooManyCalls,
    /// The callee restarted after it had received the request, before it answered: the call
    /// may or may not have run. It is not sent again, so that it runs at most once; the caller
    /// decides whether to call again.
    Interrupted,
    /// The node is closing.
    Closed,
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallError::Timeout => f.write_str("timed out: the node is up but did not answer in time"),
            CallError::Unreachable => f.write_str("unreachable: the node is not up on the mesh"),
            CallError::NoSuchMethod => f.write_str("the node serves no such method"),
            CallError::Denied => f.write_str("the node refused the call (permission denied)"),
            CallError::Remote(b) => match core::str::from_utf8(b) {
                Ok(t) => write!(f, "the handler failed: {t}"),
                Err(_) => write!(f, "the handler failed with {} bytes of error data", b.len()),
            },
            CallError::ResponseLost => f.write_str("the call ran but its response was lost"),
            CallError::TooLarge { size, max } => write!(f, "request of {size} bytes exceeds the {max}-byte limit"),
            CallError::InvalidMethod => f.write_str("method names are 1 to 64 bytes"),
            CallError::TooManyCalls => f.write_str("too many calls in flight (max_pending_calls)"),
            CallError::Interrupted => f.write_str(
                "the node restarted after it received the call and before it answered: the call may or may not have run",
            ),
            CallError::Closed => f.write_str("node is closed"),
        }
    }
}

impl core::error::Error for CallError {}

pub(crate) struct PendingCall {
    peer: NodeId,
    method: String,
    payload: Vec<u8>,
    pub(super) deadline: Instant,
    /// Whether the request was handed to the callee's current incarnation's stream.
    sent: bool,
}

fn valid_method(m: &str) -> bool {
    !m.is_empty() && m.len() <= MAX_METHOD_LEN
}

impl Node {
    /// Answers calls of `method` from now on: they arrive as [`Event::Request`]. Calls of
    /// methods not served are answered `NoSuchMethod` by the node itself.
    pub fn serve(&mut self, method: &str) -> Result<(), CallError> {
        if !valid_method(method) {
            return Err(CallError::InvalidMethod);
        }
        if !self.served.iter().any(|m| m == method) {
            self.served.push(method.to_string());
        }
        Ok(())
    }

    /// Stops serving `method`.
    pub fn unserve(&mut self, method: &str) {
        self.served.retain(|m| m != method);
    }

    /// Calls `method` on `peer` with `payload`. The request is retransmitted as needed, sent
    /// again to a new incarnation if the peer restarts, and sent as soon as the peer is up if it
    /// is not yet; the callee runs it at most once. [`Event::CallDone`] reports the outcome,
    /// at the latest `timeout` from now.
    pub fn call(
        &mut self,
        now: Instant,
        peer: NodeId,
        method: &str,
        payload: &[u8],
        timeout: Duration,
    ) -> Result<CallId, CallError> {
        if self.lifecycle != Lifecycle::Running {
            return Err(CallError::Closed);
        }
        if !valid_method(method) {
            return Err(CallError::InvalidMethod);
        }
        if payload.len() > self.config.max_message {
            return Err(CallError::TooLarge { size: payload.len(), max: self.config.max_message });
        }
        if self.calls.len() >= self.config.max_pending_calls {
            return Err(CallError::TooManyCalls);
        }
        let id = CallId((u64::from(self.epoch()) << 32) | u64::from(self.next_call));
        self.next_call = self.next_call.wrapping_add(1);
        let call = PendingCall {
            peer,
            method: method.to_string(),
            payload: payload.to_vec(),
            deadline: now + timeout,
            sent: false,
        };
        self.calls.insert(id, call);
        self.send_call(now, id);
        self.service(now, Some(peer));
        self.update_timers();
        Ok(id)
    }

    /// Answers a request received as [`Event::Request`]: `Ok(reply)` or `Err(error bytes)`.
    /// The response is retransmitted until the caller has it and kept for retransmitted requests.
    pub fn respond(&mut self, now: Instant, to: NodeId, call_id: u64, result: Result<&[u8], &[u8]>) {
        let (status, payload) = match result {
            Ok(b) => (status::OK, b),
            Err(b) => (status::REMOTE_ERROR, b),
        };
        let bytes = Inner::Response { call_id, status, payload }.encode();
        self.cache.finish(now, to, call_id, &bytes);
        self.send_unicast(now, to, call_id, &bytes, None);
        self.service(now, Some(to));
        self.update_timers();
    }

    fn send_call(&mut self, now: Instant, id: CallId) {
        let Some(call) = self.calls.get(&id) else { return };
        let Some(to_epoch) = self.peers.get(&call.peer).filter(|p| p.status == PeerStatus::Up).map(|p| p.epoch) else {
            return; // sent when the peer comes up
        };
        let (peer, ttl) = (call.peer, call.deadline.saturating_duration_since(now));
        let bytes = Inner::Request { call_id: id.0, to_epoch, method: &call.method, payload: &call.payload }.encode();
        self.send_unicast(now, peer, id.0, &bytes, Some(ttl));
        if let Some(call) = self.calls.get_mut(&id) {
            call.sent = true;
        }
    }

    /// Sends one message on this node's unicast stream to `to`.
    fn send_unicast(&mut self, now: Instant, to: NodeId, tag: u64, bytes: &[u8], ttl: Option<Duration>) {
        let epoch = self.epoch();
        let limits = self.config.streams;
        let chunk = self.config.max_datagram - super::reliable::DATA_OVERHEAD;
        let Some(p) = self.peers.get_mut(&to) else { return };
        let out = p.out_ucast.get_or_insert_with(|| OutStream::new(stream::UNICAST, epoch));
        let mut evicted = Vec::new();
        let Ok(records) = out.send(now, tag, bytes, chunk, ttl, alloc::vec![to], &limits, &mut evicted) else {
            return;
        };
        for r in records {
            self.enqueue_bytes(To::Peer(to), r);
        }
    }

    /// `peer` restarted: this node's stream to it starts afresh. A call whose request the old
    /// incarnation acknowledged may have run there, so it ends as `Interrupted` rather than run
    /// twice; the others (never sent, or not wholly received) go to the new incarnation.
    pub(super) fn callee_restarted(&mut self, now: Instant, peer: NodeId) {
        let unreceived: Vec<u64> = match self.peers.get_mut(&peer).and_then(|p| p.out_ucast.as_mut()) {
            Some(out) => out.reset().into_iter().map(|c| c.id).collect(),
            None => Vec::new(),
        };
        let interrupted: Vec<CallId> = self
            .calls
            .iter()
            .filter(|(id, c)| c.peer == peer && c.sent && !unreceived.contains(&id.0))
            .map(|(id, _)| *id)
            .collect();
        for id in interrupted {
            self.calls.remove(&id);
            self.push_event(Event::CallDone { id, result: Err(CallError::Interrupted) });
        }
        for c in self.calls.values_mut().filter(|c| c.peer == peer) {
            c.sent = false;
        }
        self.resend_calls(now, peer);
    }

    /// Sends (again) every unanswered call to `peer`: it came up or restarted.
    pub(super) fn resend_calls(&mut self, now: Instant, peer: NodeId) {
        let ids: Vec<CallId> = self.calls.iter().filter(|(_, c)| c.peer == peer).map(|(id, _)| *id).collect();
        for id in ids {
            self.send_call(now, id);
        }
    }

    pub(super) fn handle_request(
        &mut self,
        now: Instant,
        from: NodeId,
        call_id: u64,
        to_epoch: u32,
        method: &str,
        payload: &[u8],
    ) {
        if to_epoch != self.epoch() {
            // Addressed to an earlier incarnation of this node, which may have run it: never run
            // it again (PROTOCOL.md §7). The caller learns of the restart from our beacon.
            self.stats.drop_stream += 1;
            return;
        }
        if !self.may_call(from, method) {
            self.stats.denied += 1;
            let bytes = Inner::Response { call_id, status: status::DENIED, payload: &[] }.encode();
            self.send_unicast(now, from, call_id, &bytes, None);
            return;
        }
        if !self.served.iter().any(|m| m == method) {
            let bytes = Inner::Response { call_id, status: status::NO_SUCH_METHOD, payload: &[] }.encode();
            self.send_unicast(now, from, call_id, &bytes, None);
            return;
        }
        match self.cache.begin(now, from, call_id) {
            Lookup::New => {
                self.push_event(Event::Request { from, call_id, method: method.to_string(), payload: payload.to_vec() })
            }
            Lookup::InProgress => {}
            Lookup::Done(bytes) => {
                let bytes = bytes.to_vec();
                self.send_unicast(now, from, call_id, &bytes, None);
            }
            Lookup::DoneUncached => {
                let bytes = Inner::Response { call_id, status: status::RESPONSE_LOST, payload: &[] }.encode();
                self.send_unicast(now, from, call_id, &bytes, None);
            }
        }
    }

    pub(super) fn handle_response(&mut self, from: NodeId, call_id: u64, code: u8, payload: &[u8]) {
        let id = CallId(call_id);
        if self.calls.get(&id).is_none_or(|c| c.peer != from) {
            self.stats.drop_stream += 1; // a response to a call never made (or long finished)
            return;
        }
        self.calls.remove(&id);
        let result = match code {
            status::OK => Ok(payload.to_vec()),
            status::REMOTE_ERROR => Err(CallError::Remote(payload.to_vec())),
            status::NO_SUCH_METHOD => Err(CallError::NoSuchMethod),
            status::DENIED => Err(CallError::Denied),
            _ => Err(CallError::ResponseLost),
        };
        self.push_event(Event::CallDone { id, result });
    }

    pub(super) fn expire_calls(&mut self, now: Instant) {
        let expired: Vec<CallId> = self.calls.iter().filter(|(_, c)| c.deadline <= now).map(|(id, _)| *id).collect();
        for id in expired {
            let call = self.calls.remove(&id).expect("listed above");
            let up_now = self.peers.get(&call.peer).is_some_and(|p| p.status == PeerStatus::Up);
            let error = if up_now { CallError::Timeout } else { CallError::Unreachable };
            self.push_event(Event::CallDone { id, result: Err(error) });
        }
    }

    /// Calls in flight.
    pub fn pending_calls(&self) -> usize {
        self.calls.len()
    }
}
