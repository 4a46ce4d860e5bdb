//! The MQTT bridge: mesh messages out to `<prefix>/<topic>`, MQTT messages under the prefix in
//! to the mesh, availability of every mesh node as retained `online`/`offline`, and the
//! gateway's own status through its MQTT will.
//!
//! Three tasks share no locks on the hot path: the MQTT event loop (only polls, never
//! publishes: publishing from the polling task is rumqttc's known deadlock), mesh-to-MQTT, and
//! MQTT-to-mesh. Loops are cut by origin: a message the gateway put on the mesh comes back to it
//! as its own publication and is skipped; a message a gateway put on MQTT carries the
//! `starling-origin` user property and is never taken back into the mesh.
//!
//! Several gateways may serve one mesh and one broker. They elect the one that bridges over the
//! mesh, where frames are sealed, never over MQTT, where any client could claim to be a gateway
//! ([`election`]): each announces itself on the mesh topic [`ALIVE_TOPIC`] every second while
//! its broker connection is up, and the lowest node id among those heard in the last
//! [`LEADER_TIMEOUT`] with the same broker and prefix bridges; the others stand by. When the
//! active one dies, the next takes over within that timeout (at once if it left the mesh), and
//! at steady state every message crosses once in each direction. `<prefix>/$gateway/<id>/alive`
//! (`active` or `standby`, every second) is for people only: the bridge does not read it.
//!
//! RPC from MQTT ([`rpc`]) is off unless [`BridgeConfig::rpc`] allows calls, as `NODE/METHOD`
//! rules ([`RpcPolicy`]), because each call is made with the gateway's own rights on the mesh.
//! A request published to `<prefix>/$rpc/<node>/<method>` (node by id or name) with an MQTT 5
//! response topic gets the reply there, with the same correlation data; a failed or refused
//! call answers with an empty payload and the error in the `starling-error` user property. The
//! response topic must lie under `<prefix>/$reply/`: a request naming any other one is refused
//! without an answer and without a call. MQTT 3.1.1 clients add a transaction id level,
//! `<prefix>/$rpc/<node>/<method>/<txid>`, and get the reply on
//! `<prefix>/$rpc/<node>/<method>/<txid>/reply` or the error text on `.../<txid>/error`.
//! Refusals count in the `rpc_refused` counter, calls made in `rpc_calls`.

pub mod election;
pub mod file;
pub mod rpc;

pub use election::{ALIVE_TOPIC, LEADER_TIMEOUT};
pub use file::{Filters, GatewayFile};
pub use rpc::{reply_topic_allowed, RpcPolicy, REPLY_LEVEL};

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use rumqttc::v5::mqttbytes::v5::{Filter, LastWill, Packet, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use starling::runtime::{Node, PeerEvent, Received};
use starling::{NodeId, Topic};
use tokio::sync::mpsc;

/// User property naming the mesh node a bridged message came from.
pub const ORIGIN: &str = "starling-origin";
/// User property carrying the reliable sequence number of a bridged message.
pub const SEQ: &str = "starling-seq";
/// User property carrying the error of a failed call made from MQTT.
pub const ERROR: &str = "starling-error";
/// Where and what to bridge.
#[derive(Debug, Clone)]
pub struct BridgeConfig {
    /// Broker host.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// MQTT topic prefix for the mesh (default `starling`).
    pub prefix: String,
    /// Mesh filters bridged out to MQTT.
    pub mesh_filters: Vec<String>,
    /// MQTT filters, relative to the prefix, bridged into the mesh.
    pub mqtt_filters: Vec<String>,
    /// Keep the last value of each bridged topic retained on the broker.
    pub retain: bool,
    /// Per-mapping settings: the first whose filter matches a topic decides its QoS and retain.
    pub mappings: Vec<Mapping>,
    /// User name and password for the broker.
    pub credentials: Option<(String, String)>,
    /// TLS (`mqtts://`): the CA certificate to trust and an optional client certificate and key,
    /// all PEM.
    pub tls: Option<TlsFiles>,
    /// Which calls MQTT clients may make through `<prefix>/$rpc/` (default: none).
    pub rpc: RpcPolicy,
    /// Printed on standard error at the first successful connection to the broker.
    pub banner: Option<String>,
    /// Printed once, after the first report that the broker cannot be reached (what to try).
    pub unreachable_hint: Option<String>,
}

/// One topic mapping (a `[[mapping]]` table of the config file): filters of one direction and
/// how the topics they match cross.
#[derive(Debug, Clone, Default)]
pub struct Mapping {
    /// Mesh filters bridged out to MQTT (empty for an inbound mapping).
    pub out: Vec<String>,
    /// MQTT filters (relative to the prefix) bridged into the mesh (empty for an outbound one).
    pub inbound: Vec<String>,
    /// MQTT QoS (0 or 1) for this mapping; by default reliable mesh messages are QoS 1, others 0.
    pub qos: Option<u8>,
    /// Retain the last value of these topics on the broker (default: the global `retain`).
    pub retain: Option<bool>,
}

impl Mapping {
    fn check(&self) -> Result<()> {
        if self.out.is_empty() == self.inbound.is_empty() {
            bail!("each mapping has filters for exactly one direction, `out` or `in`");
        }
        if self.qos.is_some_and(|q| q > 1) {
            bail!("mapping `qos` must be 0 or 1");
        }
        Ok(())
    }
}

fn qos_of(level: u8) -> QoS {
    if level == 0 {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    }
}

/// Certificate files for a TLS connection to the broker.
#[derive(Debug, Clone, Default)]
pub struct TlsFiles {
    /// CA certificate(s) the broker's certificate must chain to.
    pub ca: std::path::PathBuf,
    /// Client certificate and key, for brokers that require them.
    pub client: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

impl BridgeConfig {
    /// Bridges every message both ways under `starling/` on `host:port`; calls from MQTT are off.
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        BridgeConfig {
            host: host.into(),
            port,
            prefix: "starling".into(),
            mesh_filters: vec!["#".into()],
            mqtt_filters: vec!["#".into()],
            retain: false,
            mappings: Vec::new(),
            credentials: None,
            tls: None,
            rpc: RpcPolicy::off(),
            banner: None,
            unreachable_hint: None,
        }
    }

    /// Checks prefix and filters; errors name the field.
    pub fn validate(&self) -> Result<()> {
        check_prefix(&self.prefix)?;
        for f in &self.mesh_filters {
            starling::TopicFilter::new(f).with_context(|| format!("mesh filter '{f}'"))?;
        }
        for f in &self.mqtt_filters {
            starling::TopicFilter::new(f).with_context(|| format!("MQTT filter '{f}'"))?;
        }
        for m in &self.mappings {
            m.check()?;
            for f in m.out.iter().chain(&m.inbound) {
                starling::TopicFilter::new(f).with_context(|| format!("mapping filter '{f}'"))?;
            }
        }
        Ok(())
    }
}

/// Checks an MQTT topic prefix: a topic without wildcards or a trailing `/`.
fn check_prefix(prefix: &str) -> Result<()> {
    if prefix.is_empty() || prefix.contains(['+', '#']) || prefix.ends_with('/') {
        bail!("prefix '{prefix}' must be a non-empty topic without wildcards or a trailing '/' (such as `starling`)");
    }
    Ok(())
}

/// A broker address parsed from `mqtt://[user:password@]host[:port]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    /// Host name or address.
    pub host: String,
    /// TCP port (1883 when not given).
    pub port: u16,
    /// User name and password, if given.
    pub credentials: Option<(String, String)>,
    /// `mqtts://`: connect with TLS.
    pub tls: bool,
}

/// Parses `mqtt[s]://[user:password@]host[:port]` (ports default to 1883 and 8883).
pub fn parse_broker(url: &str) -> Result<BrokerUrl> {
    let (tls, rest) = match (url.strip_prefix("mqtt://"), url.strip_prefix("mqtts://")) {
        (Some(rest), _) => (false, rest),
        (_, Some(rest)) => (true, rest),
        _ => {
            bail!("broker '{url}' must look like mqtt://host:port, mqtts://host:port or mqtt://user:password@host:port")
        }
    };
    let (credentials, rest) = match rest.rsplit_once('@') {
        Some((auth, hostport)) => {
            let (user, pass) = auth.split_once(':').unwrap_or((auth, ""));
            (Some((user.to_owned(), pass.to_owned())), hostport)
        }
        None => (None, rest),
    };
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) => (h, p.parse::<u16>().with_context(|| format!("port '{p}' in broker '{url}'"))?),
        None => (rest, if tls { 8883 } else { 1883 }),
    };
    if host.is_empty() {
        bail!("broker '{url}' has no host");
    }
    Ok(BrokerUrl { host: host.to_owned(), port, credentials, tls })
}

/// The MQTT topic of a mesh topic, and back.
fn to_mqtt(prefix: &str, topic: &str) -> String {
    format!("{prefix}/{topic}")
}

fn from_mqtt<'a>(prefix: &str, topic: &'a str) -> Option<&'a str> {
    topic.strip_prefix(prefix)?.strip_prefix('/')
}

fn status_topic(prefix: &str, id: NodeId) -> String {
    format!("{prefix}/$nodes/{id}/status")
}

/// Counters of the bridge, each direction.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct BridgeStats {
    /// Mesh messages published to MQTT.
    pub to_mqtt: u64,
    /// MQTT messages published on the mesh.
    pub to_mesh: u64,
    /// MQTT messages refused: topic not valid on the mesh, too large, or already from the mesh.
    pub refused: u64,
    /// Connections to the broker made (1 + reconnects).
    pub connects: u64,
    /// Calls made on behalf of MQTT clients.
    pub rpc_calls: u64,
    /// Calls from MQTT refused: not allowed by the RPC policy (`--rpc`), or a response topic
    /// outside `<prefix>/$reply/`.
    pub rpc_refused: u64,
}

/// The method a gateway serves with its bridge counters, as `name value` lines.
pub const STATS_METHOD: &str = "$stats.bridge";

impl BridgeStats {
    /// The counters as `name value` lines.
    fn lines(&self, active: bool) -> String {
        format!(
            "active {}\nto_mqtt {}\nto_mesh {}\nrefused {}\nconnects {}\nrpc_calls {}\nrpc_refused {}\n",
            u8::from(active),
            self.to_mqtt,
            self.to_mesh,
            self.refused,
            self.connects,
            self.rpc_calls,
            self.rpc_refused
        )
    }
}

/// How often a broker that cannot be reached is reported again (the first failure at once).
const REPORT_EVERY: Duration = Duration::from_secs(10);
/// The longest wait between two connection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// What the poller says about the broker connection: the first failure at once, then one line
/// every [`REPORT_EVERY`] while it lasts, so a broker that is down is named, not met with
/// silence, and the terminal is not flooded.
struct ConnectionReport {
    broker: String,
    banner: Option<String>,
    hint: Option<String>,
    ever_connected: bool,
    up: bool,
    failures: u64,
    last_said: Option<std::time::Instant>,
}

impl ConnectionReport {
    fn connected(&mut self) {
        if !self.ever_connected {
            if let Some(b) = self.banner.take() {
                eprintln!("{b}");
            }
        } else if !self.up {
            eprintln!("reconnected to the MQTT broker at {} after {} failed attempt(s)", self.broker, self.failures);
        }
        (self.ever_connected, self.up, self.failures, self.last_said) = (true, true, 0, None);
    }

    fn failed(&mut self, e: &rumqttc::v5::ConnectionError) {
        self.failures += 1;
        let now = std::time::Instant::now();
        let broker = &self.broker;
        tracing::debug!("broker connection to {broker}: {e}");
        if self.up {
            self.up = false;
            eprintln!("lost the MQTT broker at {broker}: {e}; reconnecting");
        } else if self.last_said.is_none_or(|t| now.duration_since(t) >= REPORT_EVERY) {
            let (failures, every) = (self.failures, MAX_BACKOFF.as_secs());
            // A broker that answers and says no needs other credentials, not another broker.
            let refused = matches!(e, rumqttc::v5::ConnectionError::ConnectionRefused(_));
            if refused {
                eprintln!(
                    "the MQTT broker at {broker} refused the connection: {e} ({failures} attempt(s)); check the user \
                     and password (mqtt://user:password@host:port) and what the broker allows; retrying every \
                     {every}s at most"
                );
            } else {
                eprintln!(
                    "cannot reach the MQTT broker at {broker}: {e} ({failures} attempt(s)); retrying every {every}s at most"
                );
            }
            if !self.ever_connected && !refused {
                if let Some(h) = self.hint.take() {
                    eprintln!("hint: {h}");
                }
            }
        } else {
            return;
        }
        self.last_said = Some(now);
    }
}

/// How often the gateway publishes its counters (retained JSON).
const STATS_EVERY: Duration = Duration::from_secs(10);

/// Runs the bridge until the node shuts down or the broker setup fails for good.
pub async fn run(node: Node, config: BridgeConfig) -> Result<()> {
    config.validate()?;
    let me = node.id();
    let prefix = config.prefix.clone();
    let mut options = MqttOptions::new(format!("starling-gw-{me}"), config.host.clone(), config.port);
    options.set_keep_alive(Duration::from_secs(10));
    options.set_clean_start(true);
    options.set_max_packet_size(Some(256 * 1024));
    if let Some((user, pass)) = &config.credentials {
        options.set_credentials(user.clone(), pass.clone());
    }
    if let Some(tls) = &config.tls {
        let read = |p: &std::path::Path| std::fs::read(p).with_context(|| format!("cannot read {}", p.display()));
        let ca = read(&tls.ca)?;
        let client = match &tls.client {
            Some((cert, key)) => Some((read(cert)?, read(key)?)),
            None => None,
        };
        options.set_transport(rumqttc::Transport::tls(ca, client, None));
    }
    let own_status = format!("{prefix}/$gateway/{me}/status");
    options.set_last_will(LastWill::new(own_status.clone(), "offline", QoS::AtLeastOnce, true, None));
    // rumqttc turns Nagle on by default: 40 ms per QoS 1 round trip.
    let mut net = options.network_options();
    net.set_tcp_nodelay(true);
    options.set_network_options(net);
    let (client, mut eventloop) = AsyncClient::new(options, 1024);

    let stats = Arc::new(Mutex::new(BridgeStats::default()));
    let election = Arc::new(election::Election::new(me, &config.host, config.port, &prefix));
    // Availability as last known, republished after every (re)connect. Listen for changes
    // before taking the snapshot, so a node that appears in between is not missed.
    let mut events = node.peer_events();
    let availability: Arc<Mutex<BTreeMap<NodeId, &'static str>>> = Arc::default();
    for p in node.peers().await? {
        availability.lock().expect("not poisoned").insert(p.id, "online");
    }

    // MQTT event loop: polls only; hands incoming publications and connects to other tasks.
    let (incoming_tx, mut incoming_rx) = mpsc::channel::<rumqttc::v5::mqttbytes::v5::Publish>(4096);
    let (connected_tx, mut connected_rx) = mpsc::channel::<()>(8);
    let poller = {
        let election = election.clone();
        let mut report = ConnectionReport {
            broker: format!("{}:{}", config.host, config.port),
            banner: config.banner.clone(),
            hint: config.unreachable_hint.clone(),
            ever_connected: false,
            up: false,
            failures: 0,
            last_said: None,
        };
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(100);
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        report.connected();
                        backoff = Duration::from_millis(100);
                        election.connected.store(true, Ordering::Relaxed);
                        let _ = connected_tx.try_send(());
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        if incoming_tx.send(p).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        // Not announced on the mesh while cut off, so another gateway takes over.
                        election.connected.store(false, Ordering::Relaxed);
                        report.failed(&e);
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    }
                }
            }
        })
    };

    // On every connect: subscribe, announce ourselves, republish availability.
    let on_connect = {
        let (client, config, availability, stats, own_status) =
            (client.clone(), config.clone(), availability.clone(), stats.clone(), own_status.clone());
        tokio::spawn(async move {
            while connected_rx.recv().await.is_some() {
                stats.lock().expect("not poisoned").connects += 1;
                // The bridge's own topics, unless a bridged filter covers them already: the broker
                // would deliver a message once per matching subscription.
                let bridged: Vec<String> = config.mqtt_filters.iter().map(|f| to_mqtt(&config.prefix, f)).collect();
                let covered = |example: &str| {
                    bridged.iter().any(|f| {
                        starling::TopicFilter::new(f).is_ok_and(|f| Topic::new(example).is_ok_and(|t| f.matches(&t)))
                    })
                };
                // Calls are heard even when none is allowed, to answer that they are refused.
                let own = [(format!("{}/$rpc/#", config.prefix), format!("{}/$rpc/x/y", config.prefix))];
                let own: Vec<String> = own.into_iter().filter(|(_, ex)| !covered(ex)).map(|(f, _)| f).collect();
                // A mapping may lower the QoS at which the broker sends us its filter.
                let sub_qos = |f: &str| {
                    config
                        .mappings
                        .iter()
                        .find(|m| m.inbound.iter().any(|i| to_mqtt(&config.prefix, i) == f))
                        .and_then(|m| m.qos)
                        .map_or(QoS::AtLeastOnce, qos_of)
                };
                let filters: Vec<Filter> = bridged
                    .iter()
                    .cloned()
                    .chain(own)
                    .map(|f| {
                        let mut filter = Filter::new(f.clone(), sub_qos(&f));
                        filter.nolocal = true; // never hear our own publications back
                        filter
                    })
                    .collect();
                if let Err(e) = client.subscribe_many(filters).await {
                    tracing::warn!("subscribing: {e}");
                }
                let _ = client.publish(own_status.clone(), QoS::AtLeastOnce, true, "online").await;
                let snapshot: Vec<(NodeId, &str)> =
                    availability.lock().expect("not poisoned").iter().map(|(k, v)| (*k, *v)).collect();
                for (id, status) in snapshot {
                    let _ = client.publish(status_topic(&config.prefix, id), QoS::AtLeastOnce, true, status).await;
                }
            }
        })
    };

    // Mesh to MQTT.
    // One subscription for all filters: a message matching several crosses once.
    let filters: Vec<&str> = config.mesh_filters.iter().map(String::as_str).collect();
    let mut mesh_rx = node.subscribe_many(&filters).await?;
    let outward = {
        let (client, prefix, stats, retain) = (client.clone(), prefix.clone(), stats.clone(), config.retain);
        let rules: Vec<(starling::TopicFilter, Option<u8>, Option<bool>)> = config
            .mappings
            .iter()
            .flat_map(|m| m.out.iter().filter_map(|f| Some((starling::TopicFilter::new(f).ok()?, m.qos, m.retain))))
            .collect();
        let election = election.clone();
        tokio::spawn(async move {
            while let Some(r) = mesh_rx.recv_event().await {
                let Received::Message(m) = r else { continue };
                // What this gateway injected comes back as its own publication: not again. And
                // only the active gateway bridges.
                if m.from == me || m.topic == ALIVE_TOPIC || !election.is_active() {
                    continue;
                }
                let mut props = PublishProperties::default();
                props.user_properties.push((ORIGIN.into(), m.from.to_string()));
                if let Some(seq) = m.seq {
                    props.user_properties.push((SEQ.into(), seq.to_string()));
                }
                let rule = Topic::new(&m.topic).ok().and_then(|t| rules.iter().find(|(f, _, _)| f.matches(&t)));
                let qos = match rule.and_then(|r| r.1) {
                    Some(level) => qos_of(level),
                    None if m.seq.is_some() => QoS::AtLeastOnce,
                    None => QoS::AtMostOnce,
                };
                let retain = rule.and_then(|r| r.2).unwrap_or(retain);
                match client.publish_with_properties(to_mqtt(&prefix, &m.topic), qos, retain, m.payload, props).await {
                    Ok(()) => stats.lock().expect("not poisoned").to_mqtt += 1,
                    Err(e) => tracing::warn!("publishing to MQTT: {e}"),
                }
            }
        })
    };

    // Availability; a gateway that left the mesh no longer counts for the election.
    let avail = {
        let (client, prefix, availability, election) =
            (client.clone(), prefix.clone(), availability.clone(), election.clone());
        tokio::spawn(async move {
            loop {
                let (id, status) = match events.recv().await {
                    Ok(PeerEvent::Up(p)) | Ok(PeerEvent::Restarted(p)) => (p.id, "online"),
                    Ok(PeerEvent::Down { id, .. }) => {
                        election.forget(id);
                        (id, "offline")
                    }
                    Ok(_) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(_) => return,
                };
                availability.lock().expect("not poisoned").insert(id, status);
                let _ = client.publish(status_topic(&prefix, id), QoS::AtLeastOnce, true, status).await;
            }
        })
    };

    // Counters, retained, for dashboards: the bridge's and its mesh node's.
    let metrics = {
        let (client, node, stats, election) = (client.clone(), node.clone(), stats.clone(), election.clone());
        let topic = format!("{prefix}/$gateway/{me}/stats");
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(STATS_EVERY);
            loop {
                tick.tick().await;
                let bridge = stats.lock().expect("not poisoned").clone();
                let Ok(node_stats) = node.stats().await else { return };
                let mesh: serde_json::Map<String, serde_json::Value> =
                    node_stats.core.fields().iter().map(|(k, v)| ((*k).to_owned(), (*v).into())).collect();
                let json = serde_json::json!({
                    "active": election.is_active(),
                    "bridge": bridge,
                    "mesh": mesh,
                    "peers": node.peers().await.map(|p| p.len()).unwrap_or(0),
                });
                let _ = client.publish(topic.clone(), QoS::AtMostOnce, true, json.to_string()).await;
            }
        })
    };

    // The same counters for `starling nodes --stats`, by call.
    {
        let (stats, election) = (stats.clone(), election.clone());
        node.serve(STATS_METHOD, move |_req| {
            let text = stats.lock().expect("not poisoned").lines(election.is_active());
            async move { Ok(text.into_bytes()) }
        })
        .await?;
    }

    // The election among gateways, over the mesh.
    let elect = tokio::spawn(election.clone().run(node.clone()));

    // For people watching the broker only: nothing reads it back.
    let alive = {
        let (client, topic, election) = (client.clone(), format!("{prefix}/$gateway/{me}/alive"), election.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(election::ALIVE_EVERY);
            loop {
                tick.tick().await;
                let state = if election.is_active() { "active" } else { "standby" };
                let _ = client.publish(topic.clone(), QoS::AtMostOnce, false, state).await;
            }
        })
    };

    // MQTT to mesh, on this task.
    let gateway_prefix = format!("{prefix}/$gateway/");
    let rpc_prefix = format!("{prefix}/$rpc/");
    let rpc = rpc::Rpc {
        node: node.clone(),
        client: client.clone(),
        prefix: prefix.clone(),
        policy: Arc::new(config.rpc.clone()),
        stats: stats.clone(),
    };
    while let Some(p) = incoming_rx.recv().await {
        let from_mesh =
            p.properties.as_ref().is_some_and(|props| props.user_properties.iter().any(|(k, _)| k == ORIGIN));
        let topic = String::from_utf8_lossy(&p.topic).into_owned();
        if topic.starts_with(&gateway_prefix) {
            continue; // what gateways say on MQTT decides nothing here
        }
        if !election.is_active() {
            continue;
        }
        if let Some(rest) = topic.strip_prefix(&rpc_prefix) {
            rpc.handle(&topic, rest, p);
            continue;
        }
        let Some(mesh_topic) = from_mqtt(&prefix, &topic).filter(|t| !t.starts_with('$')) else {
            continue; // status, availability and other topics of the bridge itself
        };
        if from_mesh {
            continue; // bridged out by a gateway: it is on the mesh already
        }
        if let Err(e) = Topic::new(mesh_topic) {
            stats.lock().expect("not poisoned").refused += 1;
            tracing::warn!("not bridging MQTT topic '{topic}' to the mesh: {e}");
            continue;
        }
        let mut publish = node.publish(mesh_topic, p.payload.to_vec());
        if p.qos != QoS::AtMostOnce {
            publish = publish.reliable();
        }
        // Submitted in order; the outcome is awaited aside, so one slow or dead subscriber never
        // holds up the messages behind it.
        let Ok(handle) = publish.submit().await else { break };
        let (stats, size, mesh_topic) = (stats.clone(), p.payload.len(), mesh_topic.to_owned());
        tokio::spawn(async move {
            match handle.await {
                Ok(()) => stats.lock().expect("not poisoned").to_mesh += 1,
                Err(starling::runtime::Error::NotDelivered(e)) => tracing::warn!("'{mesh_topic}': {e}"),
                Err(e) => {
                    stats.lock().expect("not poisoned").refused += 1;
                    tracing::warn!("not bridging '{mesh_topic}' ({size} bytes) to the mesh: {e}");
                }
            }
        });
    }
    for t in [poller, on_connect, outward, avail, elect, alive, metrics] {
        t.abort();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_urls() {
        let b = parse_broker("mqtt://127.0.0.1:1884").unwrap();
        assert_eq!((b.host.as_str(), b.port, b.credentials), ("127.0.0.1", 1884, None));
        let b = parse_broker("mqtt://ha:s3cret@broker.lan").unwrap();
        assert_eq!((b.host.as_str(), b.port), ("broker.lan", 1883));
        assert_eq!(b.credentials, Some(("ha".into(), "s3cret".into())));
        assert!(format!("{:#}", parse_broker("tcp://x").unwrap_err()).contains("mqtt://host:port"));
        let b = parse_broker("mqtts://broker.lan").unwrap();
        assert_eq!((b.port, b.tls), (8883, true));
        assert!(format!("{:#}", parse_broker("mqtt://x:notaport").unwrap_err()).contains("port 'notaport'"));
    }

    #[test]
    fn mappings_are_checked() {
        let mut c = BridgeConfig::new("h", 1);
        c.mappings = vec![Mapping { out: vec!["home/#".into()], qos: Some(1), ..Mapping::default() }];
        c.validate().unwrap();
        c.mappings[0].qos = Some(2);
        assert!(c.validate().unwrap_err().to_string().contains("0 or 1"));
        c.mappings[0].qos = None;
        c.mappings[0].inbound = vec!["cmd/#".into()];
        assert!(c.validate().unwrap_err().to_string().contains("exactly one direction"));
        assert!(BridgeConfig::new("h", 1).rpc.is_off(), "calls from MQTT are off unless configured");
    }

    #[test]
    fn prefix_and_filters_are_checked() {
        let mut c = BridgeConfig::new("h", 1);
        c.prefix = "a/#".into();
        assert!(c.validate().unwrap_err().to_string().contains("prefix"));
        let mut c = BridgeConfig::new("h", 1);
        c.mesh_filters = vec!["a/#/b".into()];
        assert!(format!("{:#}", c.validate().unwrap_err()).contains("mesh filter 'a/#/b'"));
    }
}
