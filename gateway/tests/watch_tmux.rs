//! `starling watch` in a real terminal: tmux runs it against nodes on loopback; the test sends
//! keys (select a topic, publish, call a node, filter, save) and reads the screen with
//! `tmux capture-pane`. Needs tmux (`scripts/test-all.sh` installs it).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use starling_integration::isolated_mesh;

const BIN: &str = env!("CARGO_BIN_EXE_starling");

/// A private tmux server (its own socket), killed when the test ends.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn run(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("tmux is needed for this test: apt-get install tmux (scripts/test-all.sh installs it)")
    }

    fn screen(&self) -> String {
        String::from_utf8_lossy(&self.run(&["capture-pane", "-p", "-t", "w"]).stdout).into_owned()
    }

    fn keys(&self, keys: &[&str]) {
        for k in keys {
            let out = self.run(&["send-keys", "-t", "w", k]);
            assert!(out.status.success(), "send-keys {k}: {}", String::from_utf8_lossy(&out.stderr));
        }
    }

    /// Types text literally (no key names).
    fn type_text(&self, text: &str) {
        let out = self.run(&["send-keys", "-t", "w", "-l", text]);
        assert!(out.status.success());
    }

    /// Waits until the screen satisfies `check` (10 s at most), returning it.
    fn wait_for(&self, what: &str, check: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            let s = self.screen();
            if check(&s) {
                return s;
            }
            assert!(start.elapsed() < Duration::from_secs(10), "screen never showed {what}:\n{s}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
    }
}

struct Mesh {
    dir: PathBuf,
    key: PathBuf,
    group: String,
    port: String,
    children: Vec<Child>,
}

impl Mesh {
    fn new() -> Mesh {
        let (group, port) = isolated_mesh();
        let dir = std::env::temp_dir().join(format!("starling-watch-tmux-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = dir.join("net.key");
        let out = Command::new(BIN).arg("keygen").output().unwrap();
        std::fs::write(&key, &out.stdout).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        Mesh { dir, key, group: group.to_string(), port: port.to_string(), children: Vec::new() }
    }

    fn args(&self, sub: &str) -> Vec<String> {
        let key = self.key.to_str().unwrap().to_owned();
        [sub, "--key", &key, "--group", &self.group, "--port", &self.port].map(str::to_owned).to_vec()
    }

    fn cmd(&self, sub: &str) -> Command {
        let mut c = Command::new(BIN);
        c.args(self.args(sub)).env_remove("STARLING_KEY").env_remove("STARLING_KEY_FILE");
        c
    }

    /// Starts a long-running `starling` process and waits for its ready line on stderr.
    fn start(&mut self, sub: &str, args: &[&str], ready: &str) {
        let mut child = self.cmd(sub).args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let mut err = BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        while !line.contains(ready) {
            line.clear();
            assert!(err.read_line(&mut line).unwrap() > 0, "{sub} exited before it was ready");
        }
        self.children.push(child);
    }

    fn publish(&self, args: &[&str]) {
        let out = self.cmd("pub").args(args).output().unwrap();
        assert!(out.status.success(), "pub: {}", String::from_utf8_lossy(&out.stderr));
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn watch_in_tmux_selects_publishes_calls_filters_and_saves() {
    let mut mesh = Mesh::new();
    mesh.start("serve-echo", &["--name", "echo-1"], "serving echo");
    // A subscriber that only listens: its filter shows in the tree before anything is published.
    let mut listener = mesh
        .cmd("sub")
        .args(["--name", "listener", "cam/#", "--json", "--count", "2", "--timeout", "30s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(listener.stderr.take().unwrap());
    let mut line = String::new();
    while !line.contains("listening on") {
        line.clear();
        assert!(err.read_line(&mut line).unwrap() > 0, "sub exited early");
    }

    let tmux = Tmux { socket: format!("starling-watch-test-{}-{}", std::process::id(), mesh.port) };
    let mut watch = vec![BIN.to_owned()];
    watch.extend(mesh.args("watch"));
    watch.extend(["--name", "watcher", "--tick", "100ms"].map(str::to_owned));
    let shell_cmd = watch.iter().map(|a| format!("'{a}'")).collect::<Vec<_>>().join(" ");
    let out = tmux.run(&["new-session", "-d", "-s", "w", "-x", "160", "-y", "45", &shell_cmd]);
    assert!(out.status.success(), "tmux new-session: {}", String::from_utf8_lossy(&out.stderr));

    // Before any message: the nodes, and the listener's filter as a tree row.
    let s = tmux.wait_for("both nodes and the announced filter", |s| {
        s.contains("starling watch") && s.contains("echo-1") && s.contains("listener") && s.contains("#  ")
    });
    assert!(s.contains("sub") && s.contains("cam"), "{s}");
    let s = tmux.wait_for("echo-1's methods from $info", |s| s.contains("echo,fail"));
    assert!(s.contains("0/0/0"), "drop counters of the nodes: {s}");

    // A binary message arrives; select it.
    mesh.publish(&["--name", "camera", "cam/1/frame", "--hex", "00ff41c32800"]);
    tmux.wait_for("the new topic", |s| s.contains("frame"));
    tmux.keys(&["Down"]); // the first row: the filter cam/#
    tmux.wait_for("the filter selected", |s| s.contains("messages on cam/#"));
    tmux.keys(&["Down"]);
    let s = tmux.wait_for("the selected topic's payload", |s| s.contains("messages on cam/1/frame"));
    assert!(s.contains("0000  00 ff 41 c3 28 00"), "hex pane: {s}");
    assert!(s.contains("..A.(."), "text pane beside it: {s}");
    tmux.keys(&["d"]);
    tmux.wait_for("the UTF-8 view", |s| s.contains(r"\0\xffA\xc3(\0") && s.contains("utf-8 [d]"));

    // Publish to the selected topic with escapes; the listener gets the bytes.
    tmux.keys(&["p"]);
    tmux.wait_for("the publish prompt", |s| s.contains("publish to cam/1/frame"));
    tmux.type_text(r"hi\x00\xfe");
    tmux.keys(&["Enter"]);
    let s = tmux.wait_for("the publish result", |s| s.contains("published 4 B to cam/1/frame"));
    assert!(!s.contains("not published"), "{s}");

    // Call a method on a node: Tab to the nodes pane, down to echo-1 (sorted by name).
    tmux.keys(&["Tab"]);
    let mut found = false;
    for _ in 0..6 {
        if tmux.screen().contains(">echo-1") {
            found = true;
            break;
        }
        tmux.keys(&["Down"]);
        std::thread::sleep(Duration::from_millis(150));
    }
    assert!(found, "echo-1 selectable in the nodes pane: {}", tmux.screen());
    tmux.keys(&["c"]);
    tmux.wait_for("the call prompt", |s| s.contains("call on echo-1"));
    tmux.type_text("echo hello from watch");
    tmux.keys(&["Enter"]);
    tmux.wait_for("the reply", |s| s.contains("reply from echo-1 to echo: hello from watch"));

    // Filter the tree, then save what was captured.
    tmux.keys(&["/"]);
    tmux.type_text("nothing-matches-this");
    tmux.keys(&["Enter"]);
    tmux.wait_for("the filtered tree", |s| s.contains("filter 'nothing-matches-this'") && !s.contains("│     frame"));
    let saved = mesh.dir.join("saved.jsonl");
    tmux.keys(&["s", "C-u"]);
    tmux.type_text(saved.to_str().unwrap());
    tmux.keys(&["Enter"]);
    tmux.wait_for("the save result", |s| s.contains("saved 2 message(s)"));
    tmux.keys(&["q"]);
    let start = Instant::now();
    while tmux.run(&["has-session", "-t", "w"]).status.success() {
        assert!(start.elapsed() < Duration::from_secs(5), "watch did not quit on q");
        std::thread::sleep(Duration::from_millis(50));
    }

    // The listener got both messages byte for byte, and replay reads the saved file back.
    let out = listener.wait_with_output().unwrap();
    let got = String::from_utf8_lossy(&out.stdout);
    assert!(got.contains(r#""hex":"00ff41c32800""#) && got.contains(r#""hex":"686900fe""#), "{got}");
    let out = mesh.cmd("replay").arg(&saved).arg("--dry-run").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("cam/1/frame  from camera (") && text.contains("6 B  hex 00ff41c32800"), "{text}");
    assert!(text.contains("4 B  hex 686900fe"), "{text}");
}
