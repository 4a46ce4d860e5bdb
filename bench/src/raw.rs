//! Raw UDP baselines: ping-pong with blocking std sockets on two threads and with tokio sockets in
//! one multi-thread runtime (the layout the Starling rows use), and a multicast send loop.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

use crate::report::Row;
use crate::{Plan, SIZES};

/// Raw UDP round trip, blocking sockets, echo on its own thread.
pub const RTT_STD: &str = "raw UDP ping-pong (std, 2 threads)";
/// Raw UDP round trip, tokio sockets, both ends as tasks of one multi-thread runtime.
pub const RTT_TOKIO: &str = "raw UDP ping-pong (tokio, 1 runtime)";
/// Raw UDP multicast send loop.
pub const SEND_LOOP: &str = "raw UDP multicast send loop";

/// Section name of round trips.
pub const SECTION_RTT: &str = "request/response round trip";

fn bound() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").expect("a loopback socket");
    let _ = Socket::from(s.try_clone().expect("clone")).set_recv_buffer_size(4 << 20);
    s
}

/// Round trips with blocking sockets: the echo runs on its own thread.
pub fn rtt_std(plan: &Plan) -> Vec<Row> {
    let mut rows = Vec::new();
    for size in SIZES {
        let mut samples = Vec::new();
        for _ in 0..plan.runs {
            let (client, echo) = (bound(), bound());
            let echo_addr = echo.local_addr().expect("address");
            echo.set_read_timeout(Some(Duration::from_millis(500))).expect("timeout");
            client.set_read_timeout(Some(Duration::from_secs(1))).expect("timeout");
            let n = plan.iterations;
            let t = std::thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                for _ in 0..n {
                    let Ok((len, from)) = echo.recv_from(&mut buf) else { return };
                    let _ = echo.send_to(&buf[..len], from);
                }
            });
            let msg = crate::payload(size, 0);
            let mut buf = vec![0u8; 65536];
            for _ in 0..n {
                let start = Instant::now();
                client.send_to(&msg, echo_addr).expect("send");
                if client.recv_from(&mut buf).is_err() {
                    break;
                }
                samples.push(start.elapsed());
            }
            let _ = t.join();
        }
        rows.push(Row::latency(SECTION_RTT, RTT_STD, size, &mut samples));
    }
    rows
}

/// Round trips with tokio sockets, client and echo as tasks of the current runtime.
pub async fn rtt_tokio(plan: &Plan) -> Vec<Row> {
    let mut rows = Vec::new();
    for size in SIZES {
        let mut samples = Vec::new();
        for _ in 0..plan.runs {
            let client = tokio::net::UdpSocket::from_std(nonblocking(bound())).expect("tokio socket");
            let echo = tokio::net::UdpSocket::from_std(nonblocking(bound())).expect("tokio socket");
            let echo_addr = echo.local_addr().expect("address");
            let n = plan.iterations;
            let task = tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                for _ in 0..n {
                    let r = tokio::time::timeout(Duration::from_millis(500), echo.recv_from(&mut buf)).await;
                    let Ok(Ok((len, from))) = r else { return };
                    let _ = echo.send_to(&buf[..len], from).await;
                }
            });
            let msg = crate::payload(size, 0);
            let mut buf = vec![0u8; 65536];
            for _ in 0..n {
                let start = Instant::now();
                client.send_to(&msg, echo_addr).await.expect("send");
                match tokio::time::timeout(Duration::from_secs(1), client.recv_from(&mut buf)).await {
                    Ok(Ok(_)) => samples.push(start.elapsed()),
                    _ => break,
                }
            }
            let _ = task.await;
        }
        rows.push(Row::latency(SECTION_RTT, RTT_TOKIO, size, &mut samples));
    }
    rows
}

fn nonblocking(s: UdpSocket) -> UdpSocket {
    s.set_nonblocking(true).expect("non-blocking");
    s
}

/// A socket that receives `group:port` on loopback, as a Starling node's does.
fn group_receiver(group: Ipv4Addr, port: u16) -> UdpSocket {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).expect("socket");
    s.set_reuse_address(true).expect("reuse");
    s.set_reuse_port(true).expect("reuse");
    s.bind(&SocketAddrV4::new(group, port).into()).expect("bind group");
    s.join_multicast_v4(&group, &Ipv4Addr::LOCALHOST).expect("join");
    let _ = s.set_multicast_all_v4(false);
    let _ = s.set_recv_buffer_size(4 << 20);
    s.set_read_timeout(Some(Duration::from_millis(300))).expect("timeout");
    s.into()
}

/// Section name of throughput with `subs` subscribers.
pub fn section_throughput(subs: usize) -> String {
    format!("throughput, {subs} subscriber{}", if subs == 1 { "" } else { "s" })
}

/// One-way multicast datagrams as fast as a blocking send loop goes, each receiver on a thread.
/// The rate is what the slowest receiver got per second; the note says what share arrived.
pub fn throughput(plan: &Plan, subs: usize) -> Vec<Row> {
    let section = section_throughput(subs);
    let mut rows = Vec::new();
    for size in SIZES {
        let n = plan.messages_for(size, plan.messages);
        let mut rates = Vec::new();
        let mut delivery = Vec::new();
        for _ in 0..plan.runs {
            let (group, port) = crate::isolated_mesh();
            let receivers: Vec<UdpSocket> = (0..subs).map(|_| group_receiver(group, port)).collect();
            let done = Arc::new(AtomicBool::new(false));
            let threads: Vec<_> = receivers
                .into_iter()
                .map(|r| {
                    let done = done.clone();
                    std::thread::spawn(move || {
                        let mut buf = vec![0u8; 65536];
                        let (mut got, mut last) = (0usize, Instant::now());
                        let limit = Instant::now() + Duration::from_secs(30);
                        while got < n && Instant::now() < limit {
                            match r.recv(&mut buf) {
                                Ok(_) => {
                                    got += 1;
                                    last = Instant::now();
                                }
                                Err(_) if done.load(Ordering::Relaxed) => break,
                                Err(_) => {}
                            }
                        }
                        (got, last)
                    })
                })
                .collect();
            let tx = bound();
            Socket::from(tx.try_clone().expect("clone")).set_multicast_if_v4(&Ipv4Addr::LOCALHOST).expect("if");
            let dest = SocketAddr::V4(SocketAddrV4::new(group, port));
            let msg = crate::payload(size, 0);
            let start = Instant::now();
            for _ in 0..n {
                let _ = tx.send_to(&msg, dest);
            }
            done.store(true, Ordering::Relaxed);
            let results: Vec<(usize, Instant)> = threads.into_iter().map(|t| t.join().expect("receiver")).collect();
            let worst = results.iter().map(|r| r.0).min().unwrap_or(0);
            let end = results.iter().map(|r| r.1).max().unwrap_or(start);
            let secs = end.duration_since(start).as_secs_f64().max(1e-6);
            rates.push(worst as f64 / secs);
            delivery.push(100.0 * worst as f64 / n as f64);
        }
        let row = Row::rate(&section, SEND_LOOP, Some(size), "msg/s", &mut rates);
        rows.push(row.note(format!("{n} sent per run, slowest receiver got {}", pct_range(&delivery))));
    }
    rows
}

/// `min-max%` of a set of percentages.
pub fn pct_range(v: &[f64]) -> String {
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(0.0, f64::max);
    if v.is_empty() {
        String::from("-")
    } else if (hi - lo).abs() < 0.05 {
        format!("{hi:.1}%")
    } else {
        format!("{lo:.1}-{hi:.1}%")
    }
}
