//! Service managers (systemd, docker) stop programs with SIGTERM: a long-running `starling`
//! command must then leave the mesh as it does on Ctrl-C, so its peers see it leave at once
//! instead of waiting 15 s to call it lost.

use std::net::Ipv4Addr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use starling::runtime::{Node, NodeBuilder};
use starling::DownReason;
use starling_integration::process::{finish, scratch_dir, spawn_ready, write_private};
use starling_integration::{down_within, isolated_mesh, random_key};

const BIN: &str = env!("CARGO_BIN_EXE_starling");

/// Sends SIGTERM to `child` (the `kill` tool: no libc in this test).
fn terminate(child: &Child) {
    assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
}

/// Waits (at most `limit`) until the peer named `name` is up, then returns its id.
async fn peer_up(observer: &Node, name: &str, limit: Duration) -> starling::NodeId {
    let end = Instant::now() + limit;
    loop {
        if let Some(p) = observer.peers().await.unwrap().into_iter().find(|p| p.name == name) {
            return p.id;
        }
        assert!(Instant::now() < end, "{name} never appeared");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Starts `args` (which must name the node `name`), stops it with SIGTERM, and checks that it
/// exits 0 within 3 s and that the observer sees it leave (not time out) within 3 s.
async fn leaves_on_sigterm(observer: &Node, mesh: (Ipv4Addr, u16), key: &std::path::Path, args: &[&str], ready: &str) {
    let name = args[args.iter().position(|a| *a == "--name").expect("named") + 1];
    let mut cmd = Command::new(BIN);
    cmd.arg(args[0]).arg("--key").arg(key).args(["--group", &mesh.0.to_string(), "--port", &mesh.1.to_string()]);
    cmd.args(&args[1..]).env_remove("STARLING_KEY").env_remove("STARLING_KEY_FILE").stdout(Stdio::null());
    let child = spawn_ready(&mut cmd, ready);
    let id = peer_up(observer, name, Duration::from_secs(10)).await;
    let mut events = observer.peer_events();
    let sent = Instant::now();
    terminate(&child);
    let left = down_within(&mut events, id, Duration::from_secs(3))
        .await
        .unwrap_or_else(|| panic!("{name} was not seen leaving within 3 s of SIGTERM"));
    assert_eq!(left, DownReason::Left, "{name} must announce that it leaves");
    let out = finish(child, Duration::from_secs(3));
    assert!(out.status.success(), "{name} exited with {:?} after SIGTERM", out.status);
    eprintln!("{name}: seen leaving {} ms after SIGTERM", sent.elapsed().as_millis());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_makes_serve_echo_and_sub_leave_the_mesh_as_ctrl_c_does() {
    let mesh = isolated_mesh();
    let dir = scratch_dir("sigterm", mesh.1);
    let key = random_key();
    let key_file = dir.join("net.key");
    let hex: String = key.as_bytes().iter().map(|b| format!("{b:02x}")).collect();
    write_private(&key_file, hex.as_bytes());
    let observer = NodeBuilder::new(key)
        .name("observer")
        .group(mesh.0)
        .port(mesh.1)
        .beacon_interval(Duration::from_millis(300))
        .open()
        .await
        .unwrap();
    leaves_on_sigterm(&observer, mesh, &key_file, &["serve-echo", "--name", "echo-1"], "serving echo").await;
    leaves_on_sigterm(&observer, mesh, &key_file, &["sub", "--name", "sub-1", "#"], "listening on").await;
    observer.close().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
