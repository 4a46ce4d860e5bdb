//! The `starling` binary as separate processes on loopback multicast.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use starling_integration::isolated_mesh;
use starling_integration::process::{finish, scratch_dir, spawn_ready, write_private};

const BIN: &str = env!("CARGO_BIN_EXE_starling");

struct Env {
    dir: PathBuf,
    key: PathBuf,
    group: String,
    port: String,
}

impl Env {
    fn new(tag: &str) -> Env {
        let (group, port) = isolated_mesh();
        let dir = scratch_dir(&format!("cli-{tag}"), port);
        let key = dir.join("net.key");
        let out = Command::new(BIN).arg("keygen").output().unwrap();
        assert!(out.status.success());
        write_private(&key, &out.stdout);
        Env { dir, key, group: group.to_string(), port: port.to_string() }
    }

    fn cmd(&self, sub: &str) -> Command {
        let mut c = Command::new(BIN);
        c.arg(sub).arg("--key").arg(&self.key).args(["--group", &self.group, "--port", &self.port]);
        c.env_remove("STARLING_KEY").env_remove("STARLING_KEY_FILE");
        c
    }

    /// Starts `starling sub` and waits until it says it is listening.
    fn sub(&self, args: &[&str]) -> Child {
        spawn_ready(self.cmd("sub").args(args).stdout(Stdio::piped()), "listening on")
    }

    fn publish(&self, args: &[&str]) -> Output {
        let out = self.cmd("pub").args(args).output().unwrap();
        assert!(out.status.success(), "pub failed: {}", String::from_utf8_lossy(&out.stderr));
        out
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

#[test]
fn pub_reaches_sub_text_and_binary_byte_for_byte() {
    let env = Env::new("bin");
    let text_sub = env.sub(&["home/+/temp", "cam/#", "--count", "3", "--timeout", "20s"]);
    let json_sub = env.sub(&["cam/#", "--json", "--count", "2", "--timeout", "20s"]);

    let image: Vec<u8> = (0..1000u32).map(|i| (i * 7 % 256) as u8).chain([0, 0, 0xff, 0xfe]).collect();
    let img = env.dir.join("img.bin");
    std::fs::write(&img, &image).unwrap();
    env.publish(&["--name", "kitchen", "home/kitchen/temp", "21.5"]);
    env.publish(&["home/kitchen/humidity", "40"]); // matches neither subscription
    env.publish(&["cam/1/frame", "--file", img.to_str().unwrap()]);
    env.publish(&["cam/1/empty", "--empty"]);

    let out = stdout(&finish(text_sub, Duration::from_secs(20)));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(lines[0].starts_with("home/kitchen/temp  from kitchen (") && lines[0].ends_with(" 4 B  21.5"), "{out}");
    let hex: String = image.iter().map(|b| format!("{b:02x}")).collect();
    assert!(lines[1].starts_with("cam/1/frame  from ") && lines[1].ends_with(&format!("1004 B  hex {hex}")), "{out}");
    assert!(lines[2].starts_with("cam/1/empty  from ") && lines[2].ends_with("0 B  (empty)"), "{out}");

    let out = stdout(&finish(json_sub, Duration::from_secs(20)));
    let msgs: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(msgs.len(), 2, "{out}");
    assert_eq!(msgs[0]["topic"], "cam/1/frame");
    assert_eq!(msgs[0]["hex"], hex, "binary payload byte for byte");
    assert_eq!(msgs[0]["size"], 1004);
    assert!(msgs[0].get("text").is_none(), "binary is not shown as text");
    assert_eq!((msgs[1]["topic"].as_str(), msgs[1]["size"].as_u64()), (Some("cam/1/empty"), Some(0)));
}

#[test]
fn stdin_and_hex_payloads_and_hexdump_view() {
    let env = Env::new("hex");
    let sub = env.sub(&["raw/#", "--hex", "--count", "2", "--timeout", "20s"]);
    env.publish(&["raw/a", "--hex", "00:ff:41"]);
    let mut p = env.cmd("pub").args(["raw/b", "--file", "-"]).stdin(Stdio::piped()).spawn().unwrap();
    p.stdin.take().unwrap().write_all(b"\x00stdin\xff").unwrap();
    assert!(p.wait().unwrap().success());
    let out = stdout(&finish(sub, Duration::from_secs(20)));
    assert!(out.contains("raw/a  from ") && out.contains("3 B\n  00000000  00 ff 41"), "{out}");
    assert!(out.contains("|..A|"), "{out}");
    assert!(out.contains("  00000000  00 73 74 64 69 6e ff"), "{out}");
}

#[test]
fn nodes_lists_running_nodes_with_stats() {
    let env = Env::new("nodes");
    let sub = env.sub(&["--name", "watcher", "x", "--timeout", "20s"]);
    let out = env.cmd("nodes").args(["--name", "lister", "--wait", "1s", "--json", "--stats"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let nodes = v["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 1, "{v}");
    assert_eq!(nodes[0]["name"], "watcher");
    assert!(nodes[0]["address"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert_eq!(nodes[0]["epoch"], 1);
    assert!(v["stats"]["rx_accepted"].as_u64().unwrap() >= 1, "{v}");
    assert_eq!(v["stats"]["drop_auth"], 0);

    let out = env.cmd("nodes").args(["--wait", "1s", "--stats"]).output().unwrap();
    let table = stdout(&out);
    // One table: a column per node, zero rows left out (--all shows them).
    let header = table.lines().find(|l| l.starts_with("counter")).expect(&table);
    assert!(header.contains("this node") && header.contains("watcher"), "{table}");
    let rx = table.lines().find(|l| l.starts_with("rx_accepted")).expect(&table);
    assert_eq!(rx.split_whitespace().count(), 3, "a value per node: {rx}");
    assert!(!table.lines().any(|l| l.starts_with("drop_replay")), "{table}");
    assert!(table.contains("--all shows them"), "{table}");
    let out = env.cmd("nodes").args(["--wait", "1s", "--stats", "--all"]).output().unwrap();
    assert!(stdout(&out).lines().any(|l| l.starts_with("drop_replay")), "{}", stdout(&out));
    let mut sub = sub;
    sub.kill().unwrap();
    let _ = sub.wait();
}

#[test]
fn state_file_keeps_identity_across_runs() {
    let env = Env::new("state");
    let state = env.dir.join("pub.state");
    let sub = env.sub(&["s", "--json", "--count", "2", "--timeout", "20s"]);
    for _ in 0..2 {
        env.publish(&["--state", state.to_str().unwrap(), "s", "x"]);
    }
    let out = stdout(&finish(sub, Duration::from_secs(20)));
    let from: Vec<String> =
        out.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["from"].to_string()).collect();
    assert_eq!(from.len(), 2, "{out}");
    assert_eq!(from[0], from[1], "same node id on both runs");
    assert_eq!(std::fs::metadata(&state).unwrap().len(), 32);
}

fn fails_with(c: &mut Command, needle: &str) {
    let out = c.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "expected failure, stderr: {err}");
    assert!(err.contains(needle), "stderr lacks {needle:?}: {err}");
}

#[test]
fn bad_input_gets_errors_that_say_what_to_do() {
    let env = Env::new("errors");
    let mut no_key = Command::new(BIN);
    no_key.args(["pub", "a", "b"]).env_remove("STARLING_KEY").env_remove("STARLING_KEY_FILE");
    fails_with(&mut no_key, "starling keygen");
    fails_with(env.cmd("pub").args(["a/+/b", "x"]), "wildcard");
    fails_with(env.cmd("pub").args(["a"]), "--empty");
    fails_with(env.cmd("pub").args(["a", "--hex", "abc"]), "odd number");
    fails_with(env.cmd("sub").args(["a/#/b"]), "'#'");
    fails_with(env.cmd("pub").args(["a", &"x".repeat(70_000)]), "limit for this topic is 65536 bytes");
    fails_with(env.cmd("pub").args(["--interface", "nosuchif0", "a", "x"]), "no interface named 'nosuchif0'");
    let bad = env.dir.join("bad.key");
    std::fs::write(&bad, "not a key\n").unwrap();
    let mut c = Command::new(BIN);
    c.args(["pub", "--key", bad.to_str().unwrap(), "a", "x"]);
    fails_with(&mut c, "bad.key");
    fails_with(&mut c, "64 hexadecimal digits");
    let mut c = Command::new(BIN);
    c.args(["pub", "--key", "/nonexistent/net.key", "a", "x"]);
    fails_with(&mut c, "/nonexistent/net.key");
    // key from the environment works too
    let key_text = std::fs::read_to_string(&env.key).unwrap();
    let out = Command::new(BIN)
        .args(["pub", "--group", &env.group, "--port", &env.port, "a", "x"])
        .env("STARLING_KEY", key_text.lines().last().unwrap())
        .env_remove("STARLING_KEY_FILE")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn keygen_makes_distinct_valid_keys_and_help_explains() {
    let a = Command::new(BIN).arg("keygen").output().unwrap();
    let b = Command::new(BIN).arg("keygen").output().unwrap();
    assert_ne!(a.stdout, b.stdout);
    let text = String::from_utf8(a.stdout).unwrap();
    starling::NetworkKey::parse(&text).unwrap();
    let help = Command::new(BIN).arg("--help").output().unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    assert!(help.contains("keygen") && help.contains("Quick start"), "{help}");
    let _ = Path::new(BIN);
}

/// Starts `starling serve-echo` and waits until it serves.
fn serve_echo(env: &Env, name: &str) -> Child {
    let mut child =
        env.cmd("serve-echo").args(["--name", name]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    while !line.contains("serving echo") {
        line.clear();
        assert!(err.read_line(&mut line).unwrap() > 0, "serve-echo exited before serving");
    }
    child
}

#[test]
fn call_against_serve_echo_as_separate_processes() {
    let env = Env::new("call");
    let mut server = serve_echo(&env, "echo-1");
    let out = env.cmd("call").args(["echo-1", "echo", "hello mesh"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout(&out), "hello mesh\n");

    // binary, larger than one datagram, byte for byte
    let blob: Vec<u8> = (0..20_000u32).map(|i| (i * 13 % 256) as u8).collect();
    let file = env.dir.join("blob.bin");
    std::fs::write(&file, &blob).unwrap();
    let out = env.cmd("call").args(["echo-1", "echo", "--file", file.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let hex: String = blob.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(stdout(&out), format!("hex {hex}\n"));

    // multi-line text (the built-in `$stats`) is shown as text, one counter a line
    let out = env.cmd("call").args(["echo-1", "$stats"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = stdout(&out);
    assert!(text.starts_with("rx_datagrams ") && text.contains("\ntx_datagrams "), "{text}");
    let out = env.cmd("call").args(["echo-1", "echo", "two\nlines\n"]).output().unwrap();
    assert_eq!(stdout(&out), "two\nlines\n");

    fails_with(env.cmd("call").args(["echo-1", "fail", "it broke"]), "the handler failed: it broke");
    fails_with(env.cmd("call").args(["echo-1", "no.such", "x"]), "no such method");
    fails_with(env.cmd("call").args(["--timeout", "500ms", "nobody", "echo", "x"]), "no node named 'nobody'");
    fails_with(env.cmd("call").args(["--timeout", "500ms", "0123456789abcdef", "echo", "x"]), "unreachable");
    server.kill().unwrap();
    let out = server.wait_with_output().unwrap();
    let log = stdout(&out);
    assert!(log.contains("echo  from ") && log.contains("10 B  hello mesh"), "the server logs each call: {log}");
    assert_eq!(log.lines().filter(|l| l.starts_with("echo ")).count(), 3, "each call ran once: {log}");
    // the server's log shows multi-line text as text too, on indented lines under its header
    assert!(log.contains("10 B\n    two\n    lines\n"), "{log}");
}

/// The README's quick start sends images with a fresh `starling pub --file`, best effort: the
/// subscriber has never heard of that process, and must not lose what it sends while it checks
/// that the sender is fresh (48cd6cf held 16 KiB of it: a 32 KiB file arrived 0 times in 3, and
/// the first of `--repeat 2` was always lost).
#[test]
fn fresh_best_effort_publishers_of_large_files_are_not_eaten_by_the_freshness_check() {
    let env = Env::new("bigfile");
    let mut sub = env.sub(&["img/#", "--json", "--count", "6", "--timeout", "30s"]);
    // Each line is 120 KB of hex: read them as they come, or the pipe fills and blocks `sub`.
    let lines = BufReader::new(sub.stdout.take().unwrap());
    let reader = std::thread::spawn(move || lines.lines().map_while(Result::ok).collect::<Vec<String>>());
    let image: Vec<u8> = (0..60_000u32).map(|i| (i * 13 % 251) as u8).collect();
    let img = env.dir.join("img.bin");
    std::fs::write(&img, &image).unwrap();
    for _ in 0..4 {
        env.publish(&["img/cam", "--file", img.to_str().unwrap()]);
    }
    env.publish(&["img/cam", "--file", img.to_str().unwrap(), "--repeat", "2", "--interval", "100ms"]);
    let status = finish(sub, Duration::from_secs(30)).status;
    let out = reader.join().unwrap();
    assert!(status.success(), "sub got its 6 messages and exited");
    let msgs: Vec<serde_json::Value> = out.iter().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(msgs.len(), 6, "every copy from every fresh process arrived: {} of 6", msgs.len());
    let hex: String = image.iter().map(|b| format!("{b:02x}")).collect();
    assert!(msgs.iter().all(|m| m["hex"] == hex.as_str()), "byte for byte");
}

#[test]
fn reliable_pub_waits_for_subscribers_and_reports_sequence() {
    let env = Env::new("reliable");
    let sub = env.sub(&["r/#", "--json", "--count", "2", "--timeout", "20s"]);
    let blob: Vec<u8> = (0..30_000u32).map(|i| (i % 253) as u8).collect();
    let file = env.dir.join("blob.bin");
    std::fs::write(&file, &blob).unwrap();
    env.publish(&["--reliable", "--ttl", "10s", "r/a", "first"]);
    env.publish(&["--reliable", "r/b", "--file", file.to_str().unwrap()]);
    let out = stdout(&finish(sub, Duration::from_secs(20)));
    let msgs: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(msgs.len(), 2, "{out}");
    assert_eq!(msgs[0]["text"], "first");
    assert_eq!(msgs[0]["seq"], 0, "a reliable message carries its sequence number");
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let t = msgs[0]["t_ms"].as_u64().expect("arrival time in Unix ms");
    assert!(now_ms - 60_000 < t && t <= now_ms, "t_ms {t} is the arrival time (now {now_ms})");
    let hex: String = blob.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(msgs[1]["hex"], hex);
    fails_with(env.cmd("pub").args(["--ttl", "1s", "r/a", "x"]), "--ttl needs --reliable");
}

/// A reliable publication a subscriber never acknowledged (it is frozen, so its time to live
/// passes) fails, naming that subscriber by name and id.
#[test]
fn an_unacknowledged_reliable_publish_names_the_subscriber() {
    let env = Env::new("named");
    let mut sub = env.sub(&["--name", "frozen-sub", "n/#", "--timeout", "30s"]);
    let pid = sub.id().to_string();
    // The publisher learns the subscriber while it discovers (1.5 s); the subscriber is frozen
    // before the publication goes out, so it never acknowledges.
    let publisher = env
        .cmd("pub")
        .args(["--reliable", "--discover", "1500ms", "--ttl", "700ms", "n/a", "x"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(800));
    let stop = Command::new("kill").args(["-STOP", &pid]).status().unwrap();
    assert!(stop.success());
    let out = publisher.wait_with_output().unwrap();
    let _ = Command::new("kill").args(["-CONT", &pid]).status();
    let _ = sub.kill();
    let _ = sub.wait();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("not acknowledged by 1 subscriber(s) (frozen-sub ("), "{err}");
    assert!(err.contains("time to live"), "{err}");
}

/// Durations, ports, interfaces and key files: the mistakes of a first hour get the fix.
#[test]
fn durations_ports_addresses_and_key_files_are_checked_with_the_fix() {
    let env = Env::new("args");
    fails_with(env.cmd("pub").args(["--reliable", "--ttl", "0s", "a", "x"]), "zero");
    fails_with(env.cmd("pub").args(["--reliable", "--ttl", "1000h", "a", "x"]), "at most 24h");
    fails_with(env.cmd("sub").args(["a", "--timeout", "2m30"]), "2m30s");
    fails_with(env.cmd("sub").args(["a", "--timeout", "0"]), "zero");
    // A sum of units is a duration.
    let out = env.cmd("sub").args(["a", "--timeout", "0m0.3s"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut c = Command::new(BIN);
    c.args(["pub", "--key", env.key.to_str().unwrap(), "--port", "0", "a", "x"]);
    fails_with(&mut c, "not in 1..=65535");
    fails_with(env.cmd("pub").args(["--interface", "192.0.2.254", "a", "x"]), "no interface of this machine has");
    fails_with(env.cmd("pub").args(["--interface", "192.0.2.254", "a", "x"]), "127.0.0.1 (lo)");
    let raw = env.dir.join("raw.key");
    std::fs::write(&raw, [0x8a, 0xff, 0x00, 0x13]).unwrap();
    let mut c = Command::new(BIN);
    c.args(["pub", "--key", raw.to_str().unwrap(), "a", "x"]);
    fails_with(&mut c, "is not text: a network key is 64 hexadecimal digits");
    // A port another program holds without sharing it.
    let held = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    let port = held.local_addr().unwrap().port().to_string();
    let mut c = Command::new(BIN);
    c.args(["sub", "--key", env.key.to_str().unwrap(), "--group", &env.group, "--port", &port, "a"]);
    fails_with(&mut c, "is held by a program that does not share it");
}

#[test]
fn gateway_check_config_validates_file_and_flags() {
    let env = Env::new("gwconf");
    let good = env.dir.join("gw.toml");
    let key = env.key.to_str().unwrap().to_owned();
    std::fs::write(&good, format!("key_file = \"{key}\"\nbroker = \"mqtt://u:p@127.0.0.1:1884\"\nin = [\"cmd/#\"]\n"))
        .unwrap();
    let out =
        Command::new(BIN).args(["gateway", "--config", good.to_str().unwrap(), "--check-config"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = stdout(&out);
    assert!(
        text.contains("broker 127.0.0.1:1884") && text.contains("in [\"cmd/#\"]") && text.contains("out [\"#\"]"),
        "{text}"
    );

    let bad = env.dir.join("bad.toml");
    std::fs::write(&bad, "broker = \"mqtt://127.0.0.1\"\nprefx = \"x\"\n").unwrap();
    let mut c = Command::new(BIN);
    c.args(["gateway", "--config", bad.to_str().unwrap(), "--check-config"]).env_remove("STARLING_BROKER");
    fails_with(&mut c, "prefx");
    fails_with(&mut c, "line 2");
    let out = Command::new(BIN)
        .args(["gateway", "--check-config", "--key", &key, "--listen", "127.0.0.1:18999"])
        .env_remove("STARLING_BROKER")
        .output()
        .unwrap();
    assert!(stdout(&out).contains("broker 127.0.0.1:18999 (its own Mosquitto)"), "{}", stdout(&out));
    let mut c = Command::new(BIN);
    c.args(["gateway", "--check-config", "--key", &key, "--broker", "mqtt://h", "--out", "a/#/b"]);
    fails_with(&mut c, "mesh filter 'a/#/b'");

    // Calls from MQTT: off unless allowed, by the file or by flags (which win).
    let check = |args: &[&str]| {
        let out = Command::new(BIN)
            .args(["gateway", "--check-config"])
            .args(args)
            .env_remove("STARLING_BROKER")
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        stdout(&out)
    };
    assert!(check(&["--key", &key, "--broker", "mqtt://h"]).contains("rpc off"));
    let rpc = env.dir.join("rpc.toml");
    std::fs::write(
        &rpc,
        format!("key_file = \"{key}\"\nbroker = \"mqtt://h\"\nrpc = [\"relay-1/relay.*\", \"*/$info\"]\n"),
    )
    .unwrap();
    let rpc = rpc.to_str().unwrap();
    assert!(check(&["--config", rpc]).contains(r#"rpc ["relay-1/relay.*", "*/$info"]"#));
    assert!(check(&["--config", rpc, "--rpc", "svc/echo"]).contains(r#"rpc ["svc/echo"]"#));
    assert!(check(&["--config", rpc, "--no-rpc"]).contains("rpc off"));
    let mut c = Command::new(BIN);
    c.args(["gateway", "--check-config", "--key", &key, "--broker", "mqtt://h", "--rpc", "relay-1"]);
    fails_with(&mut c, "NODE/METHOD");
    std::fs::write(&bad, "broker = \"mqtt://127.0.0.1\"\nrpc = [\"re*lay/x\"]\n").unwrap();
    let mut c = Command::new(BIN);
    c.args(["gateway", "--config", bad.to_str().unwrap(), "--check-config"]).env_remove("STARLING_BROKER");
    fails_with(&mut c, "line 2");
}

/// The likeliest misconfiguration, another key on the same group and port, is named instead of
/// met with silence: `nodes`, `call`, `sub` and `watch` say that another network's datagrams
/// arrived, and so does the log (`STARLING_LOG=info`).
#[test]
fn a_wrong_key_is_named_not_met_with_silence() {
    let env = Env::new("wrongkey");
    let mut server = serve_echo(&env, "echo-1");
    let other = env.dir.join("other.key");
    write_private(&other, &Command::new(BIN).arg("keygen").output().unwrap().stdout);
    let with_other = |sub: &str| {
        let mut c = Command::new(BIN);
        c.arg(sub).arg("--key").arg(&other).args(["--group", &env.group, "--port", &env.port]);
        c.env_remove("STARLING_KEY").env_remove("STARLING_KEY_FILE");
        c
    };
    // serve-echo beacons every 5 s (jittered up to 6.25 s): each window below holds one.
    let out = with_other("nodes").args(["--wait", "7s"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout(&out).contains("0 node(s) seen"), "{}", stdout(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("from another network") && err.contains("another key"), "{err}");
    fails_with(with_other("call").args(["--timeout", "7s", "echo-1", "echo", "x"]), "from another network");
    let out = with_other("sub").args(["--timeout", "8s", "#"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nothing received yet, but heard"), "{err}");
    // watch says so in its report, and the runtime's log says so to anyone who turns it on.
    let out = with_other("watch").args(["--plain", "--duration", "8s"]).env("STARLING_LOG", "info").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout(&out).contains("note heard") && stdout(&out).contains("from another network"), "{}", stdout(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("INFO") && err.contains("from another network on this group and port"), "{err}");
    assert!(!err.contains('\x1b'), "log lines carry no colour codes when stderr is not a terminal: {err:?}");
    // With the right key there is nothing to say.
    let out = env.cmd("nodes").args(["--wait", "3s"]).output().unwrap();
    assert!(stdout(&out).contains("echo-1"), "{}", stdout(&out));
    assert!(!String::from_utf8_lossy(&out.stderr).contains("another network"));
    server.kill().unwrap();
    let _ = server.wait();
}

/// `starling gateway --check-config ARGS` run in `cwd`, with no gateway settings from the
/// environment.
fn gateway_check(cwd: &Path, args: &[&str]) -> Output {
    let mut c = Command::new(BIN);
    c.args(["gateway", "--check-config"]).args(args).current_dir(cwd);
    for var in ["STARLING_KEY", "STARLING_KEY_FILE", "STARLING_BROKER", "STARLING_GROUP", "STARLING_PORT"] {
        c.env_remove(var);
    }
    c.env_remove("STARLING_INTERFACE").env_remove("STARLING_GATEWAY_CONFIG").output().unwrap()
}

/// Runs `--check-config` on a config file of `text` in the test's directory; its stdout, or its
/// stderr as the error.
fn check_file(env: &Env, name: &str, text: &str, args: &[&str]) -> Result<String, String> {
    let path = env.dir.join(name);
    std::fs::write(&path, text).unwrap();
    let mut all = vec!["--config", path.to_str().unwrap()];
    all.extend_from_slice(args);
    let out = gateway_check(&env.dir, &all);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    if out.status.success() {
        Ok(stdout(&out))
    } else {
        Err(err)
    }
}

#[test]
fn gateway_config_errors_name_the_file_mapping_and_line() {
    let env = Env::new("gwconf-errors");
    let head = format!("key_file = \"{}\"\nbroker = \"mqtt://127.0.0.1:1884\"\n", env.key.display());
    // Line 3 opens mapping 1, line 7 mapping 2, whose filter on line 9 is bad.
    let text =
        format!("{head}[[mapping]]\nout = \"state/#\"\nqos = 1\n\n[[mapping]]\nretain = true\nout = \"a/#/b\"\n");
    let err = check_file(&env, "map2.toml", &text, &[]).unwrap_err();
    assert!(err.contains("map2.toml line 9: mapping 2 (line 7): `out` filter 'a/#/b'"), "{err}");
    assert!(err.contains("must be the whole last level, as in 'a/#'"), "the fix: {err}");
    let err =
        check_file(&env, "both.toml", &format!("{head}\n[[mapping]]\nout = \"a\"\nin = \"b\"\n"), &[]).unwrap_err();
    assert!(err.contains("both.toml line 5: mapping 1 (line 4) has both `out` and `in`"), "{err}");
    let err = check_file(&env, "port.toml", &format!("{head}port = 0\n"), &[]).unwrap_err();
    assert!(err.contains("port.toml line 3: `port = 0`") && err.contains("1-65535"), "{err}");
    let err = check_file(&env, "if.toml", &format!("{head}interface = \"nosuchif0\"\n"), &[]).unwrap_err();
    assert!(err.contains("if.toml line 3") && err.contains("nosuchif0"), "{err}");
    // A key file the file names but that is not there: the error says where it was named.
    let err = check_file(&env, "nokey.toml", "broker = \"mqtt://h\"\nkey_file = \"missing.key\"\n", &[]).unwrap_err();
    assert!(err.contains("`key_file` in") && err.contains("nokey.toml line 2") && err.contains("missing.key"), "{err}");
}

#[test]
fn gateway_config_takes_one_filter_or_a_list_and_the_mesh_settings() {
    let env = Env::new("gwconf-lists");
    let head = format!("key_file = \"{}\"\nbroker = \"mqtt://h\"\n", env.key.display());
    let one = check_file(&env, "one.toml", &format!("{head}out = \"home/#\"\nin = \"cmd/#\"\n"), &[]).unwrap();
    let list = check_file(&env, "list.toml", &format!("{head}out = [\"home/#\"]\nin = [\"cmd/#\"]\n"), &[]).unwrap();
    assert_eq!(one, list);
    assert!(one.contains(r#"out ["home/#"], in ["cmd/#"]"#), "{one}");
    let mapped = "[[mapping]]\nout = [\"a/#\", \"b/#\"]\nqos = 1\n[[mapping]]\nin = \"c/#\"\n";
    let out = check_file(&env, "mapped.toml", &format!("{head}{mapped}"), &[]).unwrap();
    assert!(out.contains(r#"out ["a/#", "b/#"], in ["c/#"]"#), "{out}");
    // group, port and interface from the file; flags win.
    let mesh = format!("{head}group = \"239.255.1.2\"\nport = 4999\ninterface = \"127.0.0.1\"\n");
    let out = check_file(&env, "mesh.toml", &mesh, &[]).unwrap();
    assert!(out.contains("mesh 239.255.1.2:4999 on 127.0.0.1"), "{out}");
    let out = check_file(&env, "mesh.toml", &mesh, &["--port", "5001", "--group", "239.255.3.4"]).unwrap();
    assert!(out.contains("mesh 239.255.3.4:5001 on 127.0.0.1"), "{out}");
}

#[test]
fn gateway_config_paths_are_relative_to_its_directory() {
    let env = Env::new("gwconf-paths");
    let conf_dir = env.dir.join("etc");
    std::fs::create_dir_all(&conf_dir).unwrap();
    write_private(&conf_dir.join("gw.key"), &std::fs::read(&env.key).unwrap());
    let conf = conf_dir.join("gw.toml");
    std::fs::write(&conf, "key_file = \"gw.key\"\nbroker = \"mqtt://h\"\n").unwrap();
    // Run from elsewhere: the key is found next to the file, not in the working directory.
    let out = gateway_check(Path::new("/"), &["--config", conf.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // The command line still wins.
    let mut c = Command::new(BIN);
    c.args(["gateway", "--check-config", "--config", conf.to_str().unwrap(), "--key", "/nonexistent/flag.key"]);
    fails_with(c.env_remove("STARLING_BROKER").env_remove("STARLING_KEY_FILE"), "/nonexistent/flag.key");
    // TLS files too: a missing CA is named with the file's directory.
    std::fs::write(&conf, "key_file = \"gw.key\"\nbroker = \"mqtts://h\"\nca = \"ca.pem\"\n").unwrap();
    let out = gateway_check(Path::new("/"), &["--config", conf.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{} does not exist", conf_dir.join("ca.pem").display())), "{err}");
    assert!(err.contains("gw.toml line 3"), "{err}");
    std::fs::write(conf_dir.join("ca.pem"), "not checked by --check-config").unwrap();
    let out = gateway_check(Path::new("/"), &["--config", conf.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}
