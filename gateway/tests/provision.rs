//! `starling provision` output read by the firmware's parser (`starling_device::provision`, the
//! same code the firmware runs, built for the host); corrupt, truncated, wrong-version and
//! missing blobs refused with a reason, by the parser and by `starling provision --check`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use starling_device::provision::{GpioPin, ProvisionError, Provisioning, CHECKSUM_LEN};

const BIN: &str = env!("CARGO_BIN_EXE_starling");

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn temp_dir() -> TempDir {
    let mut r = [0u8; 4];
    getrandom::fill(&mut r).unwrap();
    let dir = std::env::temp_dir().join(format!("starling-prov-{}-{:08x}", std::process::id(), u32::from_le_bytes(r)));
    std::fs::create_dir_all(&dir).unwrap();
    TempDir(dir)
}

const KEY_HEX: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

fn key_file(dir: &Path) -> PathBuf {
    let path = dir.join("net.key");
    std::fs::write(&path, format!("# test key\n{KEY_HEX}\n")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

fn starling(args: &[&str], key: &Path) -> Output {
    Command::new(BIN)
        .args(args)
        .arg("--key")
        .arg(key)
        .env_remove("STARLING_KEY")
        .env_remove("STARLING_WIFI_PASS")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap()
}

fn check(path: &Path) -> Output {
    Command::new(BIN).args(["provision", "--check"]).arg(path).output().unwrap()
}

#[test]
fn provision_output_is_read_by_the_firmware_parser() {
    let dir = temp_dir();
    let key = key_file(&dir.0);
    let out = starling(
        &[
            "provision",
            "--wifi-ssid",
            "Home Net",
            "--wifi-pass",
            "hunter2hunter2",
            "--name",
            "kitchen-sensor",
            "--interval",
            "30s",
            "--beacon-interval",
            "2s",
            "--gpio",
            "7",
            "--gpio-active-low",
            "--port",
            "4800",
        ],
        &key,
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let p = Provisioning::decode(&out.stdout).expect("the firmware's parser reads the blob");
    assert_eq!(p.name, "kitchen-sensor");
    assert_eq!(p.wifi_ssid, "Home Net");
    assert_eq!(p.wifi_password, "hunter2hunter2");
    assert_eq!(p.key.as_bytes()[..4], [0x00, 0x11, 0x22, 0x33]);
    assert_eq!(p.publish_interval, Duration::from_secs(30));
    assert_eq!(p.beacon_interval, Duration::from_secs(2));
    assert_eq!(p.gpio, Some(GpioPin { pin: 7, active_low: true }));
    assert_eq!((p.group.to_string().as_str(), p.port), ("239.255.83.76", 4800));

    // As read from flash: the blob followed by erased bytes.
    let mut flash = out.stdout.clone();
    flash.resize(4096, 0xff);
    assert_eq!(Provisioning::decode(&flash), Ok(p));
    let path = dir.0.join("good.prov");
    std::fs::write(&path, &flash).unwrap();
    let shown = check(&path);
    assert!(shown.status.success());
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(text.contains("kitchen-sensor") && !text.contains("hunter2"), "secrets stay out: {text}");
}

#[test]
fn corrupt_truncated_wrong_version_and_missing_blobs_are_refused_with_a_reason() {
    let dir = temp_dir();
    let key = key_file(&dir.0);
    let out = starling(&["provision", "--wifi-ssid", "x", "--name", "n1"], &key);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let blob = out.stdout;

    let mut corrupt = blob.clone();
    corrupt[40] ^= 0x01;
    let mut version = blob.clone();
    version[4] = 9;
    let cases: [(&str, Vec<u8>, ProvisionError, &str); 5] = [
        ("corrupt", corrupt, ProvisionError::Checksum, "checksum mismatch"),
        (
            "truncated",
            blob[..blob.len() - CHECKSUM_LEN / 2].to_vec(),
            ProvisionError::Truncated { needed: blob.len(), got: blob.len() - CHECKSUM_LEN / 2 },
            "truncated",
        ),
        ("version", version, ProvisionError::UnsupportedVersion { found: 9 }, "version 9 is not supported"),
        ("erased", vec![0xff; 4096], ProvisionError::Missing, "no provisioning blob"),
        ("foreign", b"#!/bin/sh\necho hi\n".to_vec(), ProvisionError::NotProvisioning, "magic is not STLP"),
    ];
    for (name, bytes, err, reason) in cases {
        assert_eq!(Provisioning::decode(&bytes), Err(err), "{name}");
        let path = dir.0.join(format!("{name}.prov"));
        std::fs::write(&path, &bytes).unwrap();
        let out = check(&path);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(reason), "{name}: {stderr}");
    }

    // Bad input to `provision` names the field and writes nothing.
    for (args, field) in [
        (&["--wifi-ssid", "x", "--name", "a/b"][..], "`name`"),
        (&["--wifi-ssid", "x", "--name", "n", "--wifi-pass", "short"][..], "`wifi_password`"),
        (&["--wifi-ssid", "x", "--name", "n", "--gpio", "30"][..], "`gpio`"),
        (&["--wifi-ssid", "x", "--name", "n", "--group", "10.0.0.1"][..], "`group`"),
    ] {
        let mut all = vec!["provision"];
        all.extend_from_slice(args);
        let out = starling(&all, &key);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && out.stdout.is_empty() && stderr.contains(field), "{args:?}: {stderr}");
    }
}
