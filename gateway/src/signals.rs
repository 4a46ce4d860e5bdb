//! Stopping on Ctrl-C and on SIGTERM alike: service managers (systemd, docker) send SIGTERM, and a
//! node stopped by it must leave the mesh politely, not look crashed to its peers for 15 s.
//!
//! [`install`] starts one task that waits for either signal and records it, so a signal that
//! arrives while no one is waiting (between two turns of a loop, or before a loop starts) is not
//! lost: once a handler for SIGTERM is installed, its default action (ending the process) is gone.

use std::sync::OnceLock;

use tokio::sync::watch;

static STOP: OnceLock<watch::Receiver<bool>> = OnceLock::new();

/// Starts listening for Ctrl-C and SIGTERM; call once, early, inside the tokio runtime. Later
/// calls do nothing.
pub fn install() {
    STOP.get_or_init(|| {
        let (tx, rx) = watch::channel(false);
        tokio::spawn(async move {
            wait_for_either().await;
            let _ = tx.send(true);
        });
        rx
    });
}

/// Completes once Ctrl-C or SIGTERM has arrived, at any time since [`install`] (which it calls
/// if nobody has).
pub async fn terminated() {
    install();
    let mut rx = STOP.get().expect("installed above").clone();
    // The sender never goes away before it has sent; if it did, waiting forever is right.
    if rx.wait_for(|stop| *stop).await.is_err() {
        std::future::pending::<()>().await;
    }
}

async fn wait_for_either() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}
