//! The MQTT baselines: a Mosquitto started by the bench on a free loopback port, and rumqttc
//! clients (TCP_NODELAY on) as tasks of the bench's tokio runtime.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, NetworkOptions, Packet, QoS};
use tokio::sync::mpsc;

use crate::raw::{pct_range, section_throughput, SECTION_RTT};
use crate::report::Row;
use crate::star::{SECTION_CPU, SECTION_ONE_WAY, SECTION_WIRE, TOPIC};
use crate::{Plan, SIZES};

/// Mosquitto QoS 0.
pub const QOS0: &str = "Mosquitto QoS 0";
/// Mosquitto QoS 1.
pub const QOS1: &str = "Mosquitto QoS 1";
/// Request/response through Mosquitto, QoS 0.
pub const RR_QOS0: &str = "MQTT req/resp via Mosquitto QoS 0";
/// Request/response through Mosquitto, QoS 1.
pub const RR_QOS1: &str = "MQTT req/resp via Mosquitto QoS 1";

/// A Mosquitto of the bench's own on a free loopback port, stopped when dropped.
pub struct Broker {
    child: Child,
    /// Its port on 127.0.0.1.
    pub port: u16,
    dir: std::path::PathBuf,
}

impl Broker {
    /// Starts Mosquitto, installing it with apt if it is missing; `Err` says why it cannot run.
    pub fn start() -> Result<Broker, String> {
        if !has_mosquitto() {
            eprintln!("[bench] mosquitto is missing; installing it with apt-get");
            let ok = Command::new("sh")
                .args(["-c", "DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto >/dev/null 2>&1 || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto >/dev/null 2>&1)"])
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if !ok || !has_mosquitto() {
                return Err("mosquitto is not installed and `apt-get install mosquitto` failed".into());
            }
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("no free port: {e}"))?
            .port();
        let dir = std::env::temp_dir().join(format!("starling-bench-mosquitto-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let conf = dir.join("mosquitto.conf");
        // Queues and in-flight windows large enough that QoS 1 is never silently dropped under load;
        // Nagle off on the broker's side as on the clients'.
        let text = format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 1000000\n\
             max_inflight_messages 1000\nset_tcp_nodelay true\npersistence false\n"
        );
        std::fs::write(&conf, text).map_err(|e| format!("writing {}: {e}", conf.display()))?;
        let child = Command::new(mosquitto_path())
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting mosquitto: {e}"))?;
        let broker = Broker { child, port, dir };
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if start.elapsed() > Duration::from_secs(10) {
                return Err("mosquitto did not listen within 10 s".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(broker)
    }

    /// CPU time the broker process has used so far.
    pub fn cpu(&self) -> Duration {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())) else {
            return Duration::ZERO;
        };
        // Fields after the command name (which is in parentheses): utime is the 12th, stime the 13th.
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let f: Vec<u64> = rest.split_whitespace().filter_map(|x| x.parse().ok()).collect();
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let ticks = f.get(10).copied().unwrap_or(0) + f.get(11).copied().unwrap_or(0);
        Duration::from_secs_f64(ticks as f64 / hz)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn mosquitto_path() -> &'static str {
    if std::path::Path::new("/usr/sbin/mosquitto").exists() {
        "/usr/sbin/mosquitto"
    } else {
        "mosquitto"
    }
}

fn has_mosquitto() -> bool {
    Command::new(mosquitto_path()).arg("-h").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok()
}

/// A connected rumqttc client whose event loop runs as a task; received payload lengths arrive on `rx`.
struct Client {
    client: AsyncClient,
    rx: mpsc::UnboundedReceiver<usize>,
    task: tokio::task::JoinHandle<()>,
}

/// What an event loop does with a received publication.
type OnPublish = Box<dyn FnMut(&AsyncClient, &rumqttc::Publish) + Send>;

fn options(id: &str, port: u16) -> (MqttOptions, NetworkOptions) {
    let mut o = MqttOptions::new(id, "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_max_packet_size(1 << 20, 1 << 20);
    o.set_inflight(1000);
    let mut n = NetworkOptions::new();
    n.set_tcp_nodelay(true);
    (o, n)
}

async fn connect(id: &str, port: u16, mut on_publish: Option<OnPublish>) -> Client {
    let (o, n) = options(id, port);
    let (client, mut el): (AsyncClient, EventLoop) = AsyncClient::new(o, 4096);
    el.set_network_options(n);
    let (tx, rx) = mpsc::unbounded_channel();
    let (up_tx, up_rx) = tokio::sync::oneshot::channel();
    let c2 = client.clone();
    let task = tokio::spawn(async move {
        let mut up = Some(up_tx);
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    if let Some(u) = up.take() {
                        let _ = u.send(());
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if let Some(f) = on_publish.as_mut() {
                        f(&c2, &p);
                    }
                    let _ = tx.send(p.payload.len());
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    let _ = tokio::time::timeout(Duration::from_secs(5), up_rx).await;
    Client { client, rx, task }
}

impl Client {
    async fn stop(self) {
        let _ = self.client.disconnect().await;
        let _ = tokio::time::timeout(Duration::from_secs(1), self.task).await;
    }
}

/// Publishes on `topic` from `from` until `to` has received something (bounded in time), then
/// drains what else arrived.
async fn warm_up(from: &AsyncClient, to: &mut Client, topic: &str, qos: QoS) {
    let limit = Instant::now() + Duration::from_secs(5);
    while Instant::now() < limit {
        let _ = from.publish(topic, qos, false, b"warm".to_vec()).await;
        if let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(100), to.rx.recv()).await {
            break;
        }
    }
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(20), to.rx.recv()).await {}
}

fn qos_of(q: u8) -> QoS {
    if q == 0 {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    }
}

fn unique(tag: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("bench-{tag}-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

fn skip_rows(section: &str, names: &[&str], why: &str) -> Vec<Row> {
    let mut rows = Vec::new();
    for name in names {
        for size in SIZES {
            rows.push(Row::skipped(section, name, Some(size), format!("MQTT comparison skipped: {why}")));
        }
    }
    rows
}

/// Request/response through the broker: the requester publishes on a request topic, a responder
/// client publishes the payload back on a reply topic.
pub async fn rtt(plan: &Plan, broker: Result<&Broker, &String>) -> Vec<Row> {
    let broker = match broker {
        Ok(b) => b,
        Err(why) => return skip_rows(SECTION_RTT, &[RR_QOS0, RR_QOS1], why),
    };
    let mut rows = Vec::new();
    for q in [0u8, 1] {
        let qos = qos_of(q);
        for size in SIZES {
            let mut samples = Vec::new();
            for _ in 0..plan.runs {
                let (req_topic, resp_topic) = (unique("req"), unique("resp"));
                let rt = resp_topic.clone();
                let responder = connect(
                    &unique("responder"),
                    broker.port,
                    Some(Box::new(move |c, p| {
                        let _ = c.try_publish(rt.clone(), qos, false, p.payload.clone());
                    })),
                )
                .await;
                let mut requester = connect(&unique("requester"), broker.port, None).await;
                let _ = responder.client.subscribe(req_topic.clone(), qos).await;
                let _ = requester.client.subscribe(resp_topic.clone(), qos).await;
                let c = requester.client.clone();
                warm_up(&c, &mut requester, &req_topic, qos).await;
                let msg = crate::payload(size, 0);
                for _ in 0..plan.iterations {
                    let start = Instant::now();
                    if requester.client.publish(req_topic.clone(), qos, false, msg.clone()).await.is_err() {
                        break;
                    }
                    match tokio::time::timeout(Duration::from_secs(1), requester.rx.recv()).await {
                        Ok(Some(_)) => samples.push(start.elapsed()),
                        _ => break,
                    }
                }
                requester.stop().await;
                responder.stop().await;
            }
            let name = if q == 0 { RR_QOS0 } else { RR_QOS1 };
            rows.push(Row::latency(SECTION_RTT, name, size, &mut samples));
        }
    }
    rows
}

/// One message at a time from a publisher client to a subscriber client through the broker.
pub async fn one_way(plan: &Plan, broker: Result<&Broker, &String>) -> Vec<Row> {
    let broker = match broker {
        Ok(b) => b,
        Err(why) => return skip_rows(SECTION_ONE_WAY, &[QOS0, QOS1], why),
    };
    let mut rows = Vec::new();
    for q in [0u8, 1] {
        let qos = qos_of(q);
        for size in SIZES {
            let mut samples = Vec::new();
            for _ in 0..plan.runs {
                let topic = unique("oneway");
                let publisher = connect(&unique("pub"), broker.port, None).await;
                let mut sub = connect(&unique("sub"), broker.port, None).await;
                let _ = sub.client.subscribe(topic.clone(), qos).await;
                warm_up(&publisher.client, &mut sub, &topic, qos).await;
                for i in 0..plan.iterations {
                    let msg = crate::payload(size, i as u64);
                    let start = Instant::now();
                    if publisher.client.publish(topic.clone(), qos, false, msg).await.is_err() {
                        break;
                    }
                    match tokio::time::timeout(Duration::from_secs(1), sub.rx.recv()).await {
                        Ok(Some(_)) => samples.push(start.elapsed()),
                        _ => break,
                    }
                }
                publisher.stop().await;
                sub.stop().await;
            }
            rows.push(Row::latency(SECTION_ONE_WAY, if q == 0 { QOS0 } else { QOS1 }, size, &mut samples));
        }
    }
    rows
}

struct RunResult {
    rate: f64,
    delivered: f64,
    cpu_per_msg: f64,
    wire_per_msg: f64,
}

/// `n` messages as fast as the client takes them, to `subs` subscribers. With `proxy`, clients
/// connect through a counting proxy instead of directly, and bytes per message are counted.
async fn run_once(
    broker: &Broker,
    n: usize,
    size: usize,
    subs: usize,
    q: u8,
    limit: Duration,
    count: bool,
) -> RunResult {
    let qos = qos_of(q);
    let proxy = if count { Some(CountingProxy::start(broker.port).await) } else { None };
    let port = proxy.as_ref().map(|p| p.port).unwrap_or(broker.port);
    let topic = unique("tput");
    let publisher = connect(&unique("pub"), port, None).await;
    let mut clients = Vec::new();
    for _ in 0..subs {
        let mut c = connect(&unique("sub"), port, None).await;
        let _ = c.client.subscribe(topic.clone(), qos).await;
        warm_up(&publisher.client, &mut c, &topic, qos).await;
        clients.push(c);
    }
    // Let the subscribers drain what earlier warm-ups sent them.
    for c in &mut clients {
        while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(20), c.rx.recv()).await {}
    }
    let bytes_before = proxy.as_ref().map(|p| p.bytes.load(Ordering::Relaxed)).unwrap_or(0);
    let cpu_before = crate::process_cpu() + broker.cpu();
    let start = Instant::now();
    let end = start + limit;
    let mut counters = Vec::new();
    let mut handles = Vec::new();
    for mut c in clients {
        counters.push(tokio::spawn(async move {
            let (mut got, mut last) = (0, Instant::now());
            while got < n && Instant::now() < end {
                match tokio::time::timeout(Duration::from_millis(500), c.rx.recv()).await {
                    Ok(Some(_)) => {
                        got += 1;
                        last = Instant::now();
                    }
                    _ => break,
                }
            }
            (got, last, c)
        }));
    }
    for i in 0..n {
        if Instant::now() > end
            || publisher.client.publish(topic.clone(), qos, false, crate::payload(size, i as u64)).await.is_err()
        {
            break;
        }
    }
    let (mut worst, mut last) = (usize::MAX, start);
    for c in counters {
        let (got, at, client) = c.await.expect("counter");
        worst = worst.min(got);
        last = last.max(at);
        handles.push(client);
    }
    let cpu = (crate::process_cpu() + broker.cpu()).saturating_sub(cpu_before);
    let bytes = proxy.as_ref().map(|p| p.bytes.load(Ordering::Relaxed)).unwrap_or(0) - bytes_before;
    publisher.stop().await;
    for c in handles {
        c.stop().await;
    }
    let secs = last.duration_since(start).as_secs_f64().max(1e-6);
    RunResult {
        rate: worst as f64 / secs,
        delivered: 100.0 * worst as f64 / n as f64,
        cpu_per_msg: cpu.as_secs_f64() * 1e6 / worst.max(1) as f64,
        wire_per_msg: bytes as f64 / worst.max(1) as f64,
    }
}

/// Throughput to `subs` subscribers at QoS 0 and 1 (and, with one subscriber, CPU per message,
/// the broker's CPU included).
pub async fn throughput(plan: &Plan, broker: Result<&Broker, &String>, subs: usize) -> Vec<Row> {
    let section = section_throughput(subs);
    let broker = match broker {
        Ok(b) => b,
        Err(why) => {
            let mut rows = skip_rows(&section, &[QOS0, QOS1], why);
            if subs == 1 {
                rows.extend(skip_rows(SECTION_CPU, &[QOS0, QOS1], why));
            }
            return rows;
        }
    };
    let mut rows = Vec::new();
    for q in [0u8, 1] {
        for size in SIZES {
            let n = plan.messages_for(size, plan.messages);
            let (mut rates, mut delivered, mut cpu) = (Vec::new(), Vec::new(), Vec::new());
            for _ in 0..plan.runs {
                let r = run_once(broker, n, size, subs, q, plan.run_limit, false).await;
                rates.push(r.rate);
                delivered.push(r.delivered);
                cpu.push(r.cpu_per_msg);
            }
            let name = if q == 0 { QOS0 } else { QOS1 };
            let note = format!("{n} sent per run, slowest subscriber got {}", pct_range(&delivered));
            rows.push(Row::rate(&section, name, Some(size), "msg/s", &mut rates).note(note));
            if subs == 1 {
                rows.push(Row::cost(SECTION_CPU, name, Some(size), "µs/msg", &mut cpu));
            }
        }
    }
    rows
}

/// Bytes both TCP connections (publisher's and subscriber's, both directions) carried per
/// delivered message, counted by a proxy in front of the broker.
pub async fn wire_bytes(plan: &Plan, broker: Result<&Broker, &String>) -> Vec<Row> {
    let broker = match broker {
        Ok(b) => b,
        Err(why) => return skip_rows(SECTION_WIRE, &[QOS0, QOS1], why),
    };
    let mut rows = Vec::new();
    for q in [0u8, 1] {
        for size in SIZES {
            let n = plan.messages_for(size, 1000).min(1000);
            let r = run_once(broker, n, size, 1, q, plan.run_limit, true).await;
            let note = format!("{n} messages, topic {} B, payload included, TCP/IP headers not", TOPIC.len());
            let name = if q == 0 { QOS0 } else { QOS1 };
            rows.push(Row::value(SECTION_WIRE, name, Some(size), "B", r.wire_per_msg, None).note(note));
        }
    }
    rows
}

/// A TCP proxy to the broker that counts every byte it forwards, both ways.
struct CountingProxy {
    port: u16,
    bytes: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl CountingProxy {
    async fn start(broker: u16) -> CountingProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a proxy port");
        let port = listener.local_addr().expect("address").port();
        let bytes = Arc::new(AtomicU64::new(0));
        let counted = bytes.clone();
        let task = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let Ok(outbound) = tokio::net::TcpStream::connect(("127.0.0.1", broker)).await else { continue };
                let _ = inbound.set_nodelay(true);
                let _ = outbound.set_nodelay(true);
                let (ri, wi) = inbound.into_split();
                let (ro, wo) = outbound.into_split();
                tokio::spawn(pipe(ri, wo, counted.clone()));
                tokio::spawn(pipe(ro, wi, counted.clone()));
            }
        });
        CountingProxy { port, bytes, task }
    }
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn pipe(mut from: tokio::net::tcp::OwnedReadHalf, mut to: tokio::net::tcp::OwnedWriteHalf, n: Arc<AtomicU64>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(len) => {
                n.fetch_add(len as u64, Ordering::Relaxed);
                if to.write_all(&buf[..len]).await.is_err() {
                    return;
                }
            }
        }
    }
}
