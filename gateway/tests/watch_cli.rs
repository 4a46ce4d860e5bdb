//! `starling watch --plain` and `starling replay` as processes on loopback: what plain mode
//! prints, the saved capture, replaying it byte for byte, and errors for bad input.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
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
        let dir = scratch_dir(&format!("watch-{tag}"), port);
        let key = dir.join("net.key");
        write_private(&key, &Command::new(BIN).arg("keygen").output().unwrap().stdout);
        Env { dir, key, group: group.to_string(), port: port.to_string() }
    }

    fn cmd(&self, sub: &str) -> Command {
        let mut c = Command::new(BIN);
        c.arg(sub).arg("--key").arg(&self.key).args(["--group", &self.group, "--port", &self.port]);
        c.env_remove("STARLING_KEY").env_remove("STARLING_KEY_FILE");
        c
    }

    /// Starts a process and waits for `ready` on its stderr.
    fn start(&self, mut c: Command, ready: &str) -> Child {
        spawn_ready(c.stdout(Stdio::piped()), ready)
    }

    fn publish(&self, args: &[&str]) {
        let out = self.cmd("pub").args(args).output().unwrap();
        assert!(out.status.success(), "pub: {}", String::from_utf8_lossy(&out.stderr));
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn wait(child: Child, limit: Duration) -> String {
    String::from_utf8(finish(child, limit).stdout).unwrap()
}

#[test]
fn plain_mode_reports_topics_filters_nodes_and_saves_a_capture_that_replays() {
    let env = Env::new("plain");
    let mut sub = env.cmd("sub");
    sub.args(["--name", "listener", "home/+/cmd", "--timeout", "20s"]);
    let listener = env.start(sub, "listening on");
    let mut w = env.cmd("watch");
    w.args(["--plain", "--tick", "300ms", "--duration", "4s", "--name", "watcher"]);
    let save = env.dir.join("cap.jsonl");
    w.arg("--save").arg(&save);
    let watch = env.start(w, "watching");
    env.publish(&["--name", "camera", "cam/1", "--hex", "00ff41c328"]);
    env.publish(&["--name", "camera", "cam/1", "--hex", "00fe"]);
    env.publish(&["--reliable", "--name", "thermo", "home/kitchen/cmd", "on"]);
    let out = wait(watch, Duration::from_secs(15));
    let last_block: Vec<&str> = {
        let start = out.rfind("watch t=").expect("reports printed");
        out[start..].lines().collect()
    };
    let head = last_block[0];
    assert!(head.contains("total=3 topics=2") && head.contains("lagged=0"), "{out}");
    let cam = last_block.iter().find(|l| l.starts_with("topic cam/1 ")).unwrap_or_else(|| panic!("{out}"));
    assert!(cam.contains("total=2") && cam.contains("qos=best-effort") && cam.contains("from=camera"), "{cam}");
    assert!(cam.ends_with("last=2 B hex 00fe"), "{cam}");
    let cmd = last_block.iter().find(|l| l.starts_with("topic home/kitchen/cmd ")).unwrap();
    assert!(cmd.contains("qos=reliable") && cmd.ends_with("last=2 B on"), "{cmd}");
    assert!(last_block.contains(&"filter home/+/cmd subscribed-by=listener"), "{out}");
    let node = last_block.iter().find(|l| l.starts_with("node listener ")).unwrap_or_else(|| panic!("{out}"));
    assert!(node.contains("epoch=1") && node.contains("drop_auth=0 drop_replay=0 drop_malformed=0"), "{node}");
    assert!(node.contains("filters=home/+/cmd"), "{node}");

    let saved = std::fs::read_to_string(&save).unwrap();
    assert_eq!(saved.lines().count(), 3, "{saved}");
    let first: serde_json::Value = serde_json::from_str(saved.lines().next().unwrap()).unwrap();
    assert_eq!((first["topic"].as_str(), first["payload_b64"].as_str()), (Some("cam/1"), Some("AP9Bwyg=")));
    assert_eq!(first["name"], "camera");
    assert!(first["t_ms"].as_u64().unwrap() > 1_700_000_000_000);

    // Replaying publishes the same bytes again.
    let mut sub = env.cmd("sub");
    sub.args(["cam/#", "--json", "--count", "2", "--timeout", "20s"]);
    let sub = env.start(sub, "listening on");
    let out = env.cmd("replay").arg(&save).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("replayed 3 message(s)"));
    let got = wait(sub, Duration::from_secs(20));
    let hex: Vec<String> =
        got.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["hex"].to_string()).collect();
    assert_eq!(hex, ["\"00ff41c328\"", "\"00fe\""]);
    let mut listener = listener;
    let _ = listener.kill();
    let _ = listener.wait();
}

#[test]
fn bad_input_is_named() {
    let env = Env::new("errors");
    let fails = |c: &mut Command, needle: &str| {
        let out = c.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(needle), "want {needle:?} in: {err}");
    };
    let bad = env.dir.join("bad.jsonl");
    std::fs::write(&bad, "{\"topic\":\"a\",\"payload_b64\":\"AA==\"}\n{\"topic\":\"a\"}\n").unwrap();
    fails(env.cmd("replay").arg(&bad).arg("--dry-run"), "bad.jsonl line 2: field `payload_b64`");
    std::fs::write(&bad, "{\"topic\":\"a/+\",\"payload_b64\":\"AA==\"}\n").unwrap();
    fails(env.cmd("replay").arg(&bad).arg("--dry-run"), "message 1: topic 'a/+'");
    fails(env.cmd("replay").arg(env.dir.join("missing.jsonl")), "cannot read");
    fails(env.cmd("watch").args(["--plain", "--filter", "a/#/b"]), "--filter");
    fails(env.cmd("watch").args(["--plain", "--history", "0"]), "at least 1");
    // Not a terminal and no --plain: say what to do instead.
    fails(env.cmd("watch").stdout(Stdio::piped()), "--plain");
}
