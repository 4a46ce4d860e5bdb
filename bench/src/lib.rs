//! Starling's benchmark: request/response, one-way latency, throughput, loss, wire bytes, CPU and
//! heap, each measured against raw UDP and MQTT through a real Mosquitto in the same run.
//!
//! Modules: [`report`] holds rows, ratios and output; [`raw`] the raw UDP baselines; [`star`] the
//! Starling measurements over real sockets; [`mqtt`] the broker and its rumqttc clients; [`core`]
//! the sans-IO measurements (wire bytes, sealing, heap); [`heap`] the counting allocator.

#![warn(missing_docs)]

pub mod core;
pub mod heap;
pub mod mqtt;
pub mod raw;
pub mod report;
pub mod star;

use std::time::{Duration, Instant};

pub use report::{Report, Row};

/// Payload sizes every size-dependent row is measured at.
pub const SIZES: [usize; 3] = [64, 1024, 16 * 1024];

/// How much to measure: smoke (for tests), quick (about a minute) or full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Tiny counts: proves every measurement runs, says nothing about speed.
    Smoke,
    /// About a minute.
    Quick,
    /// Several minutes, more runs and more messages.
    Full,
}

/// Counts derived from the mode.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// The mode.
    pub mode: Mode,
    /// Repetitions of every measurement.
    pub runs: usize,
    /// Round trips (or one-way messages) per latency run.
    pub iterations: usize,
    /// Messages per throughput run, at 64 B (fewer for larger payloads).
    pub messages: usize,
    /// Payload bytes per throughput run at most, which bounds the count for large payloads.
    pub byte_budget: usize,
    /// Messages per run under injected loss.
    pub lossy_messages: usize,
    /// Longest a single throughput run may take.
    pub run_limit: Duration,
    /// Only the parts whose name contains this (`rtt`, `one-way`, `throughput`, `loss`, `core`).
    pub only: Option<&'static str>,
}

impl Plan {
    /// The counts of `mode`.
    pub fn new(mode: Mode) -> Plan {
        match mode {
            Mode::Smoke => Plan {
                mode,
                runs: 1,
                iterations: 10,
                messages: 50,
                byte_budget: 256 * 1024,
                lossy_messages: 20,
                run_limit: Duration::from_secs(10),
                only: None,
            },
            Mode::Quick => Plan {
                mode,
                runs: 3,
                iterations: 300,
                messages: 20_000,
                byte_budget: 32 << 20,
                lossy_messages: 300,
                run_limit: Duration::from_secs(15),
                only: None,
            },
            Mode::Full => Plan {
                mode,
                runs: 5,
                iterations: 2_000,
                messages: 100_000,
                byte_budget: 256 << 20,
                lossy_messages: 5_000,
                run_limit: Duration::from_secs(60),
                only: None,
            },
        }
    }

    /// True when the part `name` is to be measured.
    pub fn wants(&self, name: &str) -> bool {
        self.only.is_none_or(|o| name.contains(o))
    }

    /// Messages per throughput run for payloads of `size` bytes.
    pub fn messages_for(&self, size: usize, base: usize) -> usize {
        base.min(self.byte_budget / size.max(1)).max(10)
    }
}

/// Runs every measurement of `plan` and returns the report (ratios filled in).
pub fn run(plan: Plan) -> Report {
    let started = Instant::now();
    let mut report = Report::new(plan);
    let broker = mqtt::Broker::start();
    if let Err(why) = &broker {
        eprintln!("MQTT comparison skipped: {why}");
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a tokio runtime");

    if plan.wants("rtt") {
        eprintln!("[bench] request/response round trips");
        report.extend(raw::rtt_std(&plan));
        report.extend(rt.block_on(raw::rtt_tokio(&plan)));
        report.extend(rt.block_on(star::rtt(&plan)));
        report.extend(rt.block_on(star::rtt_identity(&plan)));
        report.extend(star::handshake(&plan));
        report.extend(rt.block_on(mqtt::rtt(&plan, broker.as_ref())));
    }
    if plan.wants("one-way") {
        eprintln!("[bench] publish to subscriber, one way");
        report.extend(rt.block_on(star::one_way(&plan)));
        report.extend(rt.block_on(mqtt::one_way(&plan, broker.as_ref())));
    }
    if plan.wants("throughput") {
        eprintln!("[bench] throughput");
        for subs in [1, 3] {
            report.extend(raw::throughput(&plan, subs));
            report.extend(rt.block_on(star::throughput(&plan, subs)));
            report.extend(rt.block_on(mqtt::throughput(&plan, broker.as_ref(), subs)));
        }
    }
    if plan.wants("loss") {
        eprintln!("[bench] reliable under injected loss");
        report.extend(rt.block_on(star::lossy(&plan)));
    }
    if plan.wants("core") {
        eprintln!("[bench] wire bytes, sealing, heap");
        report.extend(core::frame_overhead());
        report.extend(rt.block_on(star::wire_bytes(&plan)));
        report.extend(rt.block_on(mqtt::wire_bytes(&plan, broker.as_ref())));
        report.extend(core::seal_cost(&plan));
        report.extend(core::heap_rows());
    }

    drop(rt);
    report.finish(started.elapsed());
    report
}

/// A multicast group and port nobody else uses: a random organisation-local group and a port the
/// OS just handed out.
pub fn isolated_mesh() -> (std::net::Ipv4Addr, u16) {
    let mut r = [0u8; 2];
    getrandom::fill(&mut r).expect("OS randomness");
    let group = std::net::Ipv4Addr::new(239, 255, r[0], r[1].max(1));
    let port = std::net::UdpSocket::bind("127.0.0.1:0").and_then(|s| s.local_addr()).expect("a free port").port();
    (group, port)
}

/// A random network key.
pub fn random_key() -> starling::NetworkKey {
    let mut k = [0u8; 32];
    getrandom::fill(&mut k).expect("OS randomness");
    starling::NetworkKey::from_bytes(k)
}

/// CPU time (user + system) this process has used so far.
pub fn process_cpu() -> Duration {
    // SAFETY: getrusage only writes into the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF with a valid pointer.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let tv = |t: libc::timeval| Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64);
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// The payload of message `i` of `size` bytes (its first 8 bytes carry `i` where they fit).
pub fn payload(size: usize, i: u64) -> Vec<u8> {
    let mut p = vec![0xa5; size];
    let n = size.min(8);
    p[..n].copy_from_slice(&i.to_le_bytes()[..n]);
    p
}

#[global_allocator]
static ALLOCATOR: heap::Counting = heap::Counting;
