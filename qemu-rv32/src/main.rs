//! Checks of the `starling` core and `starling-device` run on an emulated RV32IMC core
//! (`qemu-system-riscv32 -machine virt`), the ESP32-C3's instruction set and 32-bit `usize`.
//!
//! The host's `#[test]` harness needs `std`, which this target lacks, so these are the core's
//! essential behaviours restated as plain checks: state and provisioning encodings, the flash
//! lease log, and two nodes exchanging sealed frames (publish, a 4 KiB fragmented message, an
//! RPC answered by the device application). Output goes to the virt UART; the exit status to
//! QEMU's test device (0 when every check passed).
//!
//! Run: `cd qemu-rv32 && cargo run --release` (needs `qemu-system-riscv32`).
#![no_std]
#![no_main]

extern crate alloc;

use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::alloc::{GlobalAlloc, Layout};
use core::cell::Cell;
use core::fmt::Write;
use core::net::{IpAddr, Ipv4Addr, SocketAddr};
use core::time::Duration;

use starling::{Boot, Config, Destination, Event, Instant, NetworkKey, Node, NodeId, PersistedState};
use starling_device::lease::{LeaseLog, RamFlash};
use starling_device::provision::{GpioPin, ProvisionError};
use starling_device::{Board, Device, Provisioning};

core::arch::global_asm!(
    ".section .text.start",
    ".global _start",
    "_start:",
    "  la sp, __stack_top",
    "  la t0, __bss_start",
    "  la t1, __bss_end",
    "1: bgeu t0, t1, 2f",
    "  sw zero, 0(t0)",
    "  addi t0, t0, 4",
    "  j 1b",
    "2: call rust_main",
    "3: j 3b",
);

const UART: *mut u8 = 0x1000_0000 as *mut u8;
const TEST_DEVICE: *mut u32 = 0x10_0000 as *mut u32;

struct Uart;

impl Write for Uart {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        for b in s.bytes() {
            // SAFETY: the virt machine's 16550 transmit register; QEMU never makes it busy.
            unsafe { UART.write_volatile(b) };
        }
        Ok(())
    }
}

fn exit(code: u32) -> ! {
    let v = if code == 0 { 0x5555 } else { (code << 16) | 0x3333 };
    // SAFETY: QEMU's sifive_test device at 0x100000 ends the emulation with this status.
    unsafe { TEST_DEVICE.write_volatile(v) };
    loop {
        // Not reached: QEMU has stopped. Wait for interrupts that never come.
        // SAFETY: `wfi` only pauses the hart.
        unsafe { core::arch::asm!("wfi") };
    }
}

/// A bump allocator over the RAM between the end of `.bss` and the stack: the checks are short.
struct Bump {
    next: Cell<usize>,
}

// SAFETY: one hart, no interrupts enabled: nothing runs concurrently.
unsafe impl Sync for Bump {}

const STACK_RESERVE: usize = 1 << 20;

unsafe impl GlobalAlloc for Bump {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        extern "C" {
            static __heap_start: u8;
            static __stack_top: u8;
        }
        let mut next = self.next.get();
        if next == 0 {
            next = core::ptr::addr_of!(__heap_start) as usize;
        }
        let start = (next + layout.align() - 1) & !(layout.align() - 1);
        let end = start + layout.size();
        if end > core::ptr::addr_of!(__stack_top) as usize - STACK_RESERVE {
            return core::ptr::null_mut();
        }
        self.next.set(end);
        start as *mut u8
    }

    unsafe fn dealloc(&self, _: *mut u8, _: Layout) {}
}

#[global_allocator]
static HEAP: Bump = Bump { next: Cell::new(0) };

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    let _ = writeln!(Uart, "FAILED: {info}");
    exit(1)
}

macro_rules! check {
    ($name:expr, $body:expr) => {{
        $body;
        let _ = writeln!(Uart, "ok   {}", $name);
    }};
}

#[no_mangle]
extern "C" fn rust_main() -> ! {
    let _ = writeln!(Uart, "starling checks on riscv32imc (usize is {} bits)", usize::BITS);
    check!("persisted state encoding and lease resume", persisted_state());
    check!("provisioning blob round trip and refusals", provisioning());
    check!("flash lease log across sector switches and a torn write", lease_log());
    check!("two nodes: sealed publish, 4 KiB fragmented message, RPC via Device", two_nodes());
    check!("parity repair symbols rebuild lost chunks (RaptorQ cost below)", parity());
    let _ = writeln!(Uart, "all checks passed");
    exit(0)
}

/// Instructions retired (QEMU counts them exactly with `-icount shift=0`, as the script runs it).
fn instret() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: reads the machine-mode instruction counter CSRs; no side effects.
    unsafe {
        core::arch::asm!("csrr {0}, minstret", "csrr {1}, minstreth", out(reg) lo, out(reg) hi);
    }
    (u64::from(hi) << 32) | u64::from(lo)
}

/// RaptorQ on this instruction set: a message of 4 chunks (a board's largest, 4 KiB) and one of
/// 15 (16 KiB), a quarter of the chunks lost, rebuilt from as many repair symbols. Prints the
/// instructions each step took (an ESP32-C3 at 160 MHz runs roughly 130 million a second).
fn parity() {
    for len in [4096usize, 16384] {
        let msg: Vec<u8> = (0..len).map(|i| (i * 13 + 5) as u8).collect();
        let chunks: Vec<&[u8]> = msg.chunks(1124).collect();
        let k = chunks.len() as u32;
        let lost: Vec<u32> = (0..k).filter(|i| i % 4 == 1).collect();
        let t0 = instret();
        let symbols = starling::parity::encode(chunks.iter().copied(), len as u32, 1124, 0, lost.len() as u32);
        let t1 = instret();
        let held = chunks.iter().enumerate().filter(|(i, _)| !lost.contains(&(*i as u32))).map(|(i, c)| (i as u32, *c));
        let rebuilt = starling::parity::decode(len as u32, 1124, held, symbols.iter().map(|(e, b)| (*e, &b[..])));
        let t2 = instret();
        assert_eq!(rebuilt.as_deref(), Some(&msg[..]), "{len} bytes rebuilt");
        let _ = writeln!(
            Uart,
            "     {len} B, K = {k}, {} lost: encode {} instructions, decode {}",
            lost.len(),
            t1 - t0,
            t2 - t1
        );
    }
}

fn persisted_state() {
    let s = PersistedState { node_id: NodeId::from_u64(0xdead_beef_0123_4567), epoch: 7, lease_end: 1 << 40 };
    let b = s.encode();
    assert_eq!(PersistedState::decode(&b), Ok(s));
    let mut t = b;
    t[20] ^= 1;
    assert!(PersistedState::decode(&t).is_err());
    let (b1, s1) = Boot::resume(Some(s), NodeId::from_u64(1), 1 << 14).unwrap();
    assert_eq!((b1.epoch, b1.first_pn, s1.lease_end), (8, 1 << 40, (1 << 40) + (1 << 14)));
}

fn provisioning() {
    let mut p = Provisioning::new("kitchen-sensor", "home", "correct horse", NetworkKey::from_bytes([9; 32]));
    p.gpio = Some(GpioPin { pin: 8, active_low: true });
    p.publish_interval = Duration::from_millis(86_400_000);
    let mut b = p.encode().unwrap();
    let len = b.len();
    assert_eq!(Provisioning::decode(&b), Ok(p));
    b.resize(4096, 0xff);
    assert!(Provisioning::decode(&b).is_ok());
    b[30] ^= 4;
    assert_eq!(Provisioning::decode(&b), Err(ProvisionError::Checksum));
    assert_eq!(Provisioning::decode(&b[..20]), Err(ProvisionError::Truncated { needed: len, got: 20 }));
}

fn lease_log() {
    let state = |e: u64| PersistedState { node_id: NodeId::from_u64(5), epoch: 1, lease_end: e };
    let (mut log, prev) = LeaseLog::open(RamFlash::new(2 * 4096), 0).unwrap();
    assert_eq!(prev, None);
    for i in 1..=300u64 {
        log.store(&state(i << 32)).unwrap();
    }
    let mut flash = log.into_inner();
    flash.tear_next_write = Some(9);
    let (mut log, prev) = LeaseLog::open(flash, 0).unwrap();
    assert_eq!(prev, Some(state(300 << 32)));
    assert!(log.store(&state(301 << 32)).is_err());
    let (_, prev) = LeaseLog::open(log.into_inner(), 0).unwrap();
    assert_eq!(prev, Some(state(300 << 32)));
}

struct FixedBoard;

impl Board for FixedBoard {
    fn temperature_c(&mut self) -> Option<f32> {
        Some(21.5)
    }
    fn rssi_dbm(&mut self) -> Option<i32> {
        Some(-50)
    }
    fn free_heap(&mut self) -> Option<usize> {
        Some(usize::MAX)
    }
    fn set_output(&mut self, _: GpioPin, _: bool) -> Result<(), &'static str> {
        Ok(())
    }
    fn platform(&self) -> &'static str {
        "qemu-rv32"
    }
}

fn addr(i: usize) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, i as u8 + 1)), 4783)
}

fn two_nodes() {
    let key = NetworkKey::from_bytes([0x42; 32]);
    let prov = Provisioning::new("dev", "home", "", key.clone());
    let mut device = Device::new(prov.clone(), Instant::ZERO);
    let mut board = FixedBoard;
    let cfg = |name: &str, seed: u8| {
        let mut c =
            starling_device::core_config(name, [seed; 32], Duration::from_millis(200), prov.membership.is_identity());
        c.max_message = 4096;
        c
    };
    let boot_a = Boot::resume(None, NodeId::from_u64(0xa), 1 << 14).unwrap().0;
    let mut nodes = [
        Node::new(cfg("dev", 1), &key, boot_a, Instant::ZERO).unwrap(),
        Node::new(cfg("host", 2), &key, Boot::ephemeral(NodeId::from_u64(0xb)), Instant::ZERO).unwrap(),
    ];
    nodes[0].serve("info").unwrap();
    let sub = nodes[1].subscribe("dev/#").unwrap();
    let big: Vec<u8> = (0..4000u32).map(|i| (i * 7) as u8).collect();
    let mut got_small = false;
    let mut got_big = false;
    let mut reply: Option<String> = None;
    let mut call = None;
    let mut buf = vec![0u8; 1200];
    let mut now = Instant::ZERO;
    for tick in 0..2000u32 {
        now += Duration::from_millis(5);
        if tick == 200 {
            nodes[0].publish("dev/small", b"21.5").unwrap();
            nodes[0].publish("dev/big", &big).unwrap();
            call = Some(nodes[1].call(now, NodeId::from_u64(0xa), "info", b"", Duration::from_secs(2)).unwrap());
        }
        let mut flight = Vec::new();
        for (i, n) in nodes.iter_mut().enumerate() {
            if n.poll_timeout().is_some_and(|t| t <= now) {
                n.handle_timeout(now);
            }
            while let Some(s) = n.poll_lease() {
                n.handle_lease_stored(s.lease_end);
            }
            while let Ok(Some(t)) = n.poll_transmit(now, &mut buf) {
                flight.push((i, t.destination, buf[..t.len].to_vec()));
            }
            while let Some(e) = n.poll_event() {
                match e {
                    Event::Request { from, call_id, method, payload } => {
                        let r = device.handle_request(now, &method, &payload, &mut board);
                        n.respond(now, from, call_id, r.as_deref().map_err(|e| e.as_slice()));
                    }
                    Event::Message(m) if m.subscriptions.contains(&sub) => {
                        got_small |= m.topic == "dev/small" && m.payload == b"21.5";
                        got_big |= m.topic == "dev/big" && m.payload == big;
                    }
                    Event::CallDone { id, result } if Some(id) == call => {
                        reply = Some(String::from_utf8(result.unwrap()).unwrap());
                    }
                    _ => {}
                }
            }
        }
        for (from, dest, bytes) in flight {
            for (j, n) in nodes.iter_mut().enumerate() {
                let to_me = match dest {
                    Destination::Multicast => j != from,
                    Destination::Unicast(a) => a == addr(j),
                };
                if to_me {
                    n.handle_datagram(now, addr(from), &bytes);
                }
            }
        }
        if got_small && got_big && reply.is_some() {
            break;
        }
    }
    assert!(got_small, "the small publication arrived");
    assert!(got_big, "the 4 KiB publication arrived whole");
    let reply = reply.expect("the call was answered");
    assert!(reply.contains("\"platform\":\"qemu-rv32\""), "{reply}");
    assert_eq!(nodes[1].stats().drop_auth + nodes[0].stats().drop_auth, 0);
    let _ = Config::embedded("x", [0; 32]);
}
