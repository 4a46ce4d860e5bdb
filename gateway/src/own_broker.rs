//! The broker the gateway runs when none is configured: Mosquitto as a child process, on a
//! loopback address by default, ended with the gateway.
//!
//! Why not a Rust broker inside the process: rumqttd 0.20, the maintained candidate, panicked
//! on the first QoS 1 publish from an MQTT 5 client and lost user properties between its v5 and
//! v4 listeners when tried here; the bridge depends on both. Mosquitto is the reference broker
//! and what users run already.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::process::{Child, Command};

/// Starts Mosquitto listening on `listen` (anonymous access, as a default Mosquitto on loopback; TCP_NODELAY,
/// without which Nagle delays replies of MQTT clients' calls: 87 -> 44 ms a round trip as measured in issue 20)
/// and waits until it accepts connections. The child is killed when the returned value drops.
pub async fn start(listen: SocketAddr) -> Result<Child> {
    if tokio::net::TcpStream::connect(listen).await.is_ok() {
        bail!("something already listens on {listen}: pass it as --broker mqtt://{listen}, or choose --listen");
    }
    let dir = std::env::temp_dir().join(format!("starling-gateway-broker-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "listener {} {}\nallow_anonymous true\nmax_queued_messages 100000\nset_tcp_nodelay true\n",
            listen.port(),
            listen.ip()
        ),
    )
    .with_context(|| format!("writing {}", conf.display()))?;
    let child = Command::new("mosquitto")
        .arg("-c")
        .arg(&conf)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("no --broker given and Mosquitto could not be started: install it (apt-get install mosquitto) or pass --broker mqtt://host:port")?;
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(listen).await.is_ok() {
            return Ok(child);
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    bail!("Mosquitto did not start listening on {listen}")
}
