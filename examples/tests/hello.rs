//! Runs the README's "From Rust" program (`examples/hello.rs`) end to end, on a port of its own.

use std::net::UdpSocket;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn the_readme_program_runs_to_completion() {
    let port = UdpSocket::bind("127.0.0.1:0").and_then(|s| s.local_addr()).expect("a free port").port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_hello"))
        .arg(port.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the example starts");
    let end = Instant::now() + Duration::from_secs(30);
    while child.try_wait().expect("waitable").is_none() {
        if Instant::now() > end {
            let _ = child.kill();
            panic!("the example did not finish within 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("output");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "exit {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}", out.status);
    assert!(stdout.contains("relay.set answered [1]"), "{stdout}");
    assert!(stdout.contains("home/kitchen/temp from") && stdout.contains("(Some(\"kitchen\")): 21.5"), "{stdout}");
    assert!(stdout.contains("display sees kitchen"), "{stdout}");
}
