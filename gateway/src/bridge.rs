//! The MQTT bridge: mesh messages out to `<prefix>/<topic>`, MQTT messages under the prefix in
//! to the mesh, availability of every mesh node as retained `online`/`offline`, and the
//! gateway's own status through its MQTT will.
//!
//! Three tasks share no locks on the hot path: the MQTT event loop (only polls, never
//! publishes: publishing from the polling task is rumqttc's known deadlock), mesh-to-MQTT, and
//! MQTT-to-mesh. Loops are cut by origin: a message the gateway put on the mesh comes back to it
//! as its own publication and is skipped; a message a gateway put on MQTT carries the
//! `starling-origin` user property and is never taken back into the mesh.

use std::collections::BTreeMap;
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
}

impl BridgeConfig {
    /// Bridges everything both ways under `starling/` on `host:port`.
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        BridgeConfig {
            host: host.into(),
            port,
            prefix: "starling".into(),
            mesh_filters: vec!["#".into()],
            mqtt_filters: vec!["#".into()],
            retain: false,
        }
    }

    /// Checks prefix and filters; errors name the field.
    pub fn validate(&self) -> Result<()> {
        if self.prefix.is_empty() || self.prefix.contains(['+', '#']) || self.prefix.ends_with('/') {
            bail!("prefix '{}' must be a non-empty topic without wildcards or a trailing '/'", self.prefix);
        }
        for f in &self.mesh_filters {
            starling::TopicFilter::new(f).with_context(|| format!("mesh filter '{f}'"))?;
        }
        for f in &self.mqtt_filters {
            starling::TopicFilter::new(f).with_context(|| format!("MQTT filter '{f}'"))?;
        }
        Ok(())
    }
}

/// Parses `mqtt://host:port` (port defaults to 1883).
pub fn parse_broker(url: &str) -> Result<(String, u16)> {
    let rest = url
        .strip_prefix("mqtt://")
        .with_context(|| format!("broker '{url}' must look like mqtt://host:port (mqtts:// is not supported yet)"))?;
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) => (h, p.parse::<u16>().with_context(|| format!("port '{p}' in broker '{url}'"))?),
        None => (rest, 1883),
    };
    if host.is_empty() {
        bail!("broker '{url}' has no host");
    }
    Ok((host.to_owned(), port))
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
#[derive(Debug, Default, Clone)]
pub struct BridgeStats {
    /// Mesh messages published to MQTT.
    pub to_mqtt: u64,
    /// MQTT messages published on the mesh.
    pub to_mesh: u64,
    /// MQTT messages refused: topic not valid on the mesh, too large, or already from the mesh.
    pub refused: u64,
    /// Connections to the broker made (1 + reconnects).
    pub connects: u64,
}

/// Runs the bridge until the node shuts down or the broker setup fails for good.
pub async fn run(node: Node, config: BridgeConfig) -> Result<()> {
    config.validate()?;
    let me = node.id();
    let prefix = config.prefix.clone();
    let mut options = MqttOptions::new(format!("starling-gw-{me}"), config.host.clone(), config.port);
    options.set_keep_alive(Duration::from_secs(10));
    options.set_clean_start(true);
    options.set_max_packet_size(Some(256 * 1024));
    let own_status = format!("{prefix}/$gateway/{me}/status");
    options.set_last_will(LastWill::new(own_status.clone(), "offline", QoS::AtLeastOnce, true, None));
    // rumqttc turns Nagle on by default: 40 ms per QoS 1 round trip.
    let mut net = options.network_options();
    net.set_tcp_nodelay(true);
    options.set_network_options(net);
    let (client, mut eventloop) = AsyncClient::new(options, 1024);

    let stats = Arc::new(Mutex::new(BridgeStats::default()));
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
    let poller = tokio::spawn(async move {
        let mut backoff = Duration::from_millis(100);
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    backoff = Duration::from_millis(100);
                    let _ = connected_tx.try_send(());
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if incoming_tx.send(p).await.is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!("broker connection: {e}; retrying in {backoff:?}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    });

    // On every connect: subscribe, announce ourselves, republish availability.
    let on_connect = {
        let (client, config, availability, stats, own_status) =
            (client.clone(), config.clone(), availability.clone(), stats.clone(), own_status.clone());
        tokio::spawn(async move {
            while connected_rx.recv().await.is_some() {
                stats.lock().expect("not poisoned").connects += 1;
                let filters: Vec<Filter> = config
                    .mqtt_filters
                    .iter()
                    .map(|f| {
                        let mut filter = Filter::new(to_mqtt(&config.prefix, f), QoS::AtLeastOnce);
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
    let (mesh_tx, mut mesh_rx) = mpsc::channel::<Received>(4096);
    for f in &config.mesh_filters {
        let mut sub = node.subscribe(f).await?;
        let tx = mesh_tx.clone();
        tokio::spawn(async move {
            while let Some(m) = sub.recv_event().await {
                if tx.send(m).await.is_err() {
                    break;
                }
            }
        });
    }
    drop(mesh_tx);
    let outward = {
        let (client, prefix, stats, retain) = (client.clone(), prefix.clone(), stats.clone(), config.retain);
        tokio::spawn(async move {
            let mut last: Option<(NodeId, Option<u64>, String)> = None;
            while let Some(r) = mesh_rx.recv().await {
                let Received::Message(m) = r else { continue };
                // What this gateway injected comes back as its own publication: not again.
                if m.from == me {
                    continue;
                }
                // Several filters may match one message: bridge it once.
                let key = (m.from, m.seq, m.topic.clone());
                if m.seq.is_some() && last.as_ref() == Some(&key) {
                    continue;
                }
                last = Some(key);
                let mut props = PublishProperties::default();
                props.user_properties.push((ORIGIN.into(), m.from.to_string()));
                if let Some(seq) = m.seq {
                    props.user_properties.push((SEQ.into(), seq.to_string()));
                }
                let qos = if m.seq.is_some() { QoS::AtLeastOnce } else { QoS::AtMostOnce };
                match client.publish_with_properties(to_mqtt(&prefix, &m.topic), qos, retain, m.payload, props).await {
                    Ok(()) => stats.lock().expect("not poisoned").to_mqtt += 1,
                    Err(e) => tracing::warn!("publishing to MQTT: {e}"),
                }
            }
        })
    };

    // Availability.
    let avail = {
        let (client, prefix, availability) = (client.clone(), prefix.clone(), availability.clone());
        tokio::spawn(async move {
            loop {
                let (id, status) = match events.recv().await {
                    Ok(PeerEvent::Up(p)) | Ok(PeerEvent::Restarted(p)) => (p.id, "online"),
                    Ok(PeerEvent::Down { id, .. }) => (id, "offline"),
                    Ok(_) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(_) => return,
                };
                availability.lock().expect("not poisoned").insert(id, status);
                let _ = client.publish(status_topic(&prefix, id), QoS::AtLeastOnce, true, status).await;
            }
        })
    };

    // MQTT to mesh, on this task.
    while let Some(p) = incoming_rx.recv().await {
        let from_mesh =
            p.properties.as_ref().is_some_and(|props| props.user_properties.iter().any(|(k, _)| k == ORIGIN));
        let topic = String::from_utf8_lossy(&p.topic).into_owned();
        let Some(mesh_topic) = from_mqtt(&prefix, &topic).filter(|t| !t.starts_with('$')) else {
            continue; // our own status and availability topics
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
        match publish.await {
            Ok(()) => stats.lock().expect("not poisoned").to_mesh += 1,
            Err(starling::runtime::Error::NotDelivered(e)) => tracing::warn!("'{mesh_topic}': {e}"),
            Err(starling::runtime::Error::Closed) => break,
            Err(e) => {
                stats.lock().expect("not poisoned").refused += 1;
                tracing::warn!("not bridging MQTT topic '{topic}' ({} bytes) to the mesh: {e}", p.payload.len());
            }
        }
    }
    for t in [poller, on_connect, outward, avail] {
        t.abort();
    }
    Ok(())
}
