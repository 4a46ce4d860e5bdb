//! The gateway against a real Mosquitto started by the test on a free loopback port, with
//! `mosquitto_sub` and `mosquitto_pub` as the MQTT side and a Starling node as the mesh side.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use starling::runtime::{Node, NodeBuilder};
use starling_integration::process::spawn_ready;
use starling_integration::{isolated_mesh, random_key};

const BIN: &str = env!("CARGO_BIN_EXE_starling");

/// A Mosquitto of the test's own, stopped when dropped.
struct Broker {
    child: Child,
    port: u16,
    conf: std::path::PathBuf,
    _dir: TempDir,
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Broker {
    fn start(tag: &str) -> Broker {
        Self::start_with(tag, |_| String::new())
    }

    /// Starts a broker whose configuration gets `extra(dir)` appended (for TLS files in `dir`).
    fn start_with(tag: &str, extra: impl FnOnce(&std::path::Path) -> String) -> Broker {
        Self::start_on(tag, free_tcp_port(), extra)
    }

    /// [`Broker::start_with`] on a given port.
    fn start_on(tag: &str, port: u16, extra: impl FnOnce(&std::path::Path) -> String) -> Broker {
        let dir = std::env::temp_dir().join(format!("starling-mqtt-{tag}-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let conf = dir.join("mosquitto.conf");
        let store = dir.display();
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 100000\n\
                 persistence true\npersistence_location {store}/\nuser root\n{}",
                extra(&dir)
            ),
        )
        .unwrap();
        let child = Self::spawn(&conf, port);
        Broker { child, port, conf, _dir: TempDir(dir) }
    }

    fn spawn(conf: &std::path::Path, port: u16) -> Child {
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto must be installed (the test command installs it)");
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(start.elapsed() < Duration::from_secs(10), "mosquitto did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        child
    }

    /// Stops the broker cleanly (it saves sessions and retained messages) and waits for it.
    fn stop(&mut self) {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
        let _ = self.child.wait();
    }

    fn restart(&mut self) {
        self.child = Self::spawn(&self.conf, self.port);
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `starling gateway` process, killed when dropped.
struct Gateway(Child);

impl Gateway {
    fn start(key: &std::path::Path, mesh: (std::net::Ipv4Addr, u16), broker: u16) -> Gateway {
        Self::start_with(key, mesh, broker, &[])
    }

    /// [`Gateway::start`] with more flags, such as `--rpc`.
    fn start_with(key: &std::path::Path, mesh: (std::net::Ipv4Addr, u16), broker: u16, extra: &[&str]) -> Gateway {
        let broker = format!("mqtt://127.0.0.1:{broker}");
        let mut args = vec!["--key", key.to_str().unwrap(), "--broker", &broker];
        args.extend_from_slice(extra);
        Self::spawn(&args, mesh)
    }

    /// Runs `starling gateway` on `mesh` named `gw` with `args`, once it bridges.
    fn spawn(args: &[&str], mesh: (std::net::Ipv4Addr, u16)) -> Gateway {
        let mut child = Self::command(args);
        child.args(["--group", &mesh.0.to_string(), "--port", &mesh.1.to_string(), "--name", "gw"]);
        Gateway(spawn_ready(&mut child, "bridging mesh"))
    }

    /// `starling gateway ARGS`, with no settings from the environment.
    fn command(args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.arg("gateway").args(args).stdout(Stdio::null());
        for var in ["STARLING_KEY", "STARLING_KEY_FILE", "STARLING_BROKER", "STARLING_GROUP", "STARLING_PORT"] {
            c.env_remove(var);
        }
        c.env_remove("STARLING_INTERFACE").env_remove("STARLING_GATEWAY_CONFIG");
        c
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A TCP port on loopback that nothing listened on a moment ago.
fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn key_file(dir: &std::path::Path, key: &starling::NetworkKey) -> std::path::PathBuf {
    let path = dir.join("net.key");
    let hex: String = key.as_bytes().iter().map(|b| format!("{b:02x}")).collect();
    std::fs::write(&path, hex).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    path
}

fn payloads(n: usize) -> Vec<Vec<u8>> {
    let mut x = 0x1234_5678_9abc_def0u64;
    (0..n)
        .map(|i| {
            let len = if i == 0 { 0 } else { (i * 37) % 300 };
            (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect()
        })
        .collect()
}

async fn mesh_node(key: &starling::NetworkKey, mesh: (std::net::Ipv4Addr, u16), name: &str) -> Node {
    NodeBuilder::new(key.clone()).name(name).group(mesh.0).port(mesh.1).open().await.unwrap()
}

async fn wait_for_peer(node: &Node, name: &str) {
    let end = Instant::now() + Duration::from_secs(10);
    while !node.peers().await.unwrap().iter().any(|p| p.name == name) {
        assert!(Instant::now() < end, "{name} never appeared on the mesh");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_payloads_cross_both_ways_byte_for_byte_with_qos1() {
    let broker = Broker::start("both");
    let mesh = isolated_mesh();
    let key = random_key();
    let dir = TempDir(std::env::temp_dir().join(format!("starling-gw-{}-{}", std::process::id(), mesh.1)));
    std::fs::create_dir_all(&dir.0).unwrap();
    let key_path = key_file(&dir.0, &key);
    let _gw = Gateway::start(&key_path, mesh, broker.port);
    let sensor = mesh_node(&key, mesh, "sensor").await;
    wait_for_peer(&sensor, "gw").await;
    let data = payloads(256);

    // Mesh to MQTT: 256 reliable messages, seen by mosquitto_sub as QoS 1, hex for the compare.
    let sub = Command::new("mosquitto_sub")
        .args(["-p", &broker.port.to_string(), "-q", "1", "-t", "starling/bin/#", "-C", "256", "-F", "%t %q %x"])
        .args(["-W", "30"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await; // mosquitto_sub is subscribed
    for (i, p) in data.iter().enumerate() {
        sensor.publish(&format!("bin/{i}"), p.clone()).reliable().await.unwrap();
    }
    let out = tokio::task::spawn_blocking(move || sub.wait_with_output().unwrap()).await.unwrap();
    let lines: Vec<String> = String::from_utf8(out.stdout).unwrap().lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), 256);
    for (i, p) in data.iter().enumerate() {
        let hex: String = p.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(lines[i].trim_end(), format!("starling/bin/{i} 1 {hex}").trim_end(), "message {i}");
    }

    // MQTT to mesh: mosquitto_pub with QoS 1, binary files, empty included.
    let mut msub = sensor.subscribe("in/#").await.unwrap();
    for (i, p) in data.iter().enumerate().take(64) {
        let file = dir.0.join(format!("p{i}.bin"));
        std::fs::write(&file, p).unwrap();
        let ok = Command::new("mosquitto_pub")
            .args(["-p", &broker.port.to_string(), "-q", "1", "-t", &format!("starling/in/{i}"), "-f"])
            .arg(&file)
            .status()
            .unwrap();
        assert!(ok.success());
    }
    for (i, p) in data.iter().enumerate().take(64) {
        let m = tokio::time::timeout(Duration::from_secs(10), msub.recv()).await.unwrap().unwrap();
        assert_eq!((m.topic.as_str(), &m.payload), (format!("in/{i}").as_str(), p), "message {i}");
        assert!(m.seq.is_some(), "QoS 1 is reliable on the mesh");
    }
    // nothing bridged twice, nothing looped back
    assert!(tokio::time::timeout(Duration::from_millis(500), msub.recv()).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn availability_is_retained_and_follows_nodes() {
    let broker = Broker::start("avail");
    let mesh = isolated_mesh();
    let key = random_key();
    let dir = TempDir(std::env::temp_dir().join(format!("starling-gwa-{}-{}", std::process::id(), mesh.1)));
    std::fs::create_dir_all(&dir.0).unwrap();
    let _gw = Gateway::start(&key_file(&dir.0, &key), mesh, broker.port);
    let node = mesh_node(&key, mesh, "lamp").await;
    wait_for_peer(&node, "gw").await;
    let id = node.id();
    let status = format!("starling/$nodes/{id}/status");
    let read = |topic: String| {
        let port = broker.port.to_string();
        move || {
            let out = Command::new("mosquitto_sub")
                .args(["-p", &port, "-t", &topic, "-C", "1", "-W", "5", "-F", "%p %r"])
                .output()
                .unwrap();
            String::from_utf8(out.stdout).unwrap().trim().to_owned()
        }
    };
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let got = tokio::task::spawn_blocking(read(status.clone())).await.unwrap();
        if got == "online 1" {
            break;
        }
        if Instant::now() >= end {
            let all = Command::new("mosquitto_sub")
                .args(["-p", &broker.port.to_string(), "-t", "#", "-W", "2", "-v"])
                .output()
                .unwrap();
            panic!(
                "retained online never appeared: {got:?}; peers of lamp: {:?}; broker has: {}",
                node.peers().await.unwrap(),
                String::from_utf8_lossy(&all.stdout)
            );
        }
    }
    // the gateway's counters, retained JSON
    let stats = tokio::task::spawn_blocking(read("starling/$gateway/+/stats".into())).await.unwrap();
    let json: serde_json::Value = serde_json::from_str(stats.trim_end_matches(" 1")).unwrap();
    assert_eq!(json["active"], true, "{json}");
    assert!(json["bridge"]["connects"].is_u64() && json["bridge"]["to_mqtt"].is_u64(), "{json}");
    assert!(json["mesh"]["rx_datagrams"].is_u64(), "{json}");

    node.close().await.unwrap();
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let got = tokio::task::spawn_blocking(read(status.clone())).await.unwrap();
        if got == "offline 1" {
            break;
        }
        assert!(Instant::now() < end, "retained offline never appeared: {got:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

struct Setup {
    broker: Broker,
    mesh: (std::net::Ipv4Addr, u16),
    key: starling::NetworkKey,
    dir: TempDir,
}

impl Setup {
    fn new(tag: &str) -> Setup {
        let broker = Broker::start(tag);
        let mesh = isolated_mesh();
        let dir = TempDir(std::env::temp_dir().join(format!("starling-gw-{tag}-{}-{}", std::process::id(), mesh.1)));
        std::fs::create_dir_all(&dir.0).unwrap();
        Setup { broker, mesh, key: random_key(), dir }
    }

    fn gateway(&self) -> Gateway {
        self.gateway_with(&[])
    }

    fn gateway_with(&self, extra: &[&str]) -> Gateway {
        Gateway::start_with(&key_file(&self.dir.0, &self.key), self.mesh, self.broker.port, extra)
    }

    fn mqtt(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.args(["-p", &self.broker.port.to_string()]);
        c
    }
}

/// Counts what `mosquitto_sub` sees on `filter` while `act` runs, waiting `settle` after it.
async fn seen_on_mqtt<F: std::future::Future<Output = ()>>(
    s: &Setup,
    filter: &str,
    settle: u64,
    act: F,
) -> Vec<String> {
    let sub = s
        .mqtt("mosquitto_sub")
        .args(["-q", "1", "-t", filter, "-F", "%t %p", "-W", &settle.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    act.await;
    let out = tokio::task::spawn_blocking(move || sub.wait_with_output().unwrap()).await.unwrap();
    String::from_utf8(out.stdout).unwrap().lines().map(str::to_owned).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_deliver_once_and_one_takes_over_when_the_other_dies() {
    let s = Setup::new("two");
    let mut gw1 = s.gateway();
    let _gw2 = s.gateway();
    let node = mesh_node(&s.key, s.mesh, "sensor").await;
    let mut inbound = node.subscribe("cmd/#").await.unwrap();
    let end = Instant::now() + Duration::from_secs(10);
    while node.peers().await.unwrap().iter().filter(|p| p.name == "gw").count() < 2 {
        assert!(Instant::now() < end, "both gateways on the mesh");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await; // the gateways have heard each other

    // Reliable while both gateways live; best effort after one is killed, because a reliable
    // publication rightly waits for the dead gateway's acknowledgement until it times out.
    let round = |tag: &'static str, reliable: bool| {
        let node = node.clone();
        async move {
            for i in 0..20 {
                let p = node.publish(&format!("out/{tag}/{i}"), format!("{i}"));
                if reliable {
                    p.reliable().await.unwrap();
                } else {
                    p.await.unwrap();
                }
            }
        }
    };
    let seen = seen_on_mqtt(&s, "starling/out/#", 4, round("a", true)).await;
    assert_eq!(seen.len(), 20, "each mesh message once on MQTT: {seen:?}");
    for i in 0..20 {
        let ok = s.mqtt("mosquitto_pub").args(["-q", "1", "-t", &format!("starling/cmd/{i}"), "-m", "x"]).status();
        assert!(ok.unwrap().success());
    }
    for i in 0..20 {
        let m = tokio::time::timeout(Duration::from_secs(5), inbound.recv()).await.unwrap().unwrap();
        assert_eq!(m.topic, format!("cmd/{i}"));
    }
    assert!(tokio::time::timeout(Duration::from_millis(800), inbound.recv()).await.is_err(), "each MQTT message once");

    // One gateway dies: within 5 s the other bridges, still once.
    gw1.0.kill().unwrap();
    let _ = gw1.0.wait();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let seen = seen_on_mqtt(&s, "starling/out/#", 4, round("b", false)).await;
    assert_eq!(seen.len(), 20, "after the failover: {seen:?}");
    for i in 0..5 {
        let ok =
            s.mqtt("mosquitto_pub").args(["-q", "1", "-t", &format!("starling/cmd/after/{i}"), "-m", "y"]).status();
        assert!(ok.unwrap().success());
    }
    for i in 0..5 {
        let m = tokio::time::timeout(Duration::from_secs(5), inbound.recv()).await.unwrap().unwrap();
        assert_eq!(m.topic, format!("cmd/after/{i}"));
    }
    assert!(tokio::time::timeout(Duration::from_millis(800), inbound.recv()).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_from_mqtt5_request_response_and_the_311_convention() {
    let s = Setup::new("rpc");
    let _gw = s.gateway_with(&["--rpc", "svc/*", "--rpc", "dup/*", "--rpc", "00000000deadbeef/*"]);
    let node = mesh_node(&s.key, s.mesh, "svc").await;
    let dups = [mesh_node(&s.key, s.mesh, "dup").await, mesh_node(&s.key, s.mesh, "dup").await];
    node.serve("echo", |req: starling::runtime::Request| async move { Ok(req.payload) }).await.unwrap();
    node.serve("fail", |_req: starling::runtime::Request| async move { Err(b"broken".to_vec()) }).await.unwrap();
    wait_for_peer(&node, "gw").await;
    tokio::time::sleep(Duration::from_millis(300)).await; // the gateway sees svc up too

    let rr = |topic: String, payload: &'static str| {
        let mut c = s.mqtt("mosquitto_rr");
        c.args(["-V", "mqttv5", "-t", &topic, "-e", "starling/$reply/1", "-m", payload, "-W", "5", "-F", "%p|%P"]);
        move || c.output().unwrap()
    };
    let out = tokio::task::spawn_blocking(rr("starling/$rpc/svc/echo".into(), "ping by name")).await.unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ping by name|");
    let by_id = format!("starling/$rpc/{}/echo", node.id());
    let out = tokio::task::spawn_blocking(rr(by_id, "ping by id")).await.unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ping by id|");
    let out = tokio::task::spawn_blocking(rr("starling/$rpc/svc/fail".into(), "x")).await.unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "|starling-error:the handler failed: broken");
    let out = tokio::task::spawn_blocking(rr("starling/$rpc/svc/nope".into(), "x")).await.unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("starling-error:the node serves no such method"));
    // A name two nodes carry is ambiguous, not "no node"; an id nobody has fails at once, not after the timeout.
    let out = tokio::task::spawn_blocking(rr("starling/$rpc/dup/echo".into(), "x")).await.unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("2 nodes are named 'dup'; call one by id"), "{out:?}");
    let asked = Instant::now();
    let out = tokio::task::spawn_blocking(rr("starling/$rpc/00000000deadbeef/echo".into(), "x")).await.unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("no node with id 00000000deadbeef is up"), "{out:?}");
    assert!(asked.elapsed() < Duration::from_secs(3), "an unknown id took {:?}", asked.elapsed());
    drop(dups);

    // MQTT 3.1.1: a transaction id level, the reply on .../<txid>/reply
    let seen = seen_on_mqtt(&s, "starling/$rpc/svc/echo/tx-42/+", 3, async {
        let mut pubber = s.mqtt("mosquitto_pub");
        pubber.args(["-V", "mqttv311", "-t", "starling/$rpc/svc/echo/tx-42", "-m", "v311"]);
        assert!(pubber.status().unwrap().success());
    })
    .await;
    assert_eq!(seen, vec!["starling/$rpc/svc/echo/tx-42/reply v311".to_owned()]);
    // A txid that merely ends like an answer level is a txid like any other.
    for tx in ["no-error", "autoreply"] {
        let seen = seen_on_mqtt(&s, &format!("starling/$rpc/svc/echo/{tx}/+"), 3, async {
            let mut pubber = s.mqtt("mosquitto_pub");
            pubber.args(["-V", "mqttv311", "-t", &format!("starling/$rpc/svc/echo/{tx}"), "-m", tx]);
            assert!(pubber.status().unwrap().success());
        })
        .await;
        assert_eq!(seen, vec![format!("starling/$rpc/svc/echo/{tx}/reply {tx}")], "txid {tx}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_mid_stream_loses_nothing_and_availability_recovers() {
    let mut s = Setup::new("restart");
    let _gw = s.gateway();
    let node = mesh_node(&s.key, s.mesh, "sensor").await;
    wait_for_peer(&node, "gw").await;
    // A persistent MQTT session that will want the messages sent while the broker was down.
    let ok = s.mqtt("mosquitto_sub").args(["-c", "-i", "keeper", "-q", "1", "-t", "starling/out/#", "-E"]).status();
    assert!(ok.unwrap().success());

    s.broker.stop();
    for i in 0..10 {
        node.publish(&format!("out/{i}"), format!("during outage {i}")).reliable().await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    s.broker.restart();

    let mut keeper = s.mqtt("mosquitto_sub");
    keeper.args(["-c", "-i", "keeper", "-q", "1", "-t", "starling/out/#", "-C", "10", "-W", "20", "-F", "%t %p"]);
    let out = tokio::task::spawn_blocking(move || keeper.output().unwrap()).await.unwrap();
    let lines: Vec<String> = String::from_utf8(out.stdout).unwrap().lines().map(str::to_owned).collect();
    let want: Vec<String> = (0..10).map(|i| format!("starling/out/{i} during outage {i}")).collect();
    assert_eq!(lines, want, "every reliable message of the outage, in order, once");

    let status = format!("starling/$nodes/{}/status", node.id());
    let mut read = s.mqtt("mosquitto_sub");
    read.args(["-t", &status, "-C", "1", "-W", "5", "-F", "%p %r"]);
    let out = tokio::task::spawn_blocking(move || read.output().unwrap()).await.unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "online 1", "availability after the restart");
}

/// Makes a CA and a server certificate for 127.0.0.1 in `dir` with the openssl command.
fn make_certs(dir: &std::path::Path) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl").args(args).current_dir(dir).output().expect("openssl");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    run(&["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2"]
        .into_iter()
        .chain(["-subj", "/CN=starling test CA"])
        .collect::<Vec<_>>());
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    std::fs::write(dir.join("ext.cnf"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridges_over_tls_to_a_broker_with_its_own_ca() {
    let certs = TempDir(std::env::temp_dir().join(format!("starling-tls-{}", std::process::id())));
    std::fs::create_dir_all(&certs.0).unwrap();
    make_certs(&certs.0);
    let c = certs.0.display().to_string();
    let broker =
        Broker::start_with("tls", |_| format!("cafile {c}/ca.pem\ncertfile {c}/server.pem\nkeyfile {c}/server.key\n"));
    let mesh = isolated_mesh();
    let key = random_key();
    let key_path = key_file(&certs.0, &key);
    let broker_url = format!("mqtts://127.0.0.1:{}", broker.port);
    let ca = format!("{c}/ca.pem");
    let _gw = Gateway::spawn(&["--key", key_path.to_str().unwrap(), "--broker", &broker_url, "--ca", &ca], mesh);
    let node = mesh_node(&key, mesh, "tls-sensor").await;
    wait_for_peer(&node, "gw").await;
    let mut sub = Command::new("mosquitto_sub")
        .args(["-p", &broker.port.to_string(), "--cafile", &format!("{c}/ca.pem"), "-h", "127.0.0.1"])
        .args(["-t", "starling/tls/#", "-C", "1", "-W", "10", "-F", "%t %p"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Publish until the TLS subscriber has one (the gateway's TLS session may still be starting).
    let end = Instant::now() + Duration::from_secs(8);
    while sub.try_wait().unwrap().is_none() && Instant::now() < end {
        node.publish("tls/reading", "over tls").await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let out = tokio::task::spawn_blocking(move || sub.wait_with_output().unwrap()).await.unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "starling/tls/reading over tls");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_broker_the_gateway_runs_its_own() {
    let mesh = isolated_mesh();
    let key = random_key();
    let dir = TempDir(std::env::temp_dir().join(format!("starling-own-{}-{}", std::process::id(), mesh.1)));
    std::fs::create_dir_all(&dir.0).unwrap();
    let port = free_tcp_port();
    let key_path = key_file(&dir.0, &key);
    let gw = Gateway::spawn(&["--key", key_path.to_str().unwrap(), "--listen", &format!("127.0.0.1:{port}")], mesh);
    let node = mesh_node(&key, mesh, "own").await;
    wait_for_peer(&node, "gw").await;
    let mut sub = Command::new("mosquitto_sub")
        .args(["-p", &port.to_string(), "-t", "starling/own/#", "-C", "1", "-W", "10", "-F", "%t %p"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let end = Instant::now() + Duration::from_secs(8);
    while sub.try_wait().unwrap().is_none() && Instant::now() < end {
        node.publish("own/x", "via its own broker").await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let out = sub.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "starling/own/x via its own broker");
    // Stopped as a service manager would: its broker ends with it.
    let mut gw = gw;
    assert!(Command::new("kill").args(["-TERM", &gw.0.id().to_string()]).status().unwrap().success());
    let _ = gw.0.wait();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err(), "its broker ends with it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mappings_set_qos_and_retain_per_filter() {
    let s = Setup::new("map");
    let conf = s.dir.0.join("gw.toml");
    let key_path = key_file(&s.dir.0, &s.key);
    std::fs::write(
        &conf,
        format!(
            "key_file = \"{}\"\nbroker = \"mqtt://127.0.0.1:{}\"\n\
             [[mapping]]\nout = \"state/#\"\nqos = 1\nretain = true\n\
             [[mapping]]\nout = \"chatter/#\"\nqos = 0\n",
            key_path.display(),
            s.broker.port
        ),
    )
    .unwrap();
    let _gw = Gateway::spawn(&["--config", conf.to_str().unwrap()], s.mesh);
    let node = mesh_node(&s.key, s.mesh, "mapped").await;
    wait_for_peer(&node, "gw").await;
    let seen = seen_on_mqtt(&s, "starling/#", 3, async {
        node.publish("state/door", "open").await.unwrap(); // best effort, mapped to QoS 1 + retain
        node.publish("chatter/x", "hi").reliable().await.unwrap(); // reliable, mapped to QoS 0
        node.publish("other/y", "not mapped").await.unwrap(); // not bridged at all
    })
    .await;
    let bridged: Vec<&String> = seen.iter().filter(|l| !l.contains("$gateway") && !l.contains("$nodes")).collect();
    assert_eq!(bridged, ["starling/state/door open", "starling/chatter/x hi"], "{seen:?}");
    // QoS and retain as mapped: a late subscriber gets the retained state only, at QoS 1
    let mut late = s.mqtt("mosquitto_sub");
    late.args(["-q", "1", "-t", "starling/state/#", "-t", "starling/chatter/#", "-W", "2", "-F", "%t %q %r %p"]);
    let out = tokio::task::spawn_blocking(move || late.output().unwrap()).await.unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "starling/state/door 1 1 open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_stats_show_each_nodes_counters_and_the_bridges() {
    let s = Setup::new("stats");
    let _gw = s.gateway();
    let node = mesh_node(&s.key, s.mesh, "counted").await;
    wait_for_peer(&node, "gw").await;
    let key_path = key_file(&s.dir.0, &s.key);
    let mut nodes = Command::new(BIN);
    nodes.args(["nodes", "--key", key_path.to_str().unwrap(), "--stats", "--json", "--wait", "1s"]);
    nodes.args(["--group", &s.mesh.0.to_string(), "--port", &s.mesh.1.to_string()]);
    let out = tokio::task::spawn_blocking(move || nodes.output().unwrap()).await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let list = v["nodes"].as_array().unwrap();
    let find = |name: &str| list.iter().find(|n| n["name"] == name).unwrap_or_else(|| panic!("{name} in {v}"));
    let gw = find("gw");
    assert!(gw["stats"]["rx_accepted"].as_u64().unwrap() >= 1, "{gw}");
    assert!(gw["stats"]["bridge.connects"].as_u64().unwrap() >= 1, "{gw}");
    assert_eq!(gw["stats"]["bridge.active"], 1);
    let counted = find("counted");
    assert!(counted["stats"]["tx_datagrams"].as_u64().unwrap() >= 1, "{counted}");
    assert!(counted["stats"].get("bridge.connects").is_none(), "not a gateway");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_mqtt_payloads_are_refused_and_counted() {
    let s = Setup::new("big");
    let _gw = s.gateway();
    let node = mesh_node(&s.key, s.mesh, "small").await;
    let mut sub = node.subscribe("big/#").await.unwrap();
    wait_for_peer(&node, "gw").await;
    let big = s.dir.0.join("big.bin");
    std::fs::write(&big, vec![7u8; 70_000]).unwrap();
    let ok = s.mqtt("mosquitto_pub").args(["-q", "1", "-t", "starling/big/blob", "-f"]).arg(&big).status();
    assert!(ok.unwrap().success());
    let fits = s.dir.0.join("fits.bin");
    std::fs::write(&fits, vec![8u8; 60_000]).unwrap();
    let ok = s.mqtt("mosquitto_pub").args(["-q", "1", "-t", "starling/big/fits", "-f"]).arg(&fits).status();
    assert!(ok.unwrap().success());
    let m = tokio::time::timeout(Duration::from_secs(5), sub.recv()).await.unwrap().unwrap();
    assert_eq!((m.topic.as_str(), m.payload.len()), ("big/fits", 60_000), "the 70 000-byte one never reached the mesh");
    let gw = node.peers().await.unwrap().into_iter().find(|p| p.name == "gw").unwrap().id;
    let end = Instant::now() + Duration::from_secs(3);
    loop {
        let stats =
            node.call(gw, starling_gateway::bridge::STATS_METHOD, Vec::new(), Duration::from_secs(2)).await.unwrap();
        let stats = String::from_utf8(stats).unwrap();
        if stats.lines().any(|l| l == "refused 1") {
            break;
        }
        assert!(Instant::now() < end, "the refusal is counted: {stats}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The gateway's bridge counters (`$stats.bridge`), asked from a mesh node.
async fn bridge_stats(node: &Node) -> std::collections::BTreeMap<String, u64> {
    let gw = node.peers().await.unwrap().into_iter().find(|p| p.name == "gw").expect("gw on the mesh").id;
    let text = node.call(gw, starling_gateway::bridge::STATS_METHOD, Vec::new(), Duration::from_secs(2)).await.unwrap();
    String::from_utf8(text)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once(' ').and_then(|(k, v)| Some((k.to_owned(), v.parse().ok()?))))
        .collect()
}

/// Waits (at most 5 s) until the bridge counters satisfy `want`.
async fn wait_for_stats(node: &Node, what: &str, want: impl Fn(&std::collections::BTreeMap<String, u64>) -> bool) {
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let stats = bridge_stats(node).await;
        if want(&stats) {
            return;
        }
        assert!(Instant::now() < end, "{what}: {stats:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Serves `method` on `node`, echoing the request and counting the calls that reach it.
async fn counted_echo(node: &Node, method: &str) -> std::sync::Arc<std::sync::atomic::AtomicUsize> {
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let c = count.clone();
    node.serve(method, move |req: starling::runtime::Request| {
        c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        async move { Ok(req.payload) }
    })
    .await
    .unwrap();
    count
}

/// `mosquitto_rr` (MQTT 5) on `topic` with its reply on `starling/$reply/<tag>`: `payload|properties`.
async fn call_from_mqtt5(s: &Setup, topic: &str, tag: &str, payload: &str) -> String {
    let mut c = s.mqtt("mosquitto_rr");
    c.args(["-V", "mqttv5", "-t", topic, "-e", &format!("starling/$reply/{tag}"), "-m", payload]);
    c.args(["-W", "5", "-F", "%p|%P"]);
    let out = tokio::task::spawn_blocking(move || c.output().unwrap()).await.unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_from_mqtt_is_off_unless_configured() {
    let s = Setup::new("rpcoff");
    let _gw = s.gateway();
    let node = mesh_node(&s.key, s.mesh, "svc").await;
    let echo = counted_echo(&node, "echo").await;
    wait_for_peer(&node, "gw").await;
    tokio::time::sleep(Duration::from_millis(300)).await; // the gateway sees svc up too

    let got = call_from_mqtt5(&s, "starling/$rpc/svc/echo", "off", "ping").await;
    assert!(got.starts_with("|starling-error:refused by the gateway: calls from MQTT are off"), "{got}");
    // MQTT 3.1.1: the refusal on .../<txid>/error
    let seen = seen_on_mqtt(&s, "starling/$rpc/svc/echo/tx-1/+", 3, async {
        let mut pubber = s.mqtt("mosquitto_pub");
        pubber.args(["-V", "mqttv311", "-t", "starling/$rpc/svc/echo/tx-1", "-m", "ping"]);
        assert!(pubber.status().unwrap().success());
    })
    .await;
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(seen[0].starts_with("starling/$rpc/svc/echo/tx-1/error refused by the gateway"), "{seen:?}");
    assert_eq!(echo.load(std::sync::atomic::Ordering::SeqCst), 0, "no call reached the node");
    wait_for_stats(&node, "both refusals counted, no call made", |st| st["rpc_refused"] == 2 && st["rpc_calls"] == 0)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_answers_only_under_reply_and_calls_only_what_the_policy_allows() {
    let s = Setup::new("rpcpol");
    let _gw = s.gateway_with(&["--rpc", "svc/echo", "--rpc", "*/$info"]);
    let node = mesh_node(&s.key, s.mesh, "svc").await;
    let echo = counted_echo(&node, "echo").await;
    let relay = counted_echo(&node, "relay.set").await;
    let mut door = node.subscribe("home/door/set").await.unwrap();
    wait_for_peer(&node, "gw").await;
    tokio::time::sleep(Duration::from_millis(300)).await; // the gateway sees svc up too
    let calls = |c: &std::sync::atomic::AtomicUsize| c.load(std::sync::atomic::Ordering::SeqCst);

    // A permitted call whose MQTT 5 response topic is a command topic, outside the prefix or
    // under it: nothing is published there, and the call is not made.
    let seen = seen_on_mqtt(&s, "#", 3, async {
        for rt in ["home/door/set", "starling/home/door/set"] {
            let mut pubber = s.mqtt("mosquitto_pub");
            pubber.args(["-V", "mqttv5", "-t", "starling/$rpc/svc/echo", "-m", "OPEN"]);
            pubber.args(["-D", "publish", "response-topic", rt, "-D", "publish", "correlation-data", "c1"]);
            assert!(pubber.status().unwrap().success());
        }
    })
    .await;
    let hijacked: Vec<&String> = seen.iter().filter(|l| l.contains("home/door/set")).collect();
    assert!(hijacked.is_empty(), "the gateway answered on a topic the client chose: {seen:?}");
    assert_eq!(calls(&echo), 0, "a call with a refused response topic is not made");
    assert!(tokio::time::timeout(Duration::from_millis(200), door.recv()).await.is_err(), "nothing on the mesh");

    // The same call with its reply under starling/$reply/: end to end.
    assert_eq!(call_from_mqtt5(&s, "starling/$rpc/svc/echo", "ok", "ping").await, "ping|");
    assert_eq!(calls(&echo), 1);
    // `*/$info` allows the built-in $info of any node, and only that `$` method.
    let info = call_from_mqtt5(&s, "starling/$rpc/svc/$info", "info", "").await;
    assert!(!info.is_empty() && !info.contains("starling-error"), "{info}");
    let stats = call_from_mqtt5(&s, "starling/$rpc/svc/$stats", "stats", "").await;
    assert!(stats.contains("starling-error:refused by the gateway"), "{stats}");

    // A method outside the allowlist: refused, seen by the client, never reaching the handler.
    let got = call_from_mqtt5(&s, "starling/$rpc/svc/relay.set", "relay", "OPEN").await;
    assert_eq!(
        got,
        "|starling-error:refused by the gateway: 'svc/relay.set' is not among the calls allowed from MQTT (--rpc)"
    );
    let seen = seen_on_mqtt(&s, "starling/$rpc/svc/relay.set/tx-9/+", 3, async {
        let mut pubber = s.mqtt("mosquitto_pub");
        pubber.args(["-V", "mqttv311", "-t", "starling/$rpc/svc/relay.set/tx-9", "-m", "OPEN"]);
        assert!(pubber.status().unwrap().success());
    })
    .await;
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(seen[0].starts_with("starling/$rpc/svc/relay.set/tx-9/error refused by the gateway"), "{seen:?}");
    assert_eq!(calls(&relay), 0, "no refused call reached the node's handler");
    assert_eq!(calls(&echo), 1);

    // Refused: two response topics, $stats, relay.set twice; made: echo and $info.
    wait_for_stats(&node, "refusals counted", |st| st["rpc_refused"] == 5 && st["rpc_calls"] == 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fake_gateway_alive_on_mqtt_does_not_stop_the_bridge() {
    let s = Setup::new("fakealive");
    let _gw = s.gateway();
    let node = mesh_node(&s.key, s.mesh, "sensor").await;
    let mut inbound = node.subscribe("cmd/#").await.unwrap();
    wait_for_peer(&node, "gw").await;

    // Any MQTT client claims, twice a second for 5 s, to be a gateway with the lowest id.
    let port = s.broker.port.to_string();
    let forger = std::thread::spawn(move || {
        for i in 0..10 {
            let mut c = Command::new("mosquitto_pub");
            c.args(["-p", &port, "-t", "starling/$gateway/0000000000000001/alive", "-n"]);
            if i == 0 {
                c.arg("-r"); // retained too, for whoever subscribes later
            }
            assert!(c.status().unwrap().success());
            std::thread::sleep(Duration::from_millis(500));
        }
    });
    tokio::time::sleep(Duration::from_millis(1500)).await; // the forgery has been heard

    let seen = seen_on_mqtt(&s, "starling/out/#", 3, async {
        for i in 0..10 {
            node.publish(&format!("out/{i}"), format!("{i}")).reliable().await.unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    let want: Vec<String> = (0..10).map(|i| format!("starling/out/{i} {i}")).collect();
    assert_eq!(seen, want, "mesh to MQTT goes on under the forged alive");
    for i in 0..5 {
        let ok = s.mqtt("mosquitto_pub").args(["-q", "1", "-t", &format!("starling/cmd/{i}"), "-m", "x"]).status();
        assert!(ok.unwrap().success());
    }
    for i in 0..5 {
        let m = tokio::time::timeout(Duration::from_secs(5), inbound.recv()).await.unwrap().unwrap();
        assert_eq!(m.topic, format!("cmd/{i}"), "MQTT to mesh goes on under the forged alive");
    }
    assert_eq!(bridge_stats(&node).await["active"], 1);
    tokio::task::spawn_blocking(move || forger.join().unwrap()).await.unwrap();
    // Cleared, so the broker's store keeps no forged retained message.
    let ok = s.mqtt("mosquitto_pub").args(["-t", "starling/$gateway/0000000000000001/alive", "-n", "-r"]).status();
    assert!(ok.unwrap().success());
}

/// The config file sets the mesh's group and port (no flags for them), names the key file
/// relative to its own directory (the gateway runs elsewhere), and takes `out` as one filter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_config_file_sets_the_mesh_and_names_files_relative_to_itself() {
    let s = Setup::new("file");
    let etc = s.dir.0.join("etc");
    std::fs::create_dir_all(&etc).unwrap();
    key_file(&etc, &s.key);
    let conf = etc.join("gw.toml");
    std::fs::write(
        &conf,
        format!(
            "key_file = \"net.key\"\nname = \"gw\"\nbroker = \"mqtt://127.0.0.1:{}\"\n\
             group = \"{}\"\nport = {}\nout = \"cfg/#\"\n",
            s.broker.port, s.mesh.0, s.mesh.1
        ),
    )
    .unwrap();
    let mut cmd = Gateway::command(&["--config", conf.to_str().unwrap()]);
    let _gw = Gateway(spawn_ready(cmd.current_dir("/"), "bridging mesh"));
    let node = mesh_node(&s.key, s.mesh, "cfg").await;
    wait_for_peer(&node, "gw").await; // on the file's group and port
    let seen = seen_on_mqtt(&s, "starling/#", 2, async {
        node.publish("cfg/x", "in").await.unwrap();
        node.publish("other/y", "out of the filter").await.unwrap();
    })
    .await;
    let bridged: Vec<&String> = seen.iter().filter(|l| !l.contains('$')).collect();
    assert_eq!(bridged, ["starling/cfg/x in"], "{seen:?}");
}

/// Lines the child prints on stderr, read by a thread, so waits on them can be bounded.
fn stderr_lines(child: &mut Child) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead;
    let err = std::io::BufReader::new(child.stderr.take().expect("stderr piped"));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in err.lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// Collects lines from `rx` until one contains `needle` or `limit` passes; returns them all and
/// whether the needle was seen.
fn lines_until(rx: &std::sync::mpsc::Receiver<String>, needle: &str, limit: Duration) -> (Vec<String>, bool) {
    let end = Instant::now() + limit;
    let mut lines = Vec::new();
    while let Some(left) = end.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(line) => {
                let found = line.contains(needle);
                lines.push(line);
                if found {
                    return (lines, true);
                }
            }
            Err(_) => break,
        }
    }
    (lines, false)
}

/// A broker nobody listens on is named with the OS error at once, then not again for a while;
/// the hint says the gateway runs its own without `--broker`; "bridging" waits for a connection,
/// which comes when a broker starts there.
#[test]
fn an_unreachable_broker_is_named_with_the_error_and_the_own_broker_hint() {
    let mesh = isolated_mesh();
    let dir = TempDir(std::env::temp_dir().join(format!("starling-unreach-{}-{}", std::process::id(), mesh.1)));
    std::fs::create_dir_all(&dir.0).unwrap();
    let key = key_file(&dir.0, &random_key());
    let port = free_tcp_port();
    let broker = format!("mqtt://127.0.0.1:{port}");
    let mut cmd = Gateway::command(&["--key", key.to_str().unwrap(), "--broker", &broker]);
    cmd.args(["--group", &mesh.0.to_string(), "--port", &mesh.1.to_string()]).stderr(Stdio::piped());
    let mut gw = Gateway(cmd.spawn().unwrap());
    let rx = stderr_lines(&mut gw.0);
    let (lines, found) = lines_until(&rx, "runs its own Mosquitto", Duration::from_secs(5));
    assert!(found, "no hint within 5 s: {lines:?}");
    let named: Vec<&String> = lines.iter().filter(|l| l.contains(&format!("127.0.0.1:{port}"))).collect();
    assert!(
        named.iter().any(|l| l.contains("cannot reach the MQTT broker") && l.contains("Connection refused")),
        "the broker and the OS error are named: {lines:?}"
    );
    assert!(lines.iter().any(|l| l.contains("without `broker` in the config file")), "{lines:?}");
    // Rate-limited: several attempts in the next 3 s, no more lines about them.
    let (more, _) = lines_until(&rx, "cannot reach", Duration::from_secs(3));
    assert!(more.iter().all(|l| !l.contains("cannot reach")), "reported again too soon: {more:?}");
    assert!(lines.iter().chain(&more).all(|l| !l.contains("bridging")), "not bridging yet: {lines:?} {more:?}");
    // A broker that comes up later is found: now it bridges, and says so.
    let _broker = Broker::start_on("unreach", port, |_| String::new());
    let (after, found) = lines_until(&rx, "bridging mesh", Duration::from_secs(10));
    assert!(found, "never bridged once the broker came up: {after:?}");
}

/// A broker that answers but refuses the gateway is named as refusing, with what to check, and
/// without the hint about running a broker.
#[test]
fn a_broker_that_refuses_the_gateway_says_to_check_the_credentials() {
    let broker = Broker::start_with("refuse", |_| "allow_anonymous false\n".into());
    let mesh = isolated_mesh();
    let key = key_file(&broker._dir.0, &random_key());
    let url = format!("mqtt://127.0.0.1:{}", broker.port);
    let mut cmd = Gateway::command(&["--key", key.to_str().unwrap(), "--broker", &url]);
    cmd.args(["--group", &mesh.0.to_string(), "--port", &mesh.1.to_string()]).stderr(Stdio::piped());
    let mut gw = Gateway(cmd.spawn().unwrap());
    let rx = stderr_lines(&mut gw.0);
    let (lines, found) = lines_until(&rx, "refused the connection", Duration::from_secs(5));
    assert!(found, "no refusal within 5 s: {lines:?}");
    let line = lines.last().unwrap();
    assert!(line.contains(&format!("127.0.0.1:{}", broker.port)) && line.contains("user and password"), "{line}");
    let (more, _) = lines_until(&rx, "hint", Duration::from_millis(500));
    assert!(lines.iter().chain(&more).all(|l| !l.contains("runs its own Mosquitto")), "{lines:?} {more:?}");
}
