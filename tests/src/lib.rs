//! Helpers for Starling's integration tests: isolated meshes on loopback.

use std::net::{Ipv4Addr, UdpSocket};
use std::time::{Duration, Instant};

/// A multicast group and port no other test uses: a random organisation-local group and a port
/// the OS just handed out, so tests running in parallel never hear each other.
pub fn isolated_mesh() -> (Ipv4Addr, u16) {
    let mut r = [0u8; 2];
    getrandom::fill(&mut r).expect("OS randomness");
    let group = Ipv4Addr::new(239, 255, r[0], r[1].max(1));
    let port = UdpSocket::bind("127.0.0.1:0").and_then(|s| s.local_addr()).expect("a free port").port();
    (group, port)
}

/// A random network key.
pub fn random_key() -> starling::NetworkKey {
    let mut k = [0u8; 32];
    getrandom::fill(&mut k).expect("OS randomness");
    starling::NetworkKey::from_bytes(k)
}

/// Polls `check` every 20 ms until it returns true or `limit` passes; returns whether it did.
pub async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// Waits (at most `limit`) for `events` to report peer `id` down; returns why, or `None` if it
/// was not reported in time. A lagged receiver keeps waiting.
pub async fn down_within(
    events: &mut tokio::sync::broadcast::Receiver<starling::runtime::PeerEvent>,
    id: starling::NodeId,
    limit: Duration,
) -> Option<starling::DownReason> {
    use tokio::sync::broadcast::error::RecvError;
    tokio::time::timeout(limit, async {
        loop {
            match events.recv().await {
                Ok(starling::runtime::PeerEvent::Down { id: gone, reason }) if gone == id => return Some(reason),
                Ok(_) | Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => return None,
            }
        }
    })
    .await
    .ok()
    .flatten()
}

/// Helpers for tests that run the `starling` binary as separate processes.
pub mod process {
    use std::io::{BufRead, BufReader};
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Output, Stdio};
    use std::time::{Duration, Instant};

    /// A fresh directory for one test's files, unique to this process and `port`.
    pub fn scratch_dir(tag: &str, port: u16) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("starling-{tag}-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        dir
    }

    /// Writes a secret (a key or identity file) readable by its owner only, as users are told to.
    pub fn write_private(path: &Path, bytes: &[u8]) {
        std::fs::write(path, bytes).expect("writable");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        }
    }

    /// Spawns `cmd` with its stderr piped and waits (at most 10 s) until it prints `ready` there.
    /// The rest of its stderr is drained by a thread, so the process never blocks or fails on a
    /// full or closed pipe; stdout is whatever the caller set.
    pub fn spawn_ready(cmd: &mut Command, ready: &str) -> Child {
        let mut child = cmd.stderr(Stdio::piped()).spawn().expect("the binary starts");
        let mut err = BufReader::new(child.stderr.take().expect("piped"));
        let mut line = String::new();
        let start = Instant::now();
        while !line.contains(ready) {
            line.clear();
            assert!(err.read_line(&mut line).expect("stderr") > 0, "exited before saying {ready:?}");
            assert!(start.elapsed() < Duration::from_secs(10), "never said {ready:?}");
        }
        std::thread::spawn(move || for _ in err.lines() {});
        child
    }

    /// Waits for a child with a limit; kills it and panics, with what it printed, if it overstays.
    pub fn finish(mut child: Child, limit: Duration) -> Output {
        let start = Instant::now();
        while child.try_wait().expect("wait").is_none() {
            if start.elapsed() > limit {
                let _ = child.kill();
                let out = child.wait_with_output().expect("output");
                panic!("process did not finish in {limit:?}; stdout so far: {}", String::from_utf8_lossy(&out.stdout));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        child.wait_with_output().expect("output")
    }
}
