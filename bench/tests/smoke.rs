//! Runs the bench in smoke mode (tiny counts) so it never rots: every row must be present in the
//! table and the JSON, with a figure or a reason why not. Speed is not judged here.

use std::process::Command;

#[test]
fn smoke_run_prints_every_row() {
    let json = std::env::temp_dir().join(format!("starling-bench-smoke-{}.json", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_starling-bench"))
        .args(["--smoke", "--json"])
        .arg(&json)
        .output()
        .expect("the bench runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "bench failed: {}\n{stdout}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let _ = std::fs::remove_file(&json);
    let rows = report["rows"].as_array().expect("rows");
    let sized = [
        ("request/response round trip", "raw UDP ping-pong (std, 2 threads)"),
        ("request/response round trip", "raw UDP ping-pong (tokio, 1 runtime)"),
        ("request/response round trip", "Starling RPC (PSK)"),
        ("request/response round trip", "Starling RPC (identity)"),
        ("request/response round trip", "MQTT req/resp via Mosquitto QoS 0"),
        ("request/response round trip", "MQTT req/resp via Mosquitto QoS 1"),
        ("publish to subscriber, one way", "Starling best effort"),
        ("publish to subscriber, one way", "Starling reliable"),
        ("publish to subscriber, one way", "Mosquitto QoS 0"),
        ("publish to subscriber, one way", "Mosquitto QoS 1"),
        ("throughput, 1 subscriber", "raw UDP multicast send loop"),
        ("throughput, 1 subscriber", "Starling best effort"),
        ("throughput, 1 subscriber", "Starling reliable"),
        ("throughput, 1 subscriber", "Mosquitto QoS 0"),
        ("throughput, 1 subscriber", "Mosquitto QoS 1"),
        ("throughput, 3 subscribers", "raw UDP multicast send loop"),
        ("throughput, 3 subscribers", "Starling best effort"),
        ("throughput, 3 subscribers", "Starling reliable"),
        ("throughput, 3 subscribers", "Mosquitto QoS 0"),
        ("throughput, 3 subscribers", "Mosquitto QoS 1"),
        ("reliable under injected receive loss, 1 subscriber", "Starling reliable, no loss"),
        ("reliable under injected receive loss, 1 subscriber", "Starling reliable, 10% loss"),
        ("reliable under injected receive loss, 1 subscriber", "Starling reliable, 30% loss"),
        ("bytes on the wire per message, 1 subscriber (all directions)", "Starling best effort"),
        ("bytes on the wire per message, 1 subscriber (all directions)", "Mosquitto QoS 1"),
    ];
    for (section, name) in sized {
        for size in [64, 1024, 16384] {
            let row = rows
                .iter()
                .find(|r| r["section"] == section && r["name"] == name && r["size"] == size)
                .unwrap_or_else(|| panic!("missing row {section} / {name} / {size}"));
            assert!(
                row["p50"].is_number() || row["skipped"].is_string(),
                "row {section} / {name} / {size} has neither a figure nor a reason"
            );
            assert!(stdout.contains(name), "the table lacks {name}");
        }
    }
    // The loss rows go up to the largest message, with one and three subscribers, and the
    // completion of single 64 KiB messages.
    for section in
        ["reliable under injected receive loss, 1 subscriber", "reliable under injected receive loss, 3 subscribers"]
    {
        for name in ["Starling reliable, no loss", "Starling reliable, 10% loss", "Starling reliable, 30% loss"] {
            for size in [64, 1024, 16384, 65536] {
                let row = rows
                    .iter()
                    .find(|r| r["section"] == section && r["name"] == name && r["size"] == size)
                    .unwrap_or_else(|| panic!("missing row {section} / {name} / {size}"));
                assert!(row["p50"].is_number() || row["skipped"].is_string(), "row {section} / {name} / {size}");
            }
        }
    }
    let completion = "one 64 KiB reliable message to 3 subscribers, publish to all acknowledged";
    for name in ["Starling reliable, no loss", "Starling reliable, 30% loss"] {
        let row = rows
            .iter()
            .find(|r| r["section"] == completion && r["name"] == name && r["size"] == 65536)
            .unwrap_or_else(|| panic!("missing row {completion} / {name}"));
        assert!(row["p50"].is_number() || row["skipped"].is_string(), "row {completion} / {name}");
    }
    for size in [64, 1024, 1168] {
        let seal = "ChaCha20-Poly1305 seal + open of one frame body";
        let found = rows.iter().any(|r| r["section"] == seal && r["size"] == size && r["p50"].is_number());
        assert!(found, "missing sealing row for {size} B");
    }
    for name in ["Starling node with 1 peers", "Starling node with 16 peers", "Starling node with 128 peers"] {
        let present = rows.iter().any(|r| r["name"] == name) || rows.iter().any(|r| r["skipped"].is_string());
        assert!(present, "missing heap row {name}");
    }
    assert!(rows.iter().any(|r| r["section"] == "handshake"), "missing handshake row");
    assert!(rows.iter().any(|r| r["section"].as_str().unwrap_or("").starts_with("CPU time")), "missing CPU rows");
    assert!(stdout.contains("| what | size |"), "no markdown table");
}
