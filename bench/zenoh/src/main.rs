//! Zenoh baselines for `starling-bench`, on the same machine, same payload sizes: two sessions in
//! peer mode with explicit loopback TCP locators (no scouting), in one tokio multi-thread runtime
//! as the Starling rows are.
//!
//! Measures, for 64 B, 1 KiB and 16 KiB: put -> subscriber one-way latency (p50, p99), get ->
//! queryable round trip (p50, p99), and put throughput to one subscriber.
//!
//! `cargo run --release` from `bench/zenoh/` (add `--quick` for fewer samples).

use std::time::{Duration, Instant};

const SIZES: [usize; 3] = [64, 1024, 16 * 1024];

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1].as_secs_f64() * 1e6
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port()
}

async fn session(listen: u16, connect: Option<u16>) -> zenoh::Session {
    let mut c = zenoh::Config::default();
    c.insert_json5("mode", r#""peer""#).expect("mode");
    c.insert_json5("scouting/multicast/enabled", "false").expect("scouting");
    c.insert_json5("listen/endpoints", &format!(r#"["tcp/127.0.0.1:{listen}"]"#)).expect("listen");
    if let Some(p) = connect {
        c.insert_json5("connect/endpoints", &format!(r#"["tcp/127.0.0.1:{p}"]"#)).expect("connect");
    }
    zenoh::open(c).await.expect("a zenoh session")
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let iterations = if quick { 300 } else { 2000 };
    let messages = if quick { 20_000 } else { 100_000 };
    let (pa, pb) = (free_port(), free_port());
    let a = session(pa, None).await;
    let b = session(pb, Some(pa)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    println!("| what | size | p50 | p99 | unit |");
    println!("|---|---:|---:|---:|---|");
    for size in SIZES {
        let key = format!("bench/oneway/{size}");
        let sub = b.declare_subscriber(&key).await.expect("subscriber");
        let publisher = a.declare_publisher(&key).await.expect("publisher");
        tokio::time::sleep(Duration::from_millis(200)).await;
        let payload = vec![0xa5u8; size];
        let mut samples = Vec::new();
        for _ in 0..iterations {
            let start = Instant::now();
            publisher.put(payload.clone()).await.expect("put");
            match tokio::time::timeout(Duration::from_secs(1), sub.recv_async()).await {
                Ok(Ok(_)) => samples.push(start.elapsed()),
                _ => break,
            }
        }
        samples.sort();
        println!("| Zenoh put -> subscriber | {size} | {:.1} | {:.1} | µs |", percentile(&samples, 50.0), percentile(&samples, 99.0));
    }
    for size in SIZES {
        let key = format!("bench/query/{size}");
        let queryable = b.declare_queryable(&key).await.expect("queryable");
        let reply_key = key.clone();
        let server = tokio::spawn(async move {
            while let Ok(query) = queryable.recv_async().await {
                let bytes = query.payload().map(|p| p.to_bytes().to_vec()).unwrap_or_default();
                let _ = query.reply(&reply_key, bytes).await;
            }
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        let payload = vec![0xa5u8; size];
        let mut samples = Vec::new();
        for _ in 0..iterations {
            let start = Instant::now();
            let replies = a.get(&key).payload(payload.clone()).await.expect("get");
            match tokio::time::timeout(Duration::from_secs(1), replies.recv_async()).await {
                Ok(Ok(_)) => samples.push(start.elapsed()),
                _ => break,
            }
        }
        server.abort();
        samples.sort();
        println!("| Zenoh get -> queryable round trip | {size} | {:.1} | {:.1} | µs |", percentile(&samples, 50.0), percentile(&samples, 99.0));
    }
    for size in SIZES {
        let key = format!("bench/tput/{size}");
        let n = messages.min((64 << 20) / size);
        let sub = b.declare_subscriber(&key).await.expect("subscriber");
        let publisher = a.declare_publisher(&key).await.expect("publisher");
        tokio::time::sleep(Duration::from_millis(200)).await;
        let payload = vec![0xa5u8; size];
        let counter = tokio::spawn(async move {
            let (mut got, mut last) = (0usize, Instant::now());
            while got < n {
                match tokio::time::timeout(Duration::from_millis(500), sub.recv_async()).await {
                    Ok(Ok(_)) => {
                        got += 1;
                        last = Instant::now();
                    }
                    _ => break,
                }
            }
            (got, last)
        });
        let start = Instant::now();
        for _ in 0..n {
            publisher.put(payload.clone()).await.expect("put");
        }
        let (got, last) = counter.await.expect("counter");
        let rate = got as f64 / last.duration_since(start).as_secs_f64().max(1e-6);
        println!("| Zenoh put throughput, 1 subscriber ({got} of {n} arrived) | {size} | {rate:.0} | | msg/s |");
    }
}
