//! `starling provision` output read by the firmware's parser (`starling_device::provision`, the
//! same code the firmware runs, built for the host); corrupt, truncated, wrong-version and
//! missing blobs refused with a reason, by the parser and by `starling provision --check`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use starling_device::provision::{GpioPin, Membership, ProvisionError, Provisioning, CHECKSUM_LEN};

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
    let Membership::Psk(key) = &p.membership else { panic!("a --key blob is PSK: {p:?}") };
    assert_eq!(key.as_bytes()[..4], [0x00, 0x11, 0x22, 0x33]);
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

/// What the board would refuse is refused when writing and when checking, and the blob (key and
/// Wi-Fi password inside) is readable by its owner only, written with --out or redirected.
#[test]
fn reserved_pins_are_refused_and_blobs_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = temp_dir();
    let key = key_file(&dir.0);
    let base = ["provision", "--wifi-ssid", "Home Net", "--wifi-pass", "hunter2hunter2", "--name", "k"];
    for pin in ["12", "13", "19"] {
        let out = starling(&[&base[..], &["--gpio", pin]].concat(), &key);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains("`gpio`") && err.contains("12-19"), "{pin}: {err}");
    }
    assert!(starling(&[&base[..], &["--gpio", "11"]].concat(), &key).status.success());
    // A blob with a reserved pin, as older versions wrote: --check says the board refuses it.
    let mut p = Provisioning::new("k", "Home Net", "hunter2hunter2", starling::NetworkKey::from_bytes([1; 32]));
    p.gpio = Some(GpioPin { pin: 7, active_low: false });
    let mut blob = p.encode().unwrap();
    // The gpio field (pin 7, active high) is followed by the group, 239.255.83.76.
    let at = blob.windows(6).position(|w| w == [7, 0, 239, 255, 83, 76]).expect("the gpio field");
    blob[at] = 13;
    reseal(&mut blob);
    assert_eq!(Provisioning::decode(&blob).map(|p| p.gpio), Ok(Some(GpioPin { pin: 13, active_low: false })));
    let path = dir.0.join("pin13.prov");
    std::fs::write(&path, &blob).unwrap();
    let out = check(&path);
    assert!(!out.status.success(), "--check must not pass what the board refuses");
    assert!(String::from_utf8_lossy(&out.stderr).contains("GPIO 13"), "{}", String::from_utf8_lossy(&out.stderr));

    let file = dir.0.join("k.prov");
    std::fs::write(&file, b"old, world-readable").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = starling(&[&base[..], &["--out", file.to_str().unwrap()]].concat(), &key);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    assert!(Provisioning::decode(&std::fs::read(&file).unwrap()).is_ok());
    // `> file`: the shell creates it with the umask; the command narrows it.
    let redirected = dir.0.join("redirected.prov");
    let target = std::fs::File::create(&redirected).unwrap();
    std::fs::set_permissions(&redirected, std::fs::Permissions::from_mode(0o644)).unwrap();
    let status =
        Command::new(BIN).args(base).arg("--key").arg(&key).env_remove("STARLING_KEY").stdout(target).status().unwrap();
    assert!(status.success());
    assert_eq!(std::fs::metadata(&redirected).unwrap().permissions().mode() & 0o777, 0o600);
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

/// Makes the checksum of a tampered blob valid again.
fn reseal(blob: &mut [u8]) {
    use blake2::digest::{Update, VariableOutput};
    let end = blob.len() - CHECKSUM_LEN;
    let mut h = blake2::Blake2sVar::new(CHECKSUM_LEN).unwrap();
    h.update(&blob[..end]);
    h.finalize_variable(&mut blob[end..]).unwrap();
}

/// `starling` without a network key in the environment.
fn run(args: &[&str], dir: &Path) -> Output {
    Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .env_remove("STARLING_KEY")
        .env_remove("STARLING_KEY_FILE")
        .env_remove("STARLING_WIFI_PASS")
        .output()
        .unwrap()
}

/// `starling identity new NAME > NAME.id` (mode 0600).
fn identity_file(dir: &Path, name: &str) -> PathBuf {
    let out = run(&["identity", "new", name], dir);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let path = dir.join(format!("{name}.id"));
    std::fs::write(&path, &out.stdout).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

fn allow_add(dir: &Path, list: &str, id: &str, name: &str, rights: &[&str]) {
    let mut args = vec!["allow", "add", id, "--name", name, "--network", "home", "--allowlist", list];
    args.extend_from_slice(rights);
    let out = run(&args, dir);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn identity_blobs_round_trip_and_bad_ones_are_refused_with_a_reason() {
    let dir = temp_dir();
    let d = &dir.0;
    let kitchen = identity_file(d, "kitchen-sensor");
    identity_file(d, "laptop");
    allow_add(d, "net.allow", "kitchen-sensor.id", "kitchen-sensor", &["--publish", "kitchen-sensor/#"]);
    allow_add(d, "net.allow", "laptop.id", "laptop", &["--subscribe", "#", "--subscribe", "home/+/cmd", "--call", "*"]);
    let base = ["provision", "--wifi-ssid", "home", "--name", "kitchen-sensor", "--gpio", "4"];
    let mut args = base.to_vec();
    args.extend_from_slice(&["--identity", "kitchen-sensor.id", "--allowlist", "net.allow"]);
    let out = run(&args, d);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // The firmware's parser reads exactly the identity and allowlist the host files hold.
    let p = Provisioning::decode(&out.stdout).expect("the firmware's parser reads the blob");
    assert_eq!(out.stdout[4], 2, "identity blobs are version 2");
    let (id_file, _) = starling::runtime::identity_file::read_identity(&kitchen).unwrap();
    let list = starling::runtime::identity_file::read_allowlist(&d.join("net.allow")).unwrap();
    let Membership::Identity { identity, allowlist } = &p.membership else { panic!("identity blob: {p:?}") };
    assert_eq!(identity.secret(), id_file.identity.secret());
    assert_eq!(allowlist, &list);
    assert_eq!(allowlist.entries[1].permissions.subscribe.len(), 2);
    assert_eq!(p.membership.fixed_node_id(), Some(id_file.identity.node_id()));

    // --check shows the public key, node id, network and members, never the secret.
    let path = d.join("kitchen.prov");
    std::fs::write(&path, &out.stdout).unwrap();
    let shown = check(&path);
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(shown.status.success(), "{}", String::from_utf8_lossy(&shown.stderr));
    let public = id_file.identity.public().to_string();
    let secret: String = id_file.identity.secret().iter().map(|b| format!("{b:02x}")).collect();
    assert!(text.contains(&public) && text.contains("network: \"home\"") && text.contains("members: 2"), "{text}");
    assert!(text.contains(&format!("node id: {}", id_file.identity.node_id())), "{text}");
    assert!(!text.contains(&secret) && !text.contains(&secret[..16]), "the secret leaked: {text}");

    // Corruption anywhere is refused; so is a sealed blob whose allowlist is bad.
    let mut corrupt = out.stdout.clone();
    corrupt[60] ^= 0x10;
    std::fs::write(&path, &corrupt).unwrap();
    let refused = check(&path);
    assert!(!refused.status.success() && String::from_utf8_lossy(&refused.stderr).contains("checksum mismatch"));
    // The laptop's key replaced by the device's, checksum made valid: a duplicate key.
    let laptop = starling::runtime::identity_file::read_identity(&d.join("laptop.id")).unwrap().0.identity.public();
    let mut dup = out.stdout.clone();
    let at = dup.windows(32).position(|w| w == laptop.0).unwrap();
    dup[at..at + 32].copy_from_slice(&id_file.identity.public().0);
    reseal(&mut dup);
    assert!(matches!(Provisioning::decode(&dup), Err(ProvisionError::Member { entry: 1, field: "key", .. })));
    std::fs::write(&path, &dup).unwrap();
    let refused = check(&path);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && stderr.contains("member 2 `key`") && stderr.contains("twice"), "{stderr}");

    // The CLI refuses an allowlist without the device, or one that does not let it publish.
    identity_file(d, "stranger");
    allow_add(d, "other.allow", "laptop.id", "laptop", &["--subscribe", "#"]);
    let mut args = base.to_vec();
    args.extend_from_slice(&["--identity", "stranger.id", "--allowlist", "net.allow", "--out", "x.prov"]);
    let out = run(&args, d);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("`identity`") && stderr.contains("not on the allowlist"),
        "{stderr}"
    );
    allow_add(d, "mute.allow", "kitchen-sensor.id", "kitchen-sensor", &["--publish", "elsewhere/#"]);
    let mut args = base.to_vec();
    args.extend_from_slice(&["--identity", "kitchen-sensor.id", "--allowlist", "mute.allow", "--out", "x.prov"]);
    let out = run(&args, d);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("publish its readings"), "{stderr}");
    assert!(!d.join("x.prov").exists(), "nothing is written for a refused blob");
    // --identity and --key exclude each other; --identity needs --allowlist.
    let mut args = base.to_vec();
    args.extend_from_slice(&["--identity", "kitchen-sensor.id", "--allowlist", "net.allow", "--key", "net.key"]);
    let out = run(&args, d);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("cannot be used with"));
    let mut args = base.to_vec();
    args.extend_from_slice(&["--identity", "kitchen-sensor.id"]);
    assert!(String::from_utf8_lossy(&run(&args, d).stderr).contains("--allowlist"));
}
