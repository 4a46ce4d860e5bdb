//! The gateway against a real Mosquitto started by the test on a free loopback port, with
//! `mosquitto_sub` and `mosquitto_pub` as the MQTT side and a Starling node as the mesh side.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use starling::runtime::{Node, NodeBuilder};
use starling_integration::{isolated_mesh, random_key};

const BIN: &str = env!("CARGO_BIN_EXE_starling");

/// A Mosquitto of the test's own, stopped when dropped.
struct Broker {
    child: Child,
    port: u16,
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
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let dir = std::env::temp_dir().join(format!("starling-mqtt-{tag}-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let conf = dir.join("mosquitto.conf");
        std::fs::write(&conf, format!("listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 100000\n"))
            .unwrap();
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto must be installed (the test command installs it)");
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(start.elapsed() < Duration::from_secs(10), "mosquitto did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Broker { child, port, _dir: TempDir(dir) }
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
        let mut child = Command::new(BIN)
            .args(["gateway", "--key", key.to_str().unwrap()])
            .args(["--group", &mesh.0.to_string(), "--port", &mesh.1.to_string()])
            .args(["--broker", &format!("mqtt://127.0.0.1:{broker}"), "--name", "gw"])
            .env_remove("STARLING_KEY")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut err = BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        while !line.contains("bridging mesh") {
            line.clear();
            assert!(err.read_line(&mut line).unwrap() > 0, "gateway exited: {line}");
        }
        std::thread::spawn(move || for _ in err.lines() {});
        Gateway(child)
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
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
