//! The driver loop: receive or time out, hand to the core, send what it emits. No protocol
//! logic lives here.

use std::collections::HashMap;
use std::io;
use std::vec::Vec;

use tokio::sync::{broadcast, mpsc, oneshot};

use super::batch::{self, Offload, RxBatch, TxBatch};
use super::socket::Sockets;
use super::{Command, Error, Handler, Message, PeerEvent, Received, Request, RuntimeStats, StateFile};
use crate::{CallError, CallId, Destination, Event, PublishId, SubscriptionId};

/// Datagrams handed to the core after a wake-up before outputs are flushed: batches work under
/// load while keeping latency low when idle. What a receive call took beyond it waits for the next
/// turn.
const RX_BATCH: usize = 64;
/// Receive calls after one wake-up, at most (each takes several datagrams when the kernel can).
const RX_CALLS: usize = 8;
/// Commands taken without waiting after a wake-up before outputs are flushed.
const CMD_BATCH: usize = 256;
/// The method every host node serves with its counters (`starling nodes --stats` calls it).
pub const STATS_METHOD: &str = "$stats";
/// The method every host node serves with what it offers and measures: `method NAME` lines for
/// the methods it serves, then `peer ID rtt_us N` lines for peers with a measured round trip.
pub const INFO_METHOD: &str = "$info";
/// How long a closing node keeps running so its last reliable messages and responses are
/// acknowledged.
const LINGER: std::time::Duration = std::time::Duration::from_secs(1);

pub(crate) struct Driver {
    node: crate::Node,
    sockets: Sockets,
    state_file: Option<StateFile>,
    origin: std::time::Instant,
    commands: mpsc::Receiver<Command>,
    peer_events: broadcast::Sender<PeerEvent>,
    subscribers: HashMap<SubscriptionId, mpsc::Sender<Received>>,
    publishes: HashMap<PublishId, oneshot::Sender<Result<(), Error>>>,
    calls: HashMap<CallId, oneshot::Sender<Result<std::vec::Vec<u8>, CallError>>>,
    handlers: HashMap<std::string::String, Handler>,
    /// For handler tasks to send their responses back, without keeping the node alive.
    commands_back: mpsc::WeakSender<Command>,
    /// Datagrams of one drain of the core, sent together.
    tx: TxBatch,
    /// What the unicast socket, which sends everything, may batch.
    tx_offload: Offload,
    rx: RxBatch,
    rx_offload_multicast: Offload,
    rx_offload_unicast: Offload,
    subscriber_lagged: u64,
    send_errors: u64,
    /// Another network's datagrams, as last logged, and when: the likeliest misconfiguration (a
    /// wrong key, the other mode) is logged, not only counted, at most every `FOREIGN_LOG_EVERY`.
    foreign_logged: (u64, Option<std::time::Instant>),
    /// Received datagrams dropped on purpose (tests only; none otherwise).
    pub(crate) loss: Loss,
}

/// How often the log may repeat that another network's datagrams arrive.
const FOREIGN_LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// Drops a share of received datagrams (loss injection for tests).
pub(crate) struct Loss {
    /// Share of received datagrams dropped, in percent (0 in production).
    pub percent: u8,
    rng: u64,
    /// Bytes of the datagrams dropped so far.
    bytes: u64,
}

impl Loss {
    fn lose(&mut self) -> bool {
        if self.percent == 0 {
            return false;
        }
        // xorshift64: deterministic enough, and no dependency for a test aid.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng % 100 < u64::from(self.percent)
    }
}

impl Driver {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        node: crate::Node,
        sockets: Sockets,
        offload: bool,
        state_file: Option<StateFile>,
        origin: std::time::Instant,
        commands: mpsc::Receiver<Command>,
        commands_back: mpsc::WeakSender<Command>,
        peer_events: broadcast::Sender<PeerEvent>,
    ) -> Self {
        let (multicast, unicast) = if offload {
            (Offload::probe(&sockets.multicast), Offload::probe(&sockets.unicast))
        } else {
            (Offload::PLAIN, Offload::PLAIN)
        };
        tracing::debug!(?multicast, ?unicast, "socket offload");
        let rx = RxBatch::new(Offload {
            gro: multicast.gro || unicast.gro,
            mmsg: multicast.mmsg || unicast.mmsg,
            gso: false,
        });
        Driver {
            node,
            sockets,
            state_file,
            origin,
            commands,
            peer_events,
            subscribers: HashMap::new(),
            publishes: HashMap::new(),
            calls: HashMap::new(),
            handlers: HashMap::new(),
            commands_back,
            tx: TxBatch::new(),
            tx_offload: unicast,
            rx,
            rx_offload_multicast: multicast,
            rx_offload_unicast: unicast,
            subscriber_lagged: 0,
            send_errors: 0,
            foreign_logged: (0, None),
            loss: Loss { percent: 0, rng: 0x9e37_79b9_7f4a_7c15, bytes: 0 },
        }
    }

    fn now(&self) -> crate::Instant {
        crate::Instant::from_micros(self.origin.elapsed().as_micros() as u64)
    }

    fn to_std(&self, t: crate::Instant) -> tokio::time::Instant {
        tokio::time::Instant::from_std(self.origin) + std::time::Duration::from_micros(t.as_micros())
    }

    pub async fn run(mut self) {
        let mut closing: Option<oneshot::Sender<()>> = None;
        let mut linger_until = None;
        loop {
            self.flush().await;
            if let Some(reply) = closing.take() {
                let patience = *linger_until.get_or_insert_with(|| std::time::Instant::now() + LINGER);
                if self.node.may_close(self.now()) || std::time::Instant::now() >= patience {
                    // Release the state file before answering, so the caller may reopen it at once.
                    drop(self.state_file.take());
                    let _ = reply.send(());
                    return;
                }
                closing = Some(reply);
            }
            // While lingering, look again every 20 ms: the core's wish to close changes with time alone.
            let linger = linger_until.map(|_| tokio::time::Instant::now() + std::time::Duration::from_millis(20));
            let deadline = self.node.poll_timeout().map(|t| self.to_std(t)).into_iter().chain(linger).min();
            let pending = !self.rx.is_drained();
            tokio::select! {
                // Datagrams a receive call took beyond one turn's share: the next share, after
                // letting the other tasks (subscribers above all) run.
                _ = tokio::task::yield_now(), if pending => {
                    self.drain_received(RX_BATCH);
                }
                r = self.sockets.multicast.readable() => self.received(r, true),
                r = self.sockets.unicast.readable() => self.received(r, false),
                _ = sleep_until(deadline) => {
                    let now = self.now();
                    self.node.handle_timeout(now);
                }
                cmd = self.commands.recv() => match cmd {
                    Some(Command::Close(reply)) => {
                        self.node.close();
                        closing = Some(reply);
                    }
                    Some(cmd) => {
                        self.command_or_flush(cmd).await;
                        // Take what else is waiting before sending: small publications queued
                        // together leave in one datagram, sealed once.
                        for _ in 0..CMD_BATCH {
                            match self.commands.try_recv() {
                                Ok(Command::Close(reply)) => {
                                    self.node.close();
                                    closing = Some(reply);
                                    break;
                                }
                                Ok(cmd) => self.command_or_flush(cmd).await,
                                Err(_) => break,
                            }
                        }
                    }
                    None => {
                        // Every handle is gone: leave the mesh politely.
                        self.node.close();
                        self.flush().await;
                        return;
                    }
                },
            }
        }
    }

    /// Reads what the socket holds, up to a batch, and hands each datagram to the core, one by
    /// one (a GRO-coalesced run too).
    fn received(&mut self, readable: io::Result<()>, multicast: bool) {
        if readable.is_err() {
            return;
        }
        let mut budget = RX_BATCH - self.drain_received(RX_BATCH);
        for _ in 0..RX_CALLS {
            if budget == 0 || !self.rx.is_drained() {
                return;
            }
            let (socket, offload) = if multicast {
                (&self.sockets.multicast, &mut self.rx_offload_multicast)
            } else {
                (&self.sockets.unicast, &mut self.rx_offload_unicast)
            };
            match self.rx.recv(socket, offload) {
                Ok(_) => budget -= self.drain_received(budget),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                // ICMP errors surface here on Linux; they say nothing about the mesh.
                Err(_) => {}
            }
        }
    }

    /// Hands up to `budget` received datagrams to the core; returns how many.
    fn drain_received(&mut self, budget: usize) -> usize {
        let now = self.now();
        let (node, loss) = (&mut self.node, &mut self.loss);
        let n = self.rx.drain(budget, |from, datagram| {
            if loss.lose() {
                loss.bytes += datagram.len() as u64;
            } else {
                node.handle_datagram(now, from, datagram);
            }
        });
        self.log_foreign();
        n
    }

    /// Logs (info) that datagrams arrived which belong to another network: a tag of another key,
    /// or the other security mode. Once at the first, then at most every `FOREIGN_LOG_EVERY`.
    fn log_foreign(&mut self) {
        let s = self.node.stats();
        let n = s.drop_foreign_network + s.drop_version;
        let (logged, at) = self.foreign_logged;
        if n == logged || at.is_some_and(|t| t.elapsed() < FOREIGN_LOG_EVERY) {
            return;
        }
        self.foreign_logged = (n, Some(std::time::Instant::now()));
        let port = self.sockets.multicast.local_addr().map(|a| a.port()).unwrap_or(0);
        tracing::info!(
            datagrams = n,
            port,
            "heard {} datagram(s) from another network on this group and port: other nodes use another key, \
             or the other mode (network key or identity)",
            n
        );
    }

    fn stats(&self) -> RuntimeStats {
        RuntimeStats {
            core: self.node.stats().clone(),
            subscriber_lagged: self.subscriber_lagged,
            send_errors: self.send_errors,
            injected_loss_bytes: self.loss.bytes,
        }
    }

    /// Acts on one command; if the core's send queue is full, sends what it holds and tries
    /// once more.
    async fn command_or_flush(&mut self, cmd: Command) {
        if let Some(retry) = self.command(cmd) {
            self.flush().await;
            if let Some(Command::Publish { reply, .. }) = self.command(retry) {
                let _ = reply.send(Err(Error::Publish(crate::PublishError::QueueFull)));
            }
        }
    }

    /// Acts on one command. A best-effort publication that finds the core's send queue full
    /// comes back, to be tried again once the queue has been sent.
    fn command(&mut self, cmd: Command) -> Option<Command> {
        match cmd {
            Command::Publish { topic, payload, reliable: false, ttl, reply } => {
                match self.node.publish(&topic, &payload) {
                    Err(crate::PublishError::QueueFull) => {
                        return Some(Command::Publish { topic, payload, reliable: false, ttl, reply })
                    }
                    r => {
                        let _ = reply.send(r.map_err(Error::Publish));
                    }
                }
            }
            Command::Publish { topic, payload, reliable: true, ttl, reply } => {
                match self.node.publish_reliable(self.now(), &topic, &payload, ttl) {
                    Ok(id) => {
                        self.publishes.insert(id, reply);
                    }
                    Err(e) => {
                        let _ = reply.send(Err(Error::Publish(e)));
                    }
                }
            }
            Command::Serve { method, handler, reply } => {
                let r = self.node.serve(&method);
                if r.is_ok() {
                    self.handlers.insert(method, handler);
                }
                let _ = reply.send(r);
            }
            Command::Call { peer, method, payload, timeout, reply } => {
                match self.node.call(self.now(), peer, &method, &payload, timeout) {
                    Ok(id) => {
                        self.calls.insert(id, reply);
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
            Command::Respond { to, call_id, reply } => {
                let now = self.now();
                match &reply {
                    Ok(bytes) => self.node.respond(now, to, call_id, Ok(bytes)),
                    Err(bytes) => self.node.respond(now, to, call_id, Err(bytes)),
                }
            }
            Command::Subscribe { filter, tx, reply } => {
                let r = self.node.subscribe(&filter);
                if let Ok(id) = r {
                    self.subscribers.insert(id, tx);
                }
                let _ = reply.send(r);
            }
            Command::Unsubscribe(id) => {
                self.node.unsubscribe(id);
                self.subscribers.remove(&id);
            }
            Command::Peers(reply) => {
                let _ = reply.send(self.node.peers().collect());
            }
            Command::PeerDetails(reply) => {
                let details = self.node.peers().map(|info| super::PeerDetails {
                    filters: self
                        .node
                        .peer_filters(info.id)
                        .unwrap_or_default()
                        .iter()
                        .map(|f| std::string::String::from(f.as_str()))
                        .collect(),
                    rtt: self.node.peer_rtt(info.id),
                    info,
                });
                let _ = reply.send(details.collect());
            }
            Command::Stats(reply) => {
                let _ = reply.send(self.stats());
            }
            Command::SetAllowlist(list, reply) => {
                let _ = reply.send(self.node.set_allowlist(self.now(), list));
            }
            Command::Close(_) => unreachable!("handled in run"),
        }
        None
    }

    /// Moves every output of the core to where it belongs: storage, socket, application.
    async fn flush(&mut self) {
        self.send_leased().await;
        while let Some(event) = self.node.poll_event() {
            self.event(event);
        }
        // Handlers that answered at once queued their responses: send them now, not at the next
        // wake-up.
        self.send_leased().await;
    }

    /// Sends everything queued, storing a new lease when sending asks for one.
    async fn send_leased(&mut self) {
        // Sending may ask for a new lease; store it and send again, at most twice per flush so a
        // failing disk cannot spin the loop.
        for _ in 0..2 {
            if let Some(state) = self.node.poll_lease() {
                self.store_lease(&state);
            }
            self.send_all().await;
            if !self.node.has_lease_request() {
                break;
            }
        }
    }

    fn store_lease(&mut self, state: &crate::PersistedState) {
        let Some(file) = &self.state_file else {
            // Ephemeral nodes have nothing to store; their lease is the whole space.
            return self.node.handle_lease_stored(state.lease_end);
        };
        match file.store(state) {
            Ok(()) => self.node.handle_lease_stored(state.lease_end),
            Err(e) => {
                tracing::error!(path = %file.path().display(), "cannot store the packet-number lease: {e}");
                self.node.handle_lease_failed();
            }
        }
    }

    /// Takes every datagram the core has ready and sends them at once: nothing waits for a batch
    /// to fill, a lone datagram leaves in one call as before, a drain of many in a few.
    async fn send_all(&mut self) {
        let now = self.now();
        loop {
            let Some(room) = self.tx.room() else {
                self.send_batch().await;
                // A full batch: let the other tasks of the runtime (local subscribers, the
                // application) run before the next one, so a burst of large messages, cheap to send
                // now, cannot starve the receivers sharing its CPU.
                tokio::task::yield_now().await;
                continue;
            };
            let t = match self.node.poll_transmit(now, room) {
                Ok(Some(t)) => t,
                Ok(None) => break,
                Err(e) => unreachable!("driver buffer is max-sized: {e}"),
            };
            let dest = match t.destination {
                Destination::Multicast => self.sockets.group,
                Destination::Unicast(addr) => addr,
            };
            self.tx.push(dest, t.len);
        }
        self.send_batch().await;
    }

    async fn send_batch(&mut self) {
        if self.tx.len() == 0 {
            return;
        }
        let report = batch::send(&self.sockets.unicast, &mut self.tx_offload, &mut self.tx).await;
        self.send_errors += report.failed;
    }

    fn event(&mut self, event: Event) {
        let peer = match event {
            Event::Message(m) => return self.route(m),
            Event::PeerUp(p) => PeerEvent::Up(p),
            Event::PeerRestarted(p) => PeerEvent::Restarted(p),
            Event::PeerDown { id, reason } => PeerEvent::Down { id, reason },
            Event::Gap { from, first, end } => {
                let mut served: Vec<&mpsc::Sender<Received>> = Vec::new();
                for tx in self.subscribers.values() {
                    if served.iter().any(|s| s.same_channel(tx)) {
                        continue;
                    }
                    served.push(tx);
                    if tx.try_send(Received::Gap { from, first, end }).is_err() {
                        self.subscriber_lagged += 1;
                    }
                }
                return;
            }
            Event::PublishDone { id, result } => {
                if let Some(reply) = self.publishes.remove(&id) {
                    let _ = reply.send(result.map_err(|f| match f.reason {
                        crate::stream::Failure::NoSubscribers => Error::NoSubscribers,
                        _ => Error::NotDelivered(f),
                    }));
                }
                return;
            }
            Event::CallDone { id, result } => {
                if let Some(reply) = self.calls.remove(&id) {
                    let _ = reply.send(result);
                }
                return;
            }
            Event::Request { from, call_id, method, .. } if method == STATS_METHOD => {
                // Built in: every node tells its counters, as `name value` lines.
                let mut text = std::string::String::new();
                for (k, v) in self.stats().fields() {
                    text.push_str(&std::format!("{k} {v}\n"));
                }
                let now = self.now();
                self.node.respond(now, from, call_id, Ok(text.as_bytes()));
                return;
            }
            Event::Request { from, call_id, method, .. } if method == INFO_METHOD => {
                let mut text = std::string::String::new();
                for m in self.node.served_methods() {
                    text.push_str(&std::format!("method {m}\n"));
                }
                for p in self.node.peers() {
                    if let Some(rtt) = self.node.peer_rtt(p.id) {
                        text.push_str(&std::format!("peer {} rtt_us {}\n", p.id, rtt.as_micros()));
                    }
                }
                let now = self.now();
                self.node.respond(now, from, call_id, Ok(text.as_bytes()));
                return;
            }
            Event::Request { from, call_id, method, payload } => {
                let (Some(handler), Some(back)) = (self.handlers.get(&method), self.commands_back.upgrade()) else {
                    return;
                };
                let mut run = handler(Request { from, method, payload });
                // A handler that answers at once (most do) is answered here, without a task and
                // a trip through the command channel; one that waits goes on in its own task.
                let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
                if let std::task::Poll::Ready(reply) = run.as_mut().poll(&mut cx) {
                    let now = self.now();
                    match &reply {
                        Ok(bytes) => self.node.respond(now, from, call_id, Ok(bytes)),
                        Err(bytes) => self.node.respond(now, from, call_id, Err(bytes)),
                    }
                    return;
                }
                tokio::spawn(async move {
                    let reply = run.await;
                    let _ = back.send(Command::Respond { to: from, call_id, reply }).await;
                });
                return;
            }
            Event::NodeIdConflict { addr } => {
                tracing::error!(%addr, "another device uses this node's id; restart it with a fresh state file");
                PeerEvent::IdConflict { addr }
            }
        };
        let _ = self.peer_events.send(peer);
    }

    fn route(&mut self, m: crate::Message) {
        let from_name = if m.from == self.node.id() {
            Some(self.node.config().name.clone())
        } else {
            self.node.peer_name(m.from).map(std::string::String::from)
        };
        let msg =
            Received::Message(Message { topic: m.topic, payload: m.payload, from: m.from, from_name, seq: m.seq });
        // One copy per channel: a subscription of several filters gets a message once. The
        // last channel takes the message itself, so the common single subscriber copies nothing.
        let mut targets: Vec<(SubscriptionId, &mpsc::Sender<Received>)> = Vec::with_capacity(m.subscriptions.len());
        for id in &m.subscriptions {
            let Some(tx) = self.subscribers.get(id) else { continue };
            if !targets.iter().any(|(_, s)| s.same_channel(tx)) {
                targets.push((*id, tx));
            }
        }
        let mut closed = Vec::new();
        let mut msg = Some(msg);
        let last = targets.len().saturating_sub(1);
        for (i, (id, tx)) in targets.iter().enumerate() {
            let copy = if i == last {
                msg.take().expect("taken once, by the last")
            } else {
                msg.clone().expect("kept until the last")
            };
            match tx.try_send(copy) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => self.subscriber_lagged += 1,
                Err(mpsc::error::TrySendError::Closed(_)) => closed.push(*id),
            }
        }
        for id in closed {
            self.subscribers.remove(&id);
            self.node.unsubscribe(id);
        }
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
