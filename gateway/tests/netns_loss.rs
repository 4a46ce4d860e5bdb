//! What a new user does on a lossy network, with the real binary: in a network namespace this
//! test creates, nftables drops 30% of every UDP datagram on its loopback (multicast and
//! unicast, both directions, as in ../shared/FIELD-NOTES.md). One `starling sub` runs; fresh
//! `starling pub --reliable` processes publish one after another. Every one that exits 0 ("every
//! subscriber has it") must have reached the subscriber, and most of them must get there.
//!
//! Needs root (to create the namespace) and `nft` (scripts/test-all.sh installs nftables).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use starling_integration::process::{scratch_dir, write_private};

const BIN: &str = env!("CARGO_BIN_EXE_starling");

/// A network namespace of this test's own, removed on drop.
struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Result<Netns, String> {
        let name = format!("starling-{tag}-{}", std::process::id());
        run("ip", &["netns", "add", &name])?;
        let ns = Netns(name);
        ns.exec("ip", &["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    fn exec(&self, prog: &str, args: &[&str]) -> Result<(), String> {
        let mut all = vec!["netns", "exec", &self.0, prog];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    fn command(&self, prog: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.0, prog]);
        c
    }

    /// Drops `percent` of every UDP datagram this namespace receives.
    fn lose(&self, percent: u32) -> Result<(), String> {
        self.exec("nft", &["add", "table", "inet", "loss"])?;
        self.exec("nft", &["add", "chain", "inet", "loss", "input", "{ type filter hook input priority 0; }"])?;
        let rule = format!("meta l4proto udp numgen random mod 100 < {percent} drop");
        let mut args = vec!["add", "rule", "inet", "loss", "input"];
        args.extend(rule.split(' '));
        self.exec("nft", &args)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn run(prog: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(prog).args(args).output().map_err(|e| format!("{prog}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{prog} {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr)))
    }
}

#[test]
fn fresh_reliable_publishers_at_thirty_percent_loss_never_claim_a_delivery_that_did_not_happen() {
    const PUBLISHERS: u32 = 16;
    let ns = match Netns::new("loss") {
        Ok(ns) => ns,
        // Only a machine that cannot make namespaces at all (not root) may skip; CI is root.
        Err(e) if std::env::var_os("CI").is_none() => {
            eprintln!("skipped: cannot create a network namespace here ({e})");
            return;
        }
        Err(e) => panic!("CI must be able to create network namespaces: {e}"),
    };
    ns.lose(30).expect("nftables in the namespace (scripts/test-all.sh installs nftables)");
    let dir = scratch_dir("netns-loss", 4790);
    let key = dir.join("net.key");
    let out = Command::new(BIN).arg("keygen").output().unwrap();
    write_private(&key, &out.stdout);
    let key = key.to_str().unwrap().to_string();

    let mut sub = ns
        .command(BIN)
        .args(["sub", "--key", &key, "--json", "plant/#"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("starling sub starts");
    let stdout = sub.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    std::thread::sleep(Duration::from_secs(2));

    let (mut ok, mut failed, mut nobody) = (Vec::new(), 0, 0);
    let start = Instant::now();
    for i in 0..PUBLISHERS {
        let out = ns
            .command(BIN)
            .args(["pub", "--key", &key, "--reliable", "--ttl", "20s", "plant/line1/count", &format!("m{i}")])
            .output()
            .expect("starling pub runs");
        match out.status.code() {
            Some(0) => ok.push(i),
            Some(3) => nobody += 1,
            _ => failed += 1,
        }
        assert!(start.elapsed() < Duration::from_secs(180), "publishers took too long");
    }
    std::thread::sleep(Duration::from_secs(2));
    let _ = sub.kill();
    let _ = sub.wait();
    let got: Vec<String> = rx.try_iter().collect();
    let delivered: Vec<u32> =
        (0..PUBLISHERS).filter(|i| got.iter().any(|l| l.contains(&format!("\"m{i}\"")))).collect();
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!(
        "{} of {PUBLISHERS} exited 0, {failed} failed, {nobody} found no subscriber; the subscriber printed {} of them",
        ok.len(),
        delivered.len()
    );
    let false_success: Vec<&u32> = ok.iter().filter(|i| !delivered.contains(i)).collect();
    assert!(
        false_success.is_empty(),
        "publishers {false_success:?} exited 0 but the subscriber never got their message"
    );
    assert!(ok.len() as u32 * 10 >= PUBLISHERS * 8, "most fresh publishers find and reach the subscriber: {ok:?}");
}
