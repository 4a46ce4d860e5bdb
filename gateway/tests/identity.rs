//! Identity mode with the `starling` binary: separate processes on loopback multicast, each with
//! its own identity file, and revocation by editing a running node's allowlist file.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use starling_integration::isolated_mesh;
use starling_integration::process::{finish, scratch_dir, spawn_ready, write_private};

const BIN: &str = env!("CARGO_BIN_EXE_starling");

/// Lines a process printed, each with the time it arrived.
type Lines = Arc<Mutex<Vec<(Instant, String)>>>;

struct Env {
    dir: PathBuf,
    group: String,
    port: String,
}

impl Env {
    fn new(tag: &str) -> Env {
        let (group, port) = isolated_mesh();
        let dir = scratch_dir(&format!("id-{tag}"), port);
        Env { dir, group: group.to_string(), port: port.to_string() }
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    fn run(&self, args: &[&str]) -> Output {
        let out = Command::new(BIN).args(args).current_dir(&self.dir).output().unwrap();
        assert!(out.status.success(), "starling {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        out
    }

    /// `starling identity new NAME > NAME.id`, mode 0600.
    fn identity(&self, name: &str) -> PathBuf {
        let out = self.run(&["identity", "new", name]);
        let path = self.path(&format!("{name}.id"));
        write_private(&path, &out.stdout);
        path
    }

    fn allow(&self, list: &str, id: &Path, name: &str, rights: &[&str]) {
        let mut args =
            vec!["allow", "add", id.to_str().unwrap(), "--name", name, "--allowlist", list, "--network", "test"];
        args.extend_from_slice(rights);
        self.run(&args);
    }

    /// A mesh command as the device `who`, holding the allowlist `list`.
    fn cmd(&self, sub: &str, who: &str, list: &str) -> Command {
        let mut c = Command::new(BIN);
        c.current_dir(&self.dir)
            .arg(sub)
            .args(["--identity", &format!("{who}.id"), "--allowlist", list])
            .args(["--group", &self.group, "--port", &self.port])
            .env_remove("STARLING_KEY")
            .env_remove("STARLING_KEY_FILE");
        c
    }

    /// Starts `starling sub` and waits until it listens; its stdout lines are collected with the
    /// time each arrived.
    fn sub(&self, who: &str, list: &str, args: &[&str]) -> (Child, Lines) {
        let mut child = spawn_ready(self.cmd("sub", who, list).args(args).stdout(Stdio::piped()), "listening on");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let out = BufReader::new(child.stdout.take().unwrap());
        let sink = lines.clone();
        std::thread::spawn(move || {
            for l in out.lines().map_while(Result::ok) {
                sink.lock().unwrap().push((Instant::now(), l));
            }
        });
        (child, lines)
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn wait_exit(child: Child, limit: Duration) {
    finish(child, limit);
}

fn texts(lines: &Lines) -> Vec<String> {
    lines.lock().unwrap().iter().map(|(_, l)| l.clone()).collect()
}

#[test]
fn members_publish_subscribe_and_call_within_their_rights_and_outsiders_get_nothing() {
    let env = Env::new("rights");
    let gw = env.identity("gw");
    let kitchen = env.identity("kitchen");
    let outsider = env.identity("outsider");
    let echo_id = env.identity("echo");
    env.allow("net.allow", &gw, "gw", &["--publish", "#", "--subscribe", "#", "--call", "*"]);
    // A separate device serves echo: one identity file belongs to one running node.
    env.allow("net.allow", &echo_id, "echo", &["--publish", "#", "--subscribe", "#"]);
    env.allow(
        "net.allow",
        &kitchen,
        "kitchen",
        &["--publish", "home/kitchen/#", "--subscribe", "home/+/cmd", "--call", "echo"],
    );
    // The outsider's own list names everyone, but nobody else's names it.
    std::fs::copy(env.path("net.allow"), env.path("out.allow")).unwrap();
    env.allow("out.allow", &outsider, "outsider", &["--publish", "#", "--subscribe", "#", "--call", "*"]);
    let list = String::from_utf8(env.run(&["allow", "list", "--allowlist", "net.allow"]).stdout).unwrap();
    assert!(list.contains("kitchen") && list.contains("home/kitchen/#"), "{list}");

    let (gw_sub, gw_lines) = env.sub("gw", "net.allow", &["home/#", "--timeout", "12s"]);
    let (out_sub, out_lines) = env.sub("outsider", "out.allow", &["#", "--timeout", "12s"]);
    let mut echo =
        env.cmd("serve-echo", "echo", "net.allow").stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();

    let publish = |who: &str, list: &str, topic: &str, text: &str| {
        let out = env.cmd("pub", who, list).args([topic, text]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    // Outside its own entry: refused at once, naming what the entry allows.
    let out = env.cmd("pub", "kitchen", "net.allow").args(["home/hall/temp", "not its topic"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("'kitchen' may publish only on home/kitchen/#") && err.contains("home/hall/temp"), "{err}");
    publish("kitchen", "net.allow", "home/kitchen/temp", "21.5");
    publish("outsider", "out.allow", "home/kitchen/temp", "forged");

    let ok = env.cmd("call", "kitchen", "net.allow").args(["echo", "echo", "hi", "--timeout", "5s"]).output().unwrap();
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    assert_eq!(String::from_utf8_lossy(&ok.stdout).trim(), "hi");
    let denied =
        env.cmd("call", "kitchen", "net.allow").args(["echo", "fail", "x", "--timeout", "5s"]).output().unwrap();
    assert!(!denied.status.success());
    assert!(
        String::from_utf8_lossy(&denied.stderr).to_lowercase().contains("denied"),
        "{}",
        String::from_utf8_lossy(&denied.stderr)
    );
    let stranger =
        env.cmd("call", "outsider", "out.allow").args(["echo", "echo", "hi", "--timeout", "2s"]).output().unwrap();
    assert!(!stranger.status.success(), "the outsider reached the echo node");

    wait_exit(gw_sub, Duration::from_secs(20));
    wait_exit(out_sub, Duration::from_secs(20));
    let _ = echo.kill();
    let _ = echo.wait();
    let got = texts(&gw_lines);
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(got[0].starts_with("home/kitchen/temp  from kitchen") && got[0].ends_with("21.5"), "{got:?}");
    let leaked = texts(&out_lines);
    assert!(leaked.iter().all(|l| l.contains("from outsider")), "the outsider read members' traffic: {leaked:?}");
}

#[test]
fn editing_the_allowlist_file_cuts_a_running_member_off_within_seconds() {
    let env = Env::new("revoke");
    for name in ["source", "stays", "revoked"] {
        let id = env.identity(name);
        env.allow("net.allow", &id, name, &["--publish", "#", "--subscribe", "#"]);
    }
    // The revoked device keeps its own copy, which nobody edits.
    std::fs::copy(env.path("net.allow"), env.path("revoked.allow")).unwrap();
    let (stays, stays_lines) = env.sub("stays", "net.allow", &["data/#", "--timeout", "14s"]);
    let (revoked, revoked_lines) = env.sub("revoked", "revoked.allow", &["data/#", "--timeout", "14s"]);
    let mut source = env
        .cmd("pub", "source", "net.allow")
        .args(["data/tick", "tick", "--repeat", "80", "--interval", "100ms"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(3500));
    let removed_at = Instant::now();
    env.run(&["allow", "remove", "revoked", "--allowlist", "net.allow"]);
    let status = source.wait().unwrap();
    assert!(status.success());
    wait_exit(stays, Duration::from_secs(20));
    wait_exit(revoked, Duration::from_secs(20));
    let stays_n = stays_lines.lock().unwrap().len();
    let revoked_all = revoked_lines.lock().unwrap().clone();
    let before = revoked_all.iter().filter(|(t, _)| *t <= removed_at).count();
    let last = revoked_all.iter().map(|(t, _)| *t).max().unwrap_or(removed_at);
    let cut_after = last.saturating_duration_since(removed_at);
    println!(
        "revocation: stays received {stays_n}/80; revoked received {before} before the edit and {} after, \
         the last {:.2} s after the edit",
        revoked_all.len() - before,
        cut_after.as_secs_f64()
    );
    assert!(stays_n >= 79, "the remaining member lost messages: {stays_n}/80");
    assert!(before >= 20, "the revoked member received before the edit: {before}");
    assert!(cut_after < Duration::from_secs(3), "the revoked member still read {:?} after the edit", cut_after);
}
