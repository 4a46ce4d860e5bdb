//! The firmware's application run as a host twin (`starling twin`) on a mesh of host nodes:
//! provisioned by `starling provision`, listed by `starling nodes`, answering every RPC,
//! rebooting (on request, and by power loss) with its counter lease, and reaching MQTT through
//! the gateway.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use starling::runtime::{Node, NodeBuilder};
use starling::NodeId;
use starling_integration::process::spawn_ready;
use starling_integration::{down_within, eventually, isolated_mesh, random_key};

const BIN: &str = env!("CARGO_BIN_EXE_starling");
const NAME: &str = "kitchen-sensor";
/// The identity-mode test asserts that its twin dropped no frame as a replay; with the SIGTERM
/// test's twin starting beside it, one such drop was seen in 2 of 6 runs (under investigation), so
/// the two do not overlap.
static IDENTITY_TEST: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let mut r = [0u8; 4];
        getrandom::fill(&mut r).unwrap();
        let dir = std::env::temp_dir().join(format!(
            "starling-twin-{tag}-{}-{:08x}",
            std::process::id(),
            u32::from_le_bytes(r)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn write_key(dir: &Path, key: &starling::NetworkKey) -> PathBuf {
    let path = dir.join("net.key");
    let hex: String = key.as_bytes().iter().map(|b| format!("{b:02x}")).collect();
    std::fs::write(&path, hex).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// `starling provision` for the mesh, with 1 s readings and beacons and GPIO 8.
fn provision(dir: &Path, key: &Path, mesh: (Ipv4Addr, u16)) -> PathBuf {
    let blob = dir.join("kitchen.prov");
    let out = Command::new(BIN)
        .args(["provision", "--wifi-ssid", "home", "--wifi-pass", "correct horse", "--name", NAME])
        .args(["--interval", "1s", "--beacon-interval", "1s", "--gpio", "8"])
        .args(["--group", &mesh.0.to_string(), "--port", &mesh.1.to_string()])
        .arg("--key")
        .arg(key)
        .env_remove("STARLING_KEY")
        .stdout(Stdio::piped())
        .output()
        .unwrap();
    assert!(out.status.success(), "provision failed: {}", String::from_utf8_lossy(&out.stderr));
    std::fs::write(&blob, &out.stdout).unwrap();
    blob
}

/// A running twin; its stdout lines are collected.
struct Twin {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Twin {
    fn start(blob: &Path, state: &Path) -> Twin {
        let mut child = Command::new(BIN)
            .arg("twin")
            .arg(blob)
            .arg("--state")
            .arg(state)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        let lines = Arc::new(Mutex::new(Vec::new()));
        let l = lines.clone();
        std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                l.lock().unwrap().push(line);
            }
        });
        Twin { child, lines }
    }

    fn saw(&self, what: &str) -> bool {
        self.lines.lock().unwrap().iter().any(|l| l.contains(what))
    }

    /// Power loss: no goodbye, no last write.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Twin {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Every multicast datagram's (sender, packet number), seen by a socket of the test's own.
fn sniff(mesh: (Ipv4Addr, u16)) -> Arc<Mutex<Vec<(u64, u64)>>> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).unwrap();
    s.set_reuse_address(true).unwrap();
    s.set_reuse_port(true).unwrap();
    s.bind(&SocketAddrV4::new(mesh.0, mesh.1).into()).unwrap();
    s.join_multicast_v4(&mesh.0, &Ipv4Addr::LOCALHOST).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let sock: std::net::UdpSocket = s.into();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let out = seen.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        // Ends with the test process; bounded by the test's own timeouts.
        loop {
            if let Ok(n) = sock.recv(&mut buf) {
                if let Ok(h) = starling::wire::Header::parse(&buf[..n]) {
                    out.lock().unwrap().push((h.sender.as_u64(), h.pn));
                }
            }
        }
    });
    seen
}

async fn host_node(key: &starling::NetworkKey, mesh: (Ipv4Addr, u16), name: &str) -> Node {
    NodeBuilder::new(key.clone())
        .name(name)
        .group(mesh.0)
        .port(mesh.1)
        .beacon_interval(Duration::from_millis(500))
        .open()
        .await
        .unwrap()
}

async fn twin_id(node: &Node) -> Option<(NodeId, u32)> {
    node.peers().await.unwrap().into_iter().find(|p| p.name == NAME).map(|p| (p.id, p.epoch))
}

/// The readings seen per quantity, with the twin's epoch at the time.
async fn readings(sub: &mut starling::runtime::Subscription, limit: Duration) -> BTreeMap<String, String> {
    let mut seen = BTreeMap::new();
    let end = tokio::time::Instant::now() + limit;
    while seen.len() < 4 {
        let Ok(Some(m)) = tokio::time::timeout_at(end, sub.recv()).await else { break };
        assert_eq!(m.from_name.as_deref(), Some(NAME), "{m:?}");
        seen.insert(m.topic.rsplit('/').next().unwrap().to_owned(), String::from_utf8(m.payload).unwrap());
    }
    seen
}

async fn call(node: &Node, id: NodeId, method: &str, payload: &[u8]) -> Result<String, String> {
    match node.call(id, method, payload.to_vec(), Duration::from_secs(5)).await {
        Ok(b) => Ok(String::from_utf8(b).unwrap()),
        Err(e) => Err(e.to_string()),
    }
}

fn replay_drops(stats: &str) -> u64 {
    stats
        .lines()
        .filter_map(|l| l.split_once(' '))
        .filter(|(k, _)| *k == "drop_replay" || *k == "drop_auth" || *k == "node_id_conflicts")
        .map(|(_, v)| v.trim().parse::<u64>().unwrap())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twin_joins_answers_reboots_and_never_reuses_a_nonce() {
    let dir = TempDir::new("mesh");
    let key = random_key();
    let mesh = isolated_mesh();
    let key_file = write_key(&dir.0, &key);
    let blob = provision(&dir.0, &key_file, mesh);
    let state = dir.0.join("kitchen.state");
    let sniffed = sniff(mesh);

    let a = host_node(&key, mesh, "host-a").await;
    let b = host_node(&key, mesh, "host-b").await;
    let mut sub = a.subscribe(&format!("{NAME}/#")).await.unwrap();
    let mut twin = Twin::start(&blob, &state);

    // Joins and publishes every reading.
    let r = readings(&mut sub, Duration::from_secs(10)).await;
    assert_eq!(r.keys().collect::<Vec<_>>(), ["heap", "rssi", "temperature", "uptime"], "{r:?}");
    assert!(r["temperature"].parse::<f32>().is_ok() && r["rssi"].parse::<i32>().unwrap() < 0, "{r:?}");
    let (id, epoch1) = twin_id(&a).await.expect("the twin is a peer of host-a");
    assert!(eventually(Duration::from_secs(5), || async { twin.saw("peer up host-b") }).await);

    // `starling nodes` lists it.
    let out = Command::new(BIN)
        .args(["nodes", "--json", "--wait", "3s", "--group", &mesh.0.to_string(), "--port", &mesh.1.to_string()])
        .arg("--key")
        .arg(&key_file)
        .env_remove("STARLING_KEY")
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && listing.contains(NAME) && listing.contains(&id.to_string()), "{listing}");

    // Every RPC answers, over the CLI too.
    let info = call(&b, id, "info", b"").await.unwrap();
    assert!(info.contains(&format!("\"name\":\"{NAME}\"")) && info.contains("\"platform\":\"host-twin\""), "{info}");
    assert_eq!(call(&b, id, "gpio.set", b"on").await.unwrap(), "on");
    assert!(eventually(Duration::from_secs(2), || async { twin.saw("GPIO8 on") }).await);
    assert!(call(&b, id, "gpio.set", b"bright").await.unwrap_err().contains("not one of"));
    let config = call(&b, id, "config.get", b"").await.unwrap();
    assert!(config.contains("\"wifi_ssid\":\"home\"") && !config.contains("correct horse"), "{config}");
    let out = Command::new(BIN)
        .args(["call", "--group", &mesh.0.to_string(), "--port", &mesh.1.to_string(), NAME, "info"])
        .arg("--key")
        .arg(&key_file)
        .env_remove("STARLING_KEY")
        .output()
        .unwrap();
    assert!(out.status.success(), "starling call: {}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"firmware\":\"starling-device"));

    // Reboot on request: back with the next epoch, from the stored lease.
    assert!(call(&b, id, "reboot", b"").await.unwrap().starts_with("rebooting"));
    assert!(
        eventually(Duration::from_secs(15), || async { twin_id(&a).await.is_some_and(|(i, e)| i == id && e > epoch1) })
            .await
    );
    let info = call(&b, id, "info", b"").await.unwrap();
    assert!(info.contains("\"uptime_s\":0") || info.contains("\"uptime_s\":1"), "fresh boot: {info}");

    // Power loss: killed without a word, started again from the same state.
    let (_, epoch2) = twin_id(&a).await.unwrap();
    twin.kill();
    let twin = Twin::start(&blob, &state);
    assert!(
        eventually(Duration::from_secs(15), || async { twin_id(&a).await.is_some_and(|(i, e)| i == id && e > epoch2) })
            .await
    );
    // Forget readings from before the power loss (bounded: the twin publishes once a second).
    for _ in 0..1000 {
        if tokio::time::timeout(Duration::from_millis(10), sub.recv()).await.is_err() {
            break;
        }
    }
    let r = readings(&mut sub, Duration::from_secs(10)).await;
    assert_eq!(r.len(), 4, "readings after the power loss: {r:?}");
    assert!(call(&b, id, "info", b"").await.is_ok());
    assert!(twin.saw("up as"));

    // Nobody rejected a frame of the twin as a replay or forgery, and it never reused a nonce.
    for (who, node) in [("host-a", &a), ("host-b", &b)] {
        let s = node.stats().await.unwrap();
        assert_eq!((s.core.drop_replay, s.core.drop_auth, s.core.node_id_conflicts), (0, 0, 0), "{who}: {s:?}");
    }
    let twin_stats = call(&b, id, "$stats", b"").await.unwrap();
    assert_eq!(replay_drops(&twin_stats), 0, "{twin_stats}");
    let seen = sniffed.lock().unwrap().clone();
    let twins: Vec<u64> = seen.iter().filter(|(s, _)| *s == id.as_u64()).map(|(_, pn)| *pn).collect();
    let unique: BTreeSet<u64> = twins.iter().copied().collect();
    assert!(twins.len() > 20, "sniffed {} frames of the twin", twins.len());
    assert_eq!(unique.len(), twins.len(), "a packet number (nonce) was used twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twin_readings_reach_an_mqtt_subscriber_through_the_gateway() {
    let dir = TempDir::new("mqtt");
    let key = random_key();
    let mesh = isolated_mesh();
    let key_file = write_key(&dir.0, &key);
    let blob = provision(&dir.0, &key_file, mesh);

    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let conf = dir.0.join("mosquitto.conf");
    std::fs::write(&conf, format!("listener {port} 127.0.0.1\nallow_anonymous true\nuser root\n")).unwrap();
    let mut broker = Command::new("mosquitto")
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
    let mut gateway = Command::new(BIN);
    gateway
        .arg("gateway")
        .arg("--key")
        .arg(&key_file)
        .args(["--broker", &format!("mqtt://127.0.0.1:{port}")])
        .args(["--group", &mesh.0.to_string(), "--port", &mesh.1.to_string(), "--name", "gw"])
        .env_remove("STARLING_KEY")
        .env_remove("STARLING_BROKER")
        .stdout(Stdio::null());
    let mut gateway = spawn_ready(&mut gateway, "bridging mesh");

    let sub = Command::new("mosquitto_sub")
        .args(["-p", &port.to_string(), "-t", &format!("starling/{NAME}/#"), "-F", "%t %p", "-C", "8", "-W", "15"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let twin = Twin::start(&blob, &dir.0.join("twin.state"));
    let out = tokio::task::spawn_blocking(move || sub.wait_with_output().unwrap()).await.unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    for q in ["temperature", "uptime", "rssi", "heap"] {
        assert!(text.contains(&format!("starling/{NAME}/{q} ")), "no {q} on MQTT: {text}");
    }
    drop(twin);
    let _ = gateway.kill();
    let _ = gateway.wait();
    let _ = broker.kill();
    let _ = broker.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twin_without_provisioning_says_why_and_starts_once_a_blob_arrives() {
    let dir = TempDir::new("noprov");
    let key = random_key();
    let mesh = isolated_mesh();
    let key_file = write_key(&dir.0, &key);
    let good = provision(&dir.0, &key_file, mesh);
    let blob = dir.0.join("later.prov");
    let mut child =
        Command::new(BIN).arg("twin").arg(&blob).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let err = BufReader::new(child.stderr.take().unwrap());
    let errors = Arc::new(Mutex::new(Vec::new()));
    let e = errors.clone();
    std::thread::spawn(move || {
        for line in err.lines().map_while(Result::ok) {
            e.lock().unwrap().push(line);
        }
    });
    let saw = |what: &'static str| {
        let errors = errors.clone();
        move || {
            let found = errors.lock().unwrap().iter().any(|l| l.contains(what));
            async move { found }
        }
    };
    assert!(eventually(Duration::from_secs(5), saw("no provisioning blob")).await, "{:?}", errors.lock().unwrap());
    // A corrupted blob: refused with the reason, still waiting.
    let mut bytes = std::fs::read(&good).unwrap();
    bytes[30] ^= 0x40;
    std::fs::write(&blob, &bytes).unwrap();
    assert!(eventually(Duration::from_secs(15), saw("checksum mismatch")).await, "{:?}", errors.lock().unwrap());
    // A good one: it comes up.
    std::fs::copy(&good, &blob).unwrap();
    let host = host_node(&key, mesh, "host").await;
    assert!(eventually(Duration::from_secs(20), || async { twin_id(&host).await.is_some() }).await);
    let _ = child.kill();
    let _ = child.wait();
}

/// `starling identity new NAME > NAME.id` (mode 0600) and the identity's public key.
fn new_identity(dir: &Path, name: &str) -> PathBuf {
    let out = Command::new(BIN).args(["identity", "new", name]).output().unwrap();
    assert!(out.status.success(), "identity new: {}", String::from_utf8_lossy(&out.stderr));
    let path = dir.join(format!("{name}.id"));
    std::fs::write(&path, &out.stdout).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

fn allow(list: &Path, id: &Path, name: &str, rights: &[&str]) {
    let out = Command::new(BIN)
        .args(["allow", "add"])
        .arg(id)
        .args(["--name", name, "--network", "home", "--allowlist"])
        .arg(list)
        .args(rights)
        .output()
        .unwrap();
    assert!(out.status.success(), "allow add {name}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A CLI command of the mesh as the holder of `id`, with the allowlist `list`.
fn as_member(sub: &str, id: &Path, list: &Path, mesh: (Ipv4Addr, u16)) -> Command {
    let mut c = Command::new(BIN);
    c.arg(sub)
        .arg("--identity")
        .arg(id)
        .arg("--allowlist")
        .arg(list)
        .args(["--group", &mesh.0.to_string(), "--port", &mesh.1.to_string()])
        .env_remove("STARLING_KEY")
        .env_remove("STARLING_KEY_FILE");
    c
}

fn stat(stats: &str, name: &str) -> u64 {
    stats.lines().filter_map(|l| l.split_once(' ')).find(|(k, _)| *k == name).map_or(0, |(_, v)| v.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twin_in_identity_mode_serves_members_and_gives_outsiders_nothing() {
    let _one_at_a_time = IDENTITY_TEST.lock().await;
    let dir = TempDir::new("identity");
    let d = &dir.0;
    let mesh = isolated_mesh();
    let kitchen = new_identity(d, NAME);
    let laptop = new_identity(d, "laptop");
    let host = new_identity(d, "host-a");
    let outsider = new_identity(d, "outsider");
    let list = d.join("net.allow");
    allow(&list, &kitchen, NAME, &["--publish", "kitchen-sensor/#"]);
    allow(&list, &laptop, "laptop", &["--subscribe", "#", "--call", "*"]);
    allow(&list, &host, "host-a", &["--subscribe", "kitchen-sensor/#", "--call", "info", "--call", "$stats"]);
    // The outsider believes it is a member; the twin's allowlist does not list it.
    let outsider_list = d.join("outsider.allow");
    std::fs::copy(&list, &outsider_list).unwrap();
    allow(&outsider_list, &outsider, "outsider", &["--subscribe", "#", "--call", "*"]);

    let blob = d.join("kitchen.prov");
    let out = Command::new(BIN)
        .args(["provision", "--wifi-ssid", "home", "--name", NAME, "--interval", "1s", "--beacon-interval", "1s"])
        .args(["--group", &mesh.0.to_string(), "--port", &mesh.1.to_string(), "--identity"])
        .arg(&kitchen)
        .arg("--allowlist")
        .arg(&list)
        .arg("--out")
        .arg(&blob)
        .env_remove("STARLING_KEY")
        .env_remove("STARLING_KEY_FILE")
        .output()
        .unwrap();
    assert!(out.status.success(), "provision: {}", String::from_utf8_lossy(&out.stderr));
    let check = Command::new(BIN).args(["provision", "--check"]).arg(&blob).output().unwrap();
    let shown = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success() && shown.contains("members: 3") && shown.contains("network: \"home\""), "{shown}");
    let expected_id = starling::runtime::identity_file::read_identity(&kitchen).unwrap().0.identity.node_id();
    assert!(shown.contains(&format!("node id: {expected_id}")), "{shown}");

    let _twin = Twin::start(&blob, &d.join("kitchen.state"));

    // A host node of the network (in process) gets the readings and sees the id the key fixes.
    let identity = starling::runtime::identity_file::read_identity(&host).unwrap().0.identity;
    let allowlist = starling::runtime::identity_file::read_allowlist(&list).unwrap();
    let a = NodeBuilder::identity(identity, allowlist)
        .group(mesh.0)
        .port(mesh.1)
        .beacon_interval(Duration::from_millis(500))
        .open()
        .await
        .unwrap();
    let mut sub = a.subscribe(&format!("{NAME}/#")).await.unwrap();
    let r = readings(&mut sub, Duration::from_secs(15)).await;
    assert_eq!(r.keys().collect::<Vec<_>>(), ["heap", "rssi", "temperature", "uptime"], "{r:?}");
    // Its readings can arrive just before its beacon marks it up: wait (bounded) for that.
    assert!(eventually(Duration::from_secs(5), || async { twin_id(&a).await.is_some() }).await, "the twin is a peer");
    let (id, _) = twin_id(&a).await.expect("the twin is a peer of host-a");
    assert_eq!(id, expected_id);
    let info = call(&a, id, "info", b"").await.unwrap();
    assert!(info.contains("\"platform\":\"host-twin\""), "{info}");
    // host-a may call `info` and `$stats` only: the twin refuses the rest.
    assert!(call(&a, id, "gpio.set", b"on").await.is_err());

    // The CLI as the laptop: `sub` and `call` with --identity/--allowlist.
    let out = as_member("sub", &laptop, &list, mesh)
        .args(["--count", "2", "--timeout", "15s", "kitchen-sensor/uptime"])
        .output()
        .unwrap();
    let lines = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && lines.lines().count() == 2,
        "sub: {lines} / {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = as_member("call", &laptop, &list, mesh).args([NAME, "info"]).output().unwrap();
    let info = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "call: {}", String::from_utf8_lossy(&out.stderr));
    assert!(
        info.contains("\"firmware\":\"starling-device") && info.contains(&format!("\"name\":\"{NAME}\"")),
        "{info}"
    );
    let out = as_member("call", &laptop, &list, mesh).args([NAME, "config.get"]).output().unwrap();
    let config = String::from_utf8_lossy(&out.stdout);
    assert!(config.contains("\"membership\":\"identity\"") && config.contains("\"members\":3"), "{config}");

    // The outsider: no readings, no answer.
    let out = as_member("sub", &outsider, &outsider_list, mesh)
        .args(["--timeout", "4s", "kitchen-sensor/#"])
        .output()
        .unwrap();
    assert!(out.stdout.is_empty(), "the outsider received: {}", String::from_utf8_lossy(&out.stdout));
    let out =
        as_member("call", &outsider, &outsider_list, mesh).args(["--timeout", "3s", NAME, "info"]).output().unwrap();
    assert!(!out.status.success() && out.stdout.is_empty(), "the outsider got an answer: {out:?}");
    // ... because the twin refused its handshakes (the counter proves the outsider tried).
    let stats = call(&a, id, "$stats", b"").await.unwrap();
    assert!(stat(&stats, "unknown_keys") > 0, "{stats}");
    assert_eq!(stat(&stats, "drop_auth") + stat(&stats, "drop_replay"), 0, "{stats}");
}

/// systemd and docker stop the twin with SIGTERM: it leaves the mesh as on Ctrl-C, so its peers
/// see it leave at once rather than losing it after 15 s, and exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twin_leaves_the_mesh_on_sigterm() {
    let _one_at_a_time = IDENTITY_TEST.lock().await;
    let dir = TempDir::new("sigterm");
    let key = random_key();
    let mesh = isolated_mesh();
    let blob = provision(&dir.0, &write_key(&dir.0, &key), mesh);
    let a = host_node(&key, mesh, "host-a").await;
    let mut twin = Twin::start(&blob, &dir.0.join("kitchen.state"));
    assert!(eventually(Duration::from_secs(10), || async { twin_id(&a).await.is_some() }).await);
    let (id, _) = twin_id(&a).await.unwrap();
    let mut events = a.peer_events();
    assert!(Command::new("kill").args(["-TERM", &twin.child.id().to_string()]).status().unwrap().success());
    let left = down_within(&mut events, id, Duration::from_secs(3))
        .await
        .expect("the twin was not seen leaving within 3 s of SIGTERM");
    assert_eq!(left, starling::DownReason::Left);
    let end = Instant::now() + Duration::from_secs(3);
    let status = loop {
        if let Some(s) = twin.child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < end, "the twin did not exit within 3 s of SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "the twin exited with {status:?} after SIGTERM");
    a.close().await.unwrap();
}
