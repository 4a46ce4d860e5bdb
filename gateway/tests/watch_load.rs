//! `starling watch` under a flood: publishers in this process push at least 50 000 messages per
//! second on loopback while `watch --plain` keeps printing rates, its memory (VmRSS and VmHWM
//! from /proc) stays under a stated bound, and the full-screen `watch` (in tmux) keeps redrawing
//! and answers a key within a second. Prints the figures.
//!
//! A debug build cannot publish 50 000 messages per second, so the test is ignored there;
//! `scripts/test-all.sh` runs it optimized:
//! `cargo test --release -p starling-gateway --test watch_load -- --ignored --nocapture`.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};

use starling::wire::NodeId;
use starling::{Boot, Config, Destination, NetworkKey, Node};
use starling_integration::{isolated_mesh, random_key};

const BIN: &str = env!("CARGO_BIN_EXE_starling");
/// The stated bound on watch's memory (VmHWM) during the flood. Its defaults keep 1000 topics of
/// 100 messages each, at most 32 MiB of payloads; with these small payloads it needs far less,
/// and without the bounds the 360 000 messages of the flood would not fit.
const RSS_BOUND_KIB: u64 = 64 * 1024;
const TARGET_RATE: f64 = 50_000.0;
const FLOOD: Duration = Duration::from_secs(6);
/// Publishing nodes, each on its own thread.
const PUBLISHERS: u64 = 2;

/// One publishing node: publishes at `TARGET_RATE * 1.2 / PUBLISHERS` messages per second until
/// told to stop, answering the watcher's freshness challenge and sending its beacons as it goes.
fn flood(p: u64, key: NetworkKey, group: SocketAddr, stop: &AtomicBool, sent: &AtomicU64, started: Instant) {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).unwrap();
    let mut id = [0u8; 8];
    getrandom::fill(&mut id).unwrap();
    let boot = Boot::ephemeral(NodeId::from_u64(u64::from_le_bytes(id)));
    let origin = Instant::now();
    let now = || starling::Instant::from_micros(origin.elapsed().as_micros() as u64);
    let mut node = Node::new(Config::new(format!("flood-{p}"), seed), &key, boot, now()).unwrap();
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
    socket.bind(&SocketAddr::from((Ipv4Addr::LOCALHOST, 0)).into()).unwrap();
    socket.set_multicast_if_v4(&Ipv4Addr::LOCALHOST).unwrap(); // stay on loopback
    socket.set_nonblocking(true).unwrap();
    let socket = UdpSocket::from(socket);
    let (mut rx, mut tx) = (vec![0u8; 2048], vec![0u8; 2048]);
    // 50 busy topics per publisher, and every 16th message on a new topic, so that watch's topic
    // limit (1000) is reached and it must evict.
    let topics: Vec<String> = (0..50).map(|t| format!("load/{p}/{t}")).collect();
    let payload: Vec<u8> = (0..30u8).chain([0, 0xff]).collect();
    let per_second = TARGET_RATE * 1.2 / PUBLISHERS as f64;
    let (mut i, mut counted) = (0u64, 0u64);
    while !stop.load(Ordering::Relaxed) && started.elapsed() < FLOOD + Duration::from_secs(2) {
        while let Ok((n, from)) = socket.recv_from(&mut rx) {
            node.handle_datagram(now(), from, &rx[..n]);
        }
        if node.poll_timeout().is_some_and(|t| t <= now()) {
            node.handle_timeout(now());
        }
        if (i as f64) < origin.elapsed().as_secs_f64() * per_second {
            for _ in 0..64 {
                let topic =
                    if i.is_multiple_of(16) { format!("churn/{p}/{i}") } else { topics[(i % 50) as usize].clone() };
                if node.publish(&topic, &payload).is_err() {
                    break; // queue full: send first
                }
                i += 1;
            }
        } else {
            std::thread::sleep(Duration::from_micros(500));
        }
        while let Some(t) = node.poll_transmit(now(), &mut tx).unwrap() {
            let to = match t.destination {
                Destination::Multicast => group,
                Destination::Unicast(addr) => addr,
            };
            let _ = socket.send_to(&tx[..t.len], to);
        }
        while node.poll_event().is_some() {}
        sent.fetch_add(i - std::mem::replace(&mut counted, i), Ordering::Relaxed);
    }
}

/// A private tmux server, killed at the end.
struct Tmux(String);

impl Tmux {
    fn run(&self, args: &[&str]) -> std::process::Output {
        Command::new("tmux").arg("-L").arg(&self.0).args(args).output().expect("tmux (scripts/test-all.sh installs it)")
    }

    fn screen(&self) -> String {
        String::from_utf8_lossy(&self.run(&["capture-pane", "-p", "-t", "w"]).stdout).into_owned()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
    }
}

fn proc_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[test]
#[ignore = "needs an optimized build: cargo test --release -p starling-gateway --test watch_load -- --ignored"]
fn watch_stays_responsive_with_bounded_memory_at_50k_messages_per_second() {
    let (group, port) = isolated_mesh();
    let key = random_key();
    let key_hex: String = key.as_bytes().iter().map(|b| format!("{b:02x}")).collect();
    let mut watch = Command::new(BIN)
        .args(["watch", "--plain", "--tick", "500ms", "--duration", "30s", "--name", "watcher"])
        .args(["--group", &group.to_string(), "--port", &port.to_string()])
        .env("STARLING_KEY", &key_hex)
        .env_remove("STARLING_KEY_FILE")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = watch.id();
    let out = BufReader::new(watch.stdout.take().unwrap());
    let (lines_tx, lines_rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in out.lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                return;
            }
        }
    });

    // The full-screen monitor too, in a private tmux server.
    let key_file = std::env::temp_dir().join(format!("starling-watch-load-{}-{port}.key", std::process::id()));
    std::fs::write(&key_file, &key_hex).unwrap();
    let tmux = Tmux(format!("starling-watch-load-{}-{port}", std::process::id()));
    let ui_cmd = format!("'{BIN}' watch --key '{}' --group {group} --port {port} --name screen", key_file.display());
    let out = tmux.run(&["new-session", "-d", "-s", "w", "-x", "150", "-y", "45", &ui_cmd]);
    assert!(out.status.success(), "tmux: {}", String::from_utf8_lossy(&out.stderr));
    let ui_check = {
        let tmux = Tmux(tmux.0.clone());
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(3));
            let total = |screen: &str| -> u64 {
                screen
                    .lines()
                    .next()
                    .and_then(|l| l.split("msg/s  ").nth(1))
                    .and_then(|r| r.split(' ').next())
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0)
            };
            let a = total(&tmux.screen());
            std::thread::sleep(Duration::from_millis(600));
            let b = total(&tmux.screen());
            tmux.run(&["send-keys", "-t", "w", "Down"]);
            let pressed = Instant::now();
            while !tmux.screen().contains("messages on ") && pressed.elapsed() < Duration::from_secs(5) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let answered = pressed.elapsed();
            let _ = tmux.run(&["send-keys", "-t", "w", "q"]);
            (a, b, answered)
        })
    };

    // Publishers: nodes in this process, each a sans-IO core on its own thread with a plain UDP
    // socket, so the core packs many messages into each datagram (as a busy node's driver does).
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|p| {
            let (key, stop, sent) = (key.clone(), stop.clone(), sent.clone());
            std::thread::spawn(move || flood(p, key, SocketAddr::from((group, port)), &stop, &sent, started))
        })
        .collect();

    let mut reports = Vec::new();
    let mut max_rss = 0;
    let mut last_report = Instant::now();
    let mut sent_at_start: Option<(Instant, u64)> = None;
    while started.elapsed() < FLOOD {
        if let Ok(line) = lines_rx.recv_timeout(Duration::from_millis(100)) {
            if line.starts_with("watch t=") {
                last_report = Instant::now();
                reports.push(line);
            }
        }
        assert!(last_report.elapsed() < Duration::from_secs(3), "watch stopped reporting: {reports:#?}");
        if sent_at_start.is_none() && started.elapsed() > Duration::from_secs(1) {
            sent_at_start = Some((Instant::now(), sent.load(Ordering::Relaxed)));
        }
        max_rss = max_rss.max(proc_kib(pid, "VmRSS:"));
    }
    let (t0, s0) = sent_at_start.unwrap();
    let pub_rate = (sent.load(Ordering::Relaxed) - s0) as f64 / t0.elapsed().as_secs_f64();
    let hwm = proc_kib(pid, "VmHWM:");
    stop.store(true, Ordering::Relaxed);
    for p in publishers {
        p.join().unwrap();
    }
    let _ = watch.kill();
    let _ = watch.wait();
    let (total_a, total_b, key_latency) = ui_check.join().unwrap();
    let _ = std::fs::remove_file(&key_file);

    let rates: Vec<f64> = reports
        .iter()
        .filter_map(|l| l.split_whitespace().find_map(|w| w.strip_prefix("rate=")?.strip_suffix("/s")?.parse().ok()))
        .collect();
    let seen = rates.iter().copied().fold(0.0, f64::max);
    println!("publishers sent {pub_rate:.0} msg/s; watch reported up to {seen:.0} msg/s received");
    println!(
        "watch printed {} reports in {FLOOD:?}; VmRSS max {max_rss} KiB, VmHWM {hwm} KiB (bound {RSS_BOUND_KIB} KiB)",
        reports.len()
    );
    for r in &reports {
        println!("  {r}");
    }
    println!(
        "full-screen watch: header total {total_a} then {total_b} 600 ms later; a key was answered in {} ms",
        key_latency.as_millis()
    );
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    assert!(
        pub_rate >= TARGET_RATE,
        "publishers reached only {pub_rate:.0} msg/s (load average {}: is the machine busy with other work?)",
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    );
    assert!(reports.len() >= 8, "a report every 500 ms: {reports:#?}");
    assert!(seen > 10_000.0, "watch saw the flood: {rates:?}");
    assert!(max_rss > 0 && hwm > 0, "memory figures read from /proc");
    assert!(hwm < RSS_BOUND_KIB, "watch peaked at {hwm} KiB");
    let last = reports.last().unwrap();
    assert!(!last.contains("evicted_topics=0 "), "the topic limit was reached and enforced: {last}");
    let topics: u64 = last.split_whitespace().find_map(|w| w.strip_prefix("topics=")?.parse().ok()).unwrap();
    assert!(topics <= 1000, "{last}");
    assert!(total_b > total_a && total_a > 0, "the screen kept redrawing under the flood: {total_a} then {total_b}");
    assert!(key_latency < Duration::from_secs(1), "a key took {key_latency:?} to show on the screen");
}
