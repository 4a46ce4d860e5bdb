//! Starling over real loopback sockets: every node is a task of the one multi-thread tokio
//! runtime the bench runs on, as an application holding several nodes would have them.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use starling::identity::{AllowEntry, Allowlist, Identity, MethodPattern, Permissions};
use starling::noise;
use starling::runtime::{Node, NodeBuilder, Subscription};
use starling::TopicFilter;

use crate::raw::{pct_range, section_throughput, RTT_TOKIO, SECTION_RTT, SEND_LOOP};
use crate::report::Row;
use crate::{mqtt, Plan, SIZES};

/// Starling RPC round trip, PSK mode.
pub const RPC_PSK: &str = "Starling RPC (PSK)";
/// Starling RPC round trip, identity mode.
pub const RPC_IDENTITY: &str = "Starling RPC (identity)";
/// Starling best-effort publications.
pub const BEST_EFFORT: &str = "Starling best effort";
/// Starling reliable publications.
pub const RELIABLE: &str = "Starling reliable";
/// Section of one-way latency.
pub const SECTION_ONE_WAY: &str = "publish to subscriber, one way";
/// Section of reliable delivery under loss.
pub const SECTION_LOSSY: &str = "reliable under injected receive loss, 1 subscriber";
/// Section of bytes on the wire.
pub const SECTION_WIRE: &str = "bytes on the wire per message, 1 subscriber (all directions)";
/// Section of CPU time.
pub const SECTION_CPU: &str = "CPU time per delivered message, 1 subscriber (whole process, broker included)";
/// The topic every publication uses (7 bytes).
pub const TOPIC: &str = "bench/t";

/// Opens `count` nodes on a fresh mesh and waits until each sees every other.
pub async fn mesh(count: usize, loss: u8) -> Vec<Node> {
    mesh_in(count, loss, false).await
}

/// Fresh identities (random secrets) for `count` bench nodes and an allowlist letting each do
/// everything.
fn identities(count: usize) -> (Vec<Identity>, Allowlist) {
    let ids: Vec<Identity> = (0..count)
        .map(|_| {
            let mut secret = [0u8; 32];
            secret.copy_from_slice(crate::random_key().as_bytes());
            Identity::from_secret(secret)
        })
        .collect();
    let all = |s: &str| vec![TopicFilter::new(s).expect("a valid filter")];
    let entries = ids
        .iter()
        .enumerate()
        .map(|(i, id)| AllowEntry {
            name: format!("bench-{i}"),
            key: id.public(),
            permissions: Permissions {
                publish: all("#"),
                subscribe: all("#"),
                call: vec![MethodPattern::new("*").expect("a valid pattern")],
            },
        })
        .collect();
    (ids, Allowlist { network: "bench".into(), entries })
}

/// [`mesh`] in PSK mode or, with `identity`, in identity mode (each node its own key pair).
pub async fn mesh_in(count: usize, loss: u8, identity: bool) -> Vec<Node> {
    let key = crate::random_key();
    let (ids, list) = identities(if identity { count } else { 0 });
    let (group, port) = crate::isolated_mesh();
    let mut nodes = Vec::new();
    for i in 0..count {
        let builder = match ids.get(i) {
            Some(id) => NodeBuilder::identity(id.clone(), list.clone()),
            None => NodeBuilder::new(key.clone()),
        };
        let node = builder
            .name(format!("bench-{i}"))
            .group(group)
            .port(port)
            .subscription_capacity(1 << 17)
            .rx_loss_percent(loss)
            .open()
            .await
            .expect("a node opens on loopback");
        nodes.push(node);
    }
    let limit = Instant::now() + Duration::from_secs(10);
    for n in &nodes {
        while n.peers().await.map(|p| p.len()).unwrap_or(0) < count - 1 && Instant::now() < limit {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    nodes
}

/// Closes every node, all at once (each may linger up to a second for acknowledgements).
async fn close(nodes: Vec<Node>) {
    let closing: Vec<_> =
        nodes.into_iter().map(|n| tokio::spawn(tokio::time::timeout(Duration::from_secs(2), n.close()))).collect();
    for c in closing {
        let _ = c.await;
    }
}

/// Publishes best effort until `subs` all received one, so discovery and subscriptions settled.
async fn warm_up(publisher: &Node, subs: &mut [Subscription]) {
    let limit = Instant::now() + Duration::from_secs(5);
    for s in subs.iter_mut() {
        while Instant::now() < limit {
            let _ = publisher.publish(TOPIC, b"warm".to_vec()).reliable().ttl(Duration::from_secs(1)).await;
            if let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(200), s.recv()).await {
                break;
            }
        }
        while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(20), s.recv()).await {}
    }
}

/// RPC round trips, PSK mode: an echo method on one node, called from another.
pub async fn rtt(plan: &Plan) -> Vec<Row> {
    rtt_in(plan, false).await
}

/// RPC round trips in identity mode (pairwise Noise sessions), against the same baselines.
pub async fn rtt_identity(plan: &Plan) -> Vec<Row> {
    rtt_in(plan, true).await
}

async fn rtt_in(plan: &Plan, identity: bool) -> Vec<Row> {
    let mut rows = Vec::new();
    for size in SIZES {
        let mut samples = Vec::new();
        let mut failures = 0;
        for _ in 0..plan.runs {
            let nodes = mesh_in(2, 0, identity).await;
            nodes[1].serve("echo", |req| async move { Ok(req.payload) }).await.expect("serve");
            let peer = nodes[1].id();
            let msg = crate::payload(size, 0);
            for i in 0..plan.iterations + 5 {
                let start = Instant::now();
                match nodes[0].call(peer, "echo", msg.clone(), Duration::from_secs(2)).await {
                    Ok(reply) if reply.len() == size => {
                        if i >= 5 {
                            samples.push(start.elapsed());
                        }
                    }
                    _ => failures += 1,
                }
            }
            close(nodes).await;
        }
        let name = if identity { RPC_IDENTITY } else { RPC_PSK };
        let row = Row::latency(SECTION_RTT, name, size, &mut samples).against(&[RTT_TOKIO, mqtt::RR_QOS0]);
        rows.push(if failures > 0 { row.note(format!("{failures} calls failed")) } else { row });
    }
    rows
}

/// CPU time of one whole Noise IK handshake, both sides in this thread (four X25519 operations
/// each), as `starling::noise` runs it: what a pair of nodes pays per session.
pub fn handshake(plan: &Plan) -> Vec<Row> {
    let (ids, list) = identities(2);
    let prologue = noise::prologue(&list.network);
    let n = (plan.iterations * plan.runs).max(10);
    let mut samples = Vec::with_capacity(n);
    for i in 0..n + 5 {
        let seed = [i as u8; 32];
        let start = Instant::now();
        let mut m1 = Vec::new();
        let init = noise::Initiator::start(&ids[0], &ids[1].public(), &prologue, seed, &[0; 4], &mut m1).expect("msg1");
        let resp = noise::Responder::read(&ids[1], &prologue, seed, &m1).expect("read msg1");
        let mut m2 = Vec::new();
        resp.finish(&[0; 4], &mut m2).expect("msg2");
        init.finish(&m2).expect("read msg2");
        if i >= 5 {
            samples.push(start.elapsed());
        }
    }
    let mut row = Row::latency("handshake", "Starling identity-mode handshake (both sides, CPU)", 0, &mut samples);
    row.size = None;
    vec![row]
}

/// One message at a time from one node to a subscriber on another: time from publishing to
/// receipt.
pub async fn one_way(plan: &Plan) -> Vec<Row> {
    let mut rows = Vec::new();
    for reliable in [false, true] {
        for size in SIZES {
            let mut samples = Vec::new();
            for _ in 0..plan.runs {
                let nodes = mesh(2, 0).await;
                let mut subs = vec![nodes[1].subscribe(TOPIC).await.expect("subscribe")];
                warm_up(&nodes[0], &mut subs).await;
                let sub = &mut subs[0];
                for i in 0..plan.iterations {
                    let msg = crate::payload(size, i as u64);
                    let start = Instant::now();
                    let handle = nodes[0].publish(TOPIC, msg);
                    let handle = if reliable { handle.reliable() } else { handle };
                    let Ok(handle) = handle.submit().await else { break };
                    if !matches!(tokio::time::timeout(Duration::from_secs(1), sub.recv()).await, Ok(Some(_))) {
                        break;
                    }
                    samples.push(start.elapsed());
                    let _ = handle.await;
                }
                close(nodes).await;
            }
            let (name, base) = if reliable { (RELIABLE, mqtt::QOS1) } else { (BEST_EFFORT, mqtt::QOS0) };
            rows.push(Row::latency(SECTION_ONE_WAY, name, size, &mut samples).against(&[base]));
        }
    }
    rows
}

/// Counts what a subscription receives until `n` arrived or it stays quiet for a while.
/// Returns the count and when the last one came.
/// Reliable runs wait longer in silence: repairs may follow the longest heartbeat interval.
fn counter(
    mut sub: Subscription,
    n: usize,
    limit: Duration,
    quiet: Duration,
) -> tokio::task::JoinHandle<(usize, Instant)> {
    tokio::spawn(async move {
        let (mut got, mut last) = (0, Instant::now());
        let end = Instant::now() + limit;
        while got < n && Instant::now() < end {
            match tokio::time::timeout(quiet, sub.recv()).await {
                Ok(Some(_)) => {
                    got += 1;
                    last = Instant::now();
                }
                _ => break,
            }
        }
        (got, last)
    })
}

/// What one throughput run measured.
pub struct RunResult {
    /// Messages per second the slowest subscriber received.
    pub rate: f64,
    /// Share of messages the slowest subscriber received, in percent.
    pub delivered: f64,
    /// Process CPU time per message delivered to every subscriber, in microseconds.
    pub cpu_per_msg: f64,
    /// Bytes the nodes sent per message.
    pub wire_per_msg: f64,
    /// With injected loss: the bytes the publisher spent on repair (resent chunks and parity
    /// symbols) over the bytes the subscriber that lost most had dropped (`None` without loss).
    pub repair_ratio: Option<f64>,
}

/// Most reliable publications in flight: inside the publisher's retention bounds (1024 messages,
/// 1 MiB by default) with room to spare, so none is evicted unacknowledged.
fn window(size: usize) -> usize {
    ((768 * 1024) / (size + 64)).clamp(2, 960)
}

/// Publishes `n` messages of `size` bytes to `subs` subscribers as fast as the API takes them.
pub async fn run_once(n: usize, size: usize, subs: usize, reliable: bool, loss: u8, limit: Duration) -> RunResult {
    let nodes = mesh(subs + 1, loss).await;
    let mut subscriptions = Vec::new();
    for node in &nodes[1..] {
        subscriptions.push(node.subscribe(TOPIC).await.expect("subscribe"));
    }
    warm_up(&nodes[0], &mut subscriptions).await;
    let tx_before = tx_bytes(&nodes).await;
    let repair_before = repair_and_loss(&nodes).await;
    let cpu_before = crate::process_cpu();
    let start = Instant::now();
    let quiet = Duration::from_millis(if reliable { 3000 } else { 500 });
    let counters: Vec<_> = subscriptions.into_iter().map(|s| counter(s, n, limit, quiet)).collect();
    let mut in_flight = VecDeque::new();
    let end = start + limit;
    for i in 0..n {
        if Instant::now() > end {
            break;
        }
        let p = nodes[0].publish(TOPIC, crate::payload(size, i as u64));
        if reliable {
            let Ok(h) = p.reliable().submit().await else { break };
            in_flight.push_back(h);
            if in_flight.len() >= window(size) {
                let h = in_flight.pop_front().expect("non-empty");
                let _ = tokio::time::timeout_at(end.into(), h).await;
            }
        } else if p.submit().await.is_err() {
            break;
        }
    }
    for h in in_flight {
        let _ = tokio::time::timeout_at(end.into(), h).await;
    }
    let mut worst = usize::MAX;
    let mut last = start;
    for c in counters {
        let (got, at) = c.await.expect("counter");
        worst = worst.min(got);
        last = last.max(at);
    }
    let cpu = crate::process_cpu().saturating_sub(cpu_before);
    let wire = tx_bytes(&nodes).await.saturating_sub(tx_before);
    let repair_after = repair_and_loss(&nodes).await;
    close(nodes).await;
    let repaired = repair_after.0.saturating_sub(repair_before.0);
    let worst_lost = repair_after.1.iter().zip(&repair_before.1).map(|(a, b)| a.saturating_sub(*b)).max().unwrap_or(0);
    let repair_ratio = (loss > 0 && worst_lost > 0).then(|| repaired as f64 / worst_lost as f64);
    let secs = last.duration_since(start).as_secs_f64().max(1e-6);
    RunResult {
        rate: worst as f64 / secs,
        delivered: 100.0 * worst as f64 / n as f64,
        cpu_per_msg: cpu.as_secs_f64() * 1e6 / worst.max(1) as f64,
        wire_per_msg: wire as f64 / worst.max(1) as f64,
        repair_ratio,
    }
}

/// The publisher's (`nodes[0]`) repair bytes, and what each subscriber's loss injection dropped.
async fn repair_and_loss(nodes: &[Node]) -> (u64, Vec<u64>) {
    let repaired = nodes[0].stats().await.map(|s| s.core.repair_bytes).unwrap_or(0);
    let mut lost = Vec::new();
    for n in &nodes[1..] {
        lost.push(n.stats().await.map(|s| s.injected_loss_bytes).unwrap_or(0));
    }
    (repaired, lost)
}

async fn tx_bytes(nodes: &[Node]) -> u64 {
    let mut sum = 0;
    for n in nodes {
        sum += n.stats().await.map(|s| s.core.tx_bytes).unwrap_or(0);
    }
    sum
}

/// Throughput of best-effort and reliable publications to `subs` subscribers (and, with one
/// subscriber, CPU time per delivered message).
pub async fn throughput(plan: &Plan, subs: usize) -> Vec<Row> {
    let section = section_throughput(subs);
    let mut rows = Vec::new();
    for reliable in [false, true] {
        for size in SIZES {
            let n = plan.messages_for(size, plan.messages);
            let (mut rates, mut delivered, mut cpu) = (Vec::new(), Vec::new(), Vec::new());
            for _ in 0..plan.runs {
                let r = run_once(n, size, subs, reliable, 0, plan.run_limit).await;
                rates.push(r.rate);
                delivered.push(r.delivered);
                cpu.push(r.cpu_per_msg);
            }
            let (name, bases): (&str, &[&'static str]) =
                if reliable { (RELIABLE, &[mqtt::QOS1]) } else { (BEST_EFFORT, &[mqtt::QOS0, SEND_LOOP]) };
            let note = format!("{n} sent per run, slowest subscriber got {}", pct_range(&delivered));
            rows.push(Row::rate(&section, name, Some(size), "msg/s", &mut rates).against(bases).note(note));
            if subs == 1 {
                rows.push(Row::cost(SECTION_CPU, name, Some(size), "µs/msg", &mut cpu).against(&[if reliable {
                    mqtt::QOS1
                } else {
                    mqtt::QOS0
                }]));
            }
        }
    }
    rows
}

/// Section of reliable delivery under loss with three subscribers, each losing independently.
pub const SECTION_LOSSY_3: &str = "reliable under injected receive loss, 3 subscribers";
/// Section of single large reliable messages: publish to every acknowledgement.
pub const SECTION_LOSSY_COMPLETION: &str = "one 64 KiB reliable message to 3 subscribers, publish to all acknowledged";

/// Message sizes of the loss rows: the throughput sizes and the largest message.
pub const LOSS_SIZES: [usize; 4] = [64, 1024, 16 * 1024, 64 * 1024];

/// Reliable publications when every node drops 10% or 30% of what it receives, to one and to
/// three subscribers, at every size up to the largest message; each loss row is set against
/// the loss-free row of the same run.
pub async fn lossy(plan: &Plan) -> Vec<Row> {
    let mut rows = Vec::new();
    for (subs, section) in [(1, SECTION_LOSSY), (3, SECTION_LOSSY_3)] {
        for loss in [0u8, 10, 30] {
            for size in LOSS_SIZES {
                let n = plan.messages_for(size, plan.lossy_messages).min(plan.lossy_messages);
                let (mut rates, mut delivered, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
                for _ in 0..plan.runs {
                    let r = run_once(n, size, subs, true, loss, plan.run_limit).await;
                    rates.push(r.rate);
                    delivered.push(r.delivered);
                    ratios.extend(r.repair_ratio);
                }
                let name = match loss {
                    0 => "Starling reliable, no loss",
                    10 => "Starling reliable, 10% loss",
                    _ => "Starling reliable, 30% loss",
                };
                let mut note = format!("{n} sent per run, slowest subscriber got {}", pct_range(&delivered));
                if !ratios.is_empty() {
                    // What repair cost against what the receiver that lost most dropped (its loss
                    // injection counts every datagram it dropped, control ones included).
                    let (lo, hi) = ratios.iter().fold((f64::MAX, 0.0f64), |(l, h), &r| (l.min(r), h.max(r)));
                    note.push_str(&format!("; repair bytes {lo:.2}-{hi:.2}x the worst receiver's lost bytes"));
                }
                let row = Row::rate(section, name, Some(size), "msg/s", &mut rates).note(note);
                rows.push(if loss > 0 { row.against(&["Starling reliable, no loss"]) } else { row });
            }
        }
    }
    rows.extend(completion(plan).await);
    rows
}

/// One 64 KiB reliable message at a time to three subscribers: the time from publishing to
/// every subscriber's acknowledgement (what an awaited publish waits), loss-free and at 30%.
async fn completion(plan: &Plan) -> Vec<Row> {
    const SIZE: usize = 64 * 1024;
    let count = match plan.mode {
        crate::Mode::Smoke => 3,
        crate::Mode::Quick => 30,
        crate::Mode::Full => 200,
    };
    let mut rows = Vec::new();
    for loss in [0u8, 30] {
        let nodes = mesh(4, loss).await;
        let mut subscriptions = Vec::new();
        for node in &nodes[1..] {
            subscriptions.push(node.subscribe(TOPIC).await.expect("subscribe"));
        }
        warm_up(&nodes[0], &mut subscriptions).await;
        let drains: Vec<_> = subscriptions
            .into_iter()
            .map(|mut s| tokio::spawn(async move { while s.recv().await.is_some() {} }))
            .collect();
        let mut samples = Vec::new();
        let (mut failed, mut timed_out) = (0, 0);
        for i in 0..count {
            let start = Instant::now();
            let p = nodes[0].publish(TOPIC, crate::payload(SIZE, i as u64)).reliable();
            match tokio::time::timeout(plan.run_limit, p).await {
                Ok(Ok(())) => samples.push(start.elapsed()),
                Ok(Err(_)) => failed += 1,
                Err(_) => timed_out += 1,
            }
        }
        close(nodes).await;
        for d in drains {
            d.abort();
        }
        let name = if loss == 0 { "Starling reliable, no loss" } else { "Starling reliable, 30% loss" };
        let mut row = Row::latency(SECTION_LOSSY_COMPLETION, name, SIZE, &mut samples);
        row.note =
            format!("{} of {count} acknowledged by all 3, {failed} failed, {timed_out} timed out", samples.len());
        rows.push(row);
    }
    rows
}

/// Bytes all nodes sent per delivered message (data, acks, beacons), counted by the nodes.
pub async fn wire_bytes(plan: &Plan) -> Vec<Row> {
    let mut rows = Vec::new();
    for reliable in [false, true] {
        for size in SIZES {
            let n = plan.messages_for(size, 1000).min(1000);
            let r = run_once(n, size, 1, reliable, 0, plan.run_limit).await;
            let name = if reliable { RELIABLE } else { BEST_EFFORT };
            let base = if reliable { mqtt::QOS1 } else { mqtt::QOS0 };
            let note = format!("{n} messages, topic {} B, payload included", TOPIC.len());
            rows.push(
                Row::value(SECTION_WIRE, name, Some(size), "B", r.wire_per_msg, None).against(&[base]).note(note),
            );
        }
    }
    rows
}

/// A fixed amount of one kind of work, for counting instructions with callgrind: run it with
/// `n` and with 0 and divide the difference by `n`. `kind` is `rpc` (64 B calls), `publish`
/// (64 B best-effort messages to one subscriber, one at a time), `reliable` (the same, reliable),
/// or `burst` / `reliable-burst` (as fast as the API takes them, as the throughput rows do).
pub async fn profile(kind: &str, n: usize) -> Result<(), String> {
    if kind == "burst" || kind == "reliable-burst" {
        let r = run_once(n, 64, 1, kind == "reliable-burst", 0, Duration::from_secs(600)).await;
        return if r.delivered >= 100.0 || n == 0 { Ok(()) } else { Err(format!("only {:.1}% arrived", r.delivered)) };
    }
    let nodes = mesh(2, 0).await;
    match kind {
        "rpc" => {
            nodes[1].serve("echo", |req| async move { Ok(req.payload) }).await.map_err(|e| e.to_string())?;
            let peer = nodes[1].id();
            for _ in 0..n {
                nodes[0]
                    .call(peer, "echo", crate::payload(64, 0), Duration::from_secs(2))
                    .await
                    .map_err(|e| e.to_string())?;
            }
        }
        "publish" | "reliable" => {
            let mut subs = vec![nodes[1].subscribe(TOPIC).await.map_err(|e| e.to_string())?];
            warm_up(&nodes[0], &mut subs).await;
            for i in 0..n {
                let p = nodes[0].publish(TOPIC, crate::payload(64, i as u64));
                let h = if kind == "reliable" { p.reliable() } else { p }.submit().await.map_err(|e| e.to_string())?;
                subs[0].recv().await.ok_or("subscription ended")?;
                h.await.map_err(|e| e.to_string())?;
            }
        }
        other => return Err(format!("unknown profile {other:?}: rpc, publish, reliable, burst or reliable-burst")),
    }
    close(nodes).await;
    Ok(())
}
