//! Heap budget of the firmware's core: a node with the firmware's bounds ([`core_config`])
//! running the device application among 16 peers that beacon, subscribe to its readings and
//! call it, for a minute of virtual time. Every allocation made while the measured node (or its
//! `Device`) runs is counted; the peak of live bytes must stay within 32 KiB.
//!
//! Print the number: `cargo test -p starling-device --test core_heap -- --nocapture`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Duration;

use starling::{Boot, Config, Destination, Event, Instant, NetworkKey, Node, NodeId};
use starling_device::provision::GpioPin;
use starling_device::{core_config, Board, Device, Provisioning, METHODS};

const BUDGET: isize = 32 * 1024;
const PEERS: usize = 16;

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);
static PEAK: AtomicIsize = AtomicIsize::new(0);

thread_local! {
    static TRACK: Cell<bool> = const { Cell::new(false) };
}

fn tracking() -> bool {
    TRACK.with(Cell::get)
}

fn add(n: isize) {
    let live = LIVE.fetch_add(n, Ordering::Relaxed) + n;
    PEAK.fetch_max(live, Ordering::Relaxed);
}

// SAFETY: every call is forwarded to the system allocator unchanged; only counters are kept.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() && tracking() {
            add(layout.size() as isize);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if tracking() {
            add(-(layout.size() as isize));
        }
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() && tracking() {
            add(new_size as isize - layout.size() as isize);
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Runs `f` with its allocations counted.
fn measured<T>(f: impl FnOnce() -> T) -> T {
    TRACK.with(|t| t.set(true));
    let r = f();
    TRACK.with(|t| t.set(false));
    r
}

/// Runs `f` measured when it is the device's turn.
fn run<T>(dev: bool, f: &mut dyn FnMut() -> T) -> T {
    if dev {
        measured(f)
    } else {
        f()
    }
}

struct QuietBoard;

impl Board for QuietBoard {
    fn temperature_c(&mut self) -> Option<f32> {
        Some(21.5)
    }
    fn rssi_dbm(&mut self) -> Option<i32> {
        Some(-60)
    }
    fn free_heap(&mut self) -> Option<usize> {
        Some(100_000)
    }
    fn set_output(&mut self, _: GpioPin, _: bool) -> Result<(), &'static str> {
        Ok(())
    }
    fn platform(&self) -> &'static str {
        "heap-test"
    }
}

fn addr(i: usize) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, i as u8 + 1)), 7400)
}

#[test]
fn core_heap_with_16_peers_stays_within_32_kib() {
    let key = NetworkKey::from_bytes([0x33; 32]);
    let mut prov = Provisioning::new("kitchen-sensor", "home", "", key.clone());
    prov.publish_interval = Duration::from_secs(1);
    prov.beacon_interval = Duration::from_secs(1);
    prov.gpio = Some(GpioPin { pin: 8, active_low: false });

    // Node 0 is the device; nodes 1..=16 are host peers.
    let (mut device, mut nodes) = measured(|| {
        let config = core_config(&prov.name, [1; 32], prov.beacon_interval);
        let boot = Boot::resume(None, NodeId::from_u64(1000), config.lease_block).unwrap().0;
        let mut node = Node::new(config, &key, boot, Instant::ZERO).unwrap();
        for m in METHODS.iter().chain([&"$stats"]) {
            node.serve(m).unwrap();
        }
        (Device::new(prov.clone(), Instant::ZERO), vec![node])
    });
    for i in 1..=PEERS {
        let mut c = Config::new(format!("peer-{i}"), [i as u8 + 1; 32]);
        c.beacon_interval = Duration::from_secs(1);
        let mut n = Node::new(c, &key, Boot::ephemeral(NodeId::from_u64(i as u64)), Instant::ZERO).unwrap();
        n.subscribe("kitchen-sensor/#").unwrap();
        nodes.push(n);
    }
    let mut board = QuietBoard;
    let mut buf = vec![0u8; 1200];
    let mut answered = 0u64;
    let mut delivered = 0u64;
    let step = Duration::from_millis(10);
    let mut now = Instant::ZERO;
    // One minute of virtual time in 10 ms steps: bounded.
    for tick in 0..6000u32 {
        now += step;
        if std::env::var("HEAP_TRACE").is_ok() && tick % 500 == 0 {
            eprintln!("tick {tick}: live {} peers {}", LIVE.load(Ordering::Relaxed), nodes[0].peers().count());
        }
        let mut inflight: Vec<(usize, Destination, Vec<u8>)> = Vec::new();
        for (i, n) in nodes.iter_mut().enumerate() {
            let dev = i == 0;
            run(dev, &mut || {
                if n.poll_timeout().is_some_and(|t| t <= now) {
                    n.handle_timeout(now);
                }
            });
            if dev {
                measured(|| {
                    for r in device.poll_readings(now, &mut board) {
                        n.publish(&r.topic, &r.payload).unwrap();
                    }
                });
            }
            // Every peer calls the device every 5 s, staggered.
            if !dev && tick % 500 == (i as u32 * 29) % 500 && tick > 300 {
                let _ = n.call(now, NodeId::from_u64(1000), "info", b"", Duration::from_secs(2));
            }
            // Lease, transmits, events: for the device inside the measured scope, except the
            // harness's copies of the datagrams, made outside it.
            loop {
                let sent = run(dev, &mut || {
                    while let Some(s) = n.poll_lease() {
                        n.handle_lease_stored(s.lease_end);
                    }
                    n.poll_transmit(now, &mut buf).ok().flatten()
                });
                let Some(t) = sent else { break };
                inflight.push((i, t.destination, buf[..t.len].to_vec()));
            }
            run(dev, &mut || {
                while let Some(e) = n.poll_event() {
                    match e {
                        Event::Request { from, call_id, method, payload } => {
                            let reply = device.handle_request(now, &method, &payload, &mut board);
                            n.respond(now, from, call_id, reply.as_deref().map_err(|e| e.as_slice()));
                            answered += 1;
                        }
                        Event::Message(_) => delivered += 1,
                        _ => {}
                    }
                }
            });
            // Responses queued just now go out next tick, as a driver sends them on its next turn.
        }
        for (from, dest, bytes) in inflight {
            for (j, n) in nodes.iter_mut().enumerate() {
                let to_me = match dest {
                    Destination::Multicast => j != from,
                    Destination::Unicast(a) => a == addr(j),
                };
                if to_me {
                    if j == 0 {
                        measured(|| n.handle_datagram(now, addr(from), &bytes));
                    } else {
                        n.handle_datagram(now, addr(from), &bytes);
                    }
                }
            }
        }
    }
    let peers_seen = nodes[0].peers().count();
    let peak = PEAK.load(Ordering::Relaxed);
    let live = LIVE.load(Ordering::Relaxed);
    println!(
        "core heap with {PEERS} peers (core_config, 60 s, {answered} calls answered, {delivered} readings \
         delivered): peak {peak} bytes ({:.1} KiB), {live} live at the end; budget {} KiB",
        peak as f64 / 1024.0,
        BUDGET / 1024
    );
    assert_eq!(peers_seen, PEERS, "the device must know every peer for the number to mean anything");
    assert!(answered >= 100, "peers must have called the device ({answered} answered)");
    assert!(delivered >= 16 * 50 * 4, "peers must have received the readings ({delivered})");
    assert!(peak <= BUDGET, "the core's heap peaked at {peak} bytes, over the {BUDGET}-byte budget");
}
