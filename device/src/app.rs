//! The device's behaviour, sans-IO: when to publish which readings, and how to answer calls.
//!
//! A driver (firmware or host twin) owns a [`Device`] and a core [`starling::Node`], serves
//! [`METHODS`] on the node, and:
//! - at [`Device::poll_timeout`] calls [`Device::poll_readings`] and publishes each [`Reading`];
//! - on `Event::Request` for one of [`METHODS`] calls [`Device::handle_request`] and sends the
//!   result back with `Node::respond`;
//! - answers the built-in `$stats` call with [`stats_text`];
//! - restarts the board once [`Device::reboot_due`] says so (the reply to `reboot` has had time
//!   to leave).

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write;
use core::time::Duration;
use starling::{Config, Instant, Stats};

use crate::provision::{GpioPin, Membership, Provisioning};

/// The methods a device serves.
pub const METHODS: [&str; 4] = ["info", "gpio.set", "config.get", "reboot"];
/// The built-in counters method, answered with [`stats_text`] (as host nodes do).
pub const STATS_METHOD: &str = "$stats";
/// How long after answering `reboot` the device restarts, so the reply and its
/// retransmissions get out first.
pub const REBOOT_DELAY: Duration = Duration::from_secs(1);
/// Firmware identification reported by `info`.
pub const FIRMWARE: &str = concat!("starling-device ", env!("CARGO_PKG_VERSION"));

/// The most peers an identity-mode device keeps; a network-key device keeps [`Config::embedded`]'s
/// 32. An identity peer costs the board about 2.5 KiB of heap (its Noise session, its multicast keys
/// with their replay windows, its allowlist entry), and handshakes with newcomers add a transient
/// peak: on the emulated ESP32-C3 beside Wi-Fi, 13 peers peaked at 111 of 128 KiB, 17 at 124 KiB,
/// and 29 exhausted the heap (`scripts/firmware-emu.sh`). Frames from further members are dropped
/// (`drop_peer_table_full`) until a peer leaves or times out.
pub const IDENTITY_MAX_PEERS: usize = 12;

/// The core's configuration on a device: [`Config::embedded`] with a smaller response cache and
/// event queue, so that the core's heap stays within 32 KiB with 16 peers (`tests/core_heap.rs`),
/// and at most [`IDENTITY_MAX_PEERS`] peers in identity mode (`identity`, see
/// [`Membership::is_identity`]). Calls older than the last 8 may run again if retransmitted late;
/// the device's methods are idempotent.
pub fn core_config(name: &str, rng_seed: [u8; 32], beacon_interval: Duration, identity: bool) -> Config {
    let mut c = Config::embedded(name, rng_seed);
    c.beacon_interval = beacon_interval;
    c.response_cache_entries = 8;
    c.max_events = 16;
    if identity {
        c.max_peers = c.max_peers.min(IDENTITY_MAX_PEERS);
    }
    c
}

/// What the hardware (or its simulation) supplies. Every reading is optional: a board that
/// cannot measure something leaves it out, it is not published.
pub trait Board {
    /// Chip temperature in degrees Celsius.
    fn temperature_c(&mut self) -> Option<f32>;
    /// Signal strength of the Wi-Fi link in dBm.
    fn rssi_dbm(&mut self) -> Option<i32>;
    /// Free heap bytes.
    fn free_heap(&mut self) -> Option<usize>;
    /// Drives the provisioned output on or off; the error says why it could not.
    fn set_output(&mut self, pin: GpioPin, on: bool) -> Result<(), &'static str>;
    /// The platform's name, reported by `info` (e.g. `esp32c3`, `host-twin`).
    fn platform(&self) -> &'static str;
    /// How close the firmware has come to its memory limits since boot, reported by `info` so
    /// that a board owner sees the margin left. Platforms that cannot measure it report nothing.
    fn memory(&mut self) -> Memory {
        Memory::default()
    }
}

/// Memory sizes and high-water marks since boot, in bytes; `None` where not measured.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Memory {
    /// Size of the heap.
    pub heap_size: Option<usize>,
    /// The most heap in use at once.
    pub heap_peak: Option<usize>,
    /// Size of the main stack (the one every async task of the firmware runs on).
    pub stack_size: Option<usize>,
    /// The deepest the main stack has been used.
    pub stack_peak: Option<usize>,
}

/// One reading to publish, best effort.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reading {
    /// `<name>/<quantity>`.
    pub topic: String,
    /// The value as decimal text.
    pub payload: Vec<u8>,
}

/// The device's application state.
#[derive(Debug)]
pub struct Device {
    prov: Provisioning,
    booted: Instant,
    next_publish: Instant,
    reboot_at: Option<Instant>,
    output: Option<bool>,
    rounds: u64,
}

impl Device {
    /// A device that publishes its first readings at `now` (boot), then every publish interval.
    pub fn new(prov: Provisioning, now: Instant) -> Self {
        Device { prov, booted: now, next_publish: now, reboot_at: None, output: None, rounds: 0 }
    }

    /// Its provisioning.
    pub fn provisioning(&self) -> &Provisioning {
        &self.prov
    }

    /// Time since boot.
    pub fn uptime(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.booted)
    }

    /// Rounds of readings published so far.
    pub fn rounds(&self) -> u64 {
        self.rounds
    }

    /// When [`poll_readings`](Self::poll_readings) or [`reboot_due`](Self::reboot_due) next has
    /// something to do.
    pub fn poll_timeout(&self) -> Instant {
        match self.reboot_at {
            Some(r) => r.min(self.next_publish),
            None => self.next_publish,
        }
    }

    /// The readings due at `now` (empty if none are). The next round is one interval later;
    /// a driver that fell behind skips missed rounds instead of bursting.
    pub fn poll_readings(&mut self, now: Instant, board: &mut dyn Board) -> Vec<Reading> {
        if now < self.next_publish {
            return Vec::new();
        }
        let interval = self.prov.publish_interval;
        self.next_publish += interval;
        if self.next_publish <= now {
            self.next_publish = now + interval;
        }
        self.rounds += 1;
        let mut out = Vec::with_capacity(4);
        let name = &self.prov.name;
        let mut push = |quantity: &str, value: String| {
            out.push(Reading { topic: format!("{name}/{quantity}"), payload: value.into_bytes() });
        };
        if let Some(t) = board.temperature_c() {
            push("temperature", format!("{t:.1}"));
        }
        push("uptime", format!("{}", self.uptime(now).as_secs()));
        if let Some(r) = board.rssi_dbm() {
            push("rssi", format!("{r}"));
        }
        if let Some(h) = board.free_heap() {
            push("heap", format!("{h}"));
        }
        out
    }

    /// True once a requested reboot is due: the driver restarts the board.
    pub fn reboot_due(&self, now: Instant) -> bool {
        self.reboot_at.is_some_and(|r| r <= now)
    }

    /// Answers a call to one of [`METHODS`]: `Ok(reply)` or `Err(error text)`, both UTF-8.
    pub fn handle_request(
        &mut self,
        now: Instant,
        method: &str,
        payload: &[u8],
        board: &mut dyn Board,
    ) -> Result<Vec<u8>, Vec<u8>> {
        match method {
            "info" => Ok(self.info(now, board).into_bytes()),
            "config.get" => Ok(self.config_json().into_bytes()),
            "gpio.set" => self.gpio_set(payload, board),
            "reboot" => {
                let at = now + REBOOT_DELAY;
                self.reboot_at = Some(self.reboot_at.map_or(at, |r| r.min(at)));
                Ok(format!("rebooting in {} ms", REBOOT_DELAY.as_millis()).into_bytes())
            }
            other => {
                Err(format!("{other}: not a method of this device (it serves {})", METHODS.join(", ")).into_bytes())
            }
        }
    }

    fn gpio_set(&mut self, payload: &[u8], board: &mut dyn Board) -> Result<Vec<u8>, Vec<u8>> {
        let Some(pin) = self.prov.gpio else {
            return Err(b"gpio.set: this device has no output configured (provision it with --gpio PIN)".to_vec());
        };
        let text = core::str::from_utf8(payload).unwrap_or("").trim();
        let on = match text.to_ascii_lowercase().as_str() {
            "1" | "on" | "true" | "high" => true,
            "0" | "off" | "false" | "low" => false,
            _ => {
                return Err(format!("gpio.set: payload {text:?} is not one of 1/0, on/off, true/false").into_bytes());
            }
        };
        board.set_output(pin, on).map_err(|e| format!("gpio.set: GPIO{}: {e}", pin.pin).into_bytes())?;
        self.output = Some(on);
        Ok(if on { b"on".to_vec() } else { b"off".to_vec() })
    }

    fn info(&self, now: Instant, board: &mut dyn Board) -> String {
        let mut s = String::new();
        s.push('{');
        json_field(&mut s, "name", &json_str(&self.prov.name));
        json_field(&mut s, "platform", &json_str(board.platform()));
        json_field(&mut s, "firmware", &json_str(FIRMWARE));
        json_field(&mut s, "uptime_s", &format!("{}", self.uptime(now).as_secs()));
        json_field(&mut s, "temperature_c", &board.temperature_c().map_or("null".into(), |t| format!("{t:.1}")));
        json_field(&mut s, "rssi_dbm", &board.rssi_dbm().map_or("null".into(), |r| format!("{r}")));
        json_field(&mut s, "free_heap", &board.free_heap().map_or("null".into(), |h| format!("{h}")));
        let output = match (self.prov.gpio, self.output) {
            (None, _) => String::from("null"),
            (Some(g), state) => {
                format!("{{\"pin\":{},\"on\":{}}}", g.pin, state.map_or("null", |on| if on { "true" } else { "false" }))
            }
        };
        json_field(&mut s, "output", &output);
        let m = board.memory();
        let num = |v: Option<usize>| v.map_or("null".into(), |v| format!("{v}"));
        json_field(&mut s, "heap_size", &num(m.heap_size));
        json_field(&mut s, "heap_peak", &num(m.heap_peak));
        json_field(&mut s, "stack_size", &num(m.stack_size));
        json_field(&mut s, "stack_peak", &num(m.stack_peak));
        let methods: Vec<String> = METHODS.iter().map(|m| json_str(m)).collect();
        json_field(&mut s, "methods", &format!("[{}]", methods.join(",")));
        s.pop(); // the last comma
        s.push('}');
        s
    }

    /// The provisioning without its secrets (Wi-Fi password, network key, identity secret), as
    /// JSON. In identity mode it shows the public key, the network name and the member count.
    pub fn config_json(&self) -> String {
        let p = &self.prov;
        let mut s = String::new();
        s.push('{');
        json_field(&mut s, "name", &json_str(&p.name));
        match &p.membership {
            Membership::Psk(_) => json_field(&mut s, "membership", "\"psk\""),
            Membership::Identity { identity, allowlist } => {
                json_field(&mut s, "membership", "\"identity\"");
                json_field(&mut s, "public_key", &json_str(&format!("{}", identity.public())));
                json_field(&mut s, "network", &json_str(&allowlist.network));
                json_field(&mut s, "members", &format!("{}", allowlist.entries.len()));
            }
        }
        json_field(&mut s, "wifi_ssid", &json_str(&p.wifi_ssid));
        json_field(&mut s, "publish_interval_ms", &format!("{}", p.publish_interval.as_millis()));
        json_field(&mut s, "beacon_interval_ms", &format!("{}", p.beacon_interval.as_millis()));
        json_field(&mut s, "gpio_pin", &p.gpio.map_or("null".into(), |g| format!("{}", g.pin)));
        json_field(&mut s, "gpio_active_low", if p.gpio.is_some_and(|g| g.active_low) { "true" } else { "false" });
        json_field(&mut s, "group", &json_str(&format!("{}", p.group)));
        json_field(&mut s, "port", &format!("{}", p.port));
        s.pop();
        s.push('}');
        s
    }
}

/// The core's counters as `name value` lines: the reply to [`STATS_METHOD`].
pub fn stats_text(stats: &Stats) -> String {
    let mut text = String::new();
    for (k, v) in stats.fields() {
        let _ = writeln!(text, "{k} {v}");
    }
    text
}

fn json_field(s: &mut String, key: &str, value: &str) {
    let _ = write!(s, "\"{key}\":{value},");
}

/// A JSON string literal, escaped.
fn json_str(v: &str) -> String {
    let mut s = String::with_capacity(v.len() + 2);
    s.push('"');
    for c in v.chars() {
        match c {
            '"' => s.push_str("\\\""),
            '\\' => s.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(s, "\\u{:04x}", c as u32);
            }
            c => s.push(c),
        }
    }
    s.push('"');
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use starling::NetworkKey;

    #[derive(Default)]
    struct FakeBoard {
        set: Vec<(u8, bool)>,
        broken: bool,
    }

    impl Board for FakeBoard {
        fn temperature_c(&mut self) -> Option<f32> {
            Some(23.44)
        }
        fn rssi_dbm(&mut self) -> Option<i32> {
            Some(-61)
        }
        fn free_heap(&mut self) -> Option<usize> {
            None
        }
        fn set_output(&mut self, pin: GpioPin, on: bool) -> Result<(), &'static str> {
            if self.broken {
                return Err("pin is not an output");
            }
            self.set.push((pin.pin, on));
            Ok(())
        }
        fn platform(&self) -> &'static str {
            "fake"
        }
        fn memory(&mut self) -> Memory {
            Memory { heap_size: Some(131072), heap_peak: Some(70000), ..Memory::default() }
        }
    }

    fn device(gpio: bool) -> Device {
        let mut p = Provisioning::new("kitchen \"sensor\"", "home", "", NetworkKey::from_bytes([1; 32]));
        p.publish_interval = Duration::from_secs(2);
        if gpio {
            p.gpio = Some(GpioPin { pin: 8, active_low: false });
        }
        Device::new(p, Instant::from_millis(1000))
    }

    #[test]
    fn readings_on_schedule_without_bursts() {
        let mut d = device(false);
        let mut b = FakeBoard::default();
        let r = d.poll_readings(Instant::from_millis(1000), &mut b);
        let topics: Vec<&str> = r.iter().map(|r| r.topic.as_str()).collect();
        assert_eq!(topics, ["kitchen \"sensor\"/temperature", "kitchen \"sensor\"/uptime", "kitchen \"sensor\"/rssi"]);
        assert_eq!(r[0].payload, b"23.4");
        assert_eq!(r[1].payload, b"0");
        assert!(d.poll_readings(Instant::from_millis(2999), &mut b).is_empty());
        assert_eq!(d.poll_timeout(), Instant::from_millis(3000));
        let r = d.poll_readings(Instant::from_millis(3000), &mut b);
        assert_eq!(r[1].payload, b"2");
        // Ten seconds late: one round, then the schedule restarts from now.
        assert_eq!(d.poll_readings(Instant::from_millis(13_000), &mut b).len(), 3);
        assert_eq!(d.poll_timeout(), Instant::from_millis(15_000));
        assert_eq!(d.rounds(), 3);
    }

    #[test]
    fn every_method_answers() {
        let mut d = device(true);
        let mut b = FakeBoard::default();
        let now = Instant::from_millis(6000);
        let info = String::from_utf8(d.handle_request(now, "info", b"", &mut b).unwrap()).unwrap();
        assert!(info.starts_with("{\"name\":\"kitchen \\\"sensor\\\"\",\"platform\":\"fake\""), "{info}");
        assert!(info.contains("\"uptime_s\":5,") && info.contains("\"free_heap\":null"), "{info}");
        assert!(info.contains("\"output\":{\"pin\":8,\"on\":null}"), "{info}");
        let memory = "\"heap_size\":131072,\"heap_peak\":70000,\"stack_size\":null,\"stack_peak\":null,";
        assert!(info.contains(memory), "{info}");
        assert_eq!(d.handle_request(now, "gpio.set", b" ON\n", &mut b), Ok(b"on".to_vec()));
        assert_eq!(d.handle_request(now, "gpio.set", b"0", &mut b), Ok(b"off".to_vec()));
        assert_eq!(b.set, [(8, true), (8, false)]);
        let e = d.handle_request(now, "gpio.set", b"maybe", &mut b).unwrap_err();
        assert!(String::from_utf8(e).unwrap().contains("\"maybe\" is not one of"));
        b.broken = true;
        let e = d.handle_request(now, "gpio.set", b"1", &mut b).unwrap_err();
        assert_eq!(e, b"gpio.set: GPIO8: pin is not an output");
        let cfg = String::from_utf8(d.handle_request(now, "config.get", b"", &mut b).unwrap()).unwrap();
        assert!(cfg.contains("\"publish_interval_ms\":2000") && cfg.contains("\"gpio_pin\":8"), "{cfg}");
        assert!(cfg.contains("\"group\":\"239.255.83.76\",\"port\":4783}"), "{cfg}");
        assert!(cfg.contains("\"membership\":\"psk\",") && !cfg.contains("key"), "{cfg}");
        assert!(d.handle_request(now, "nope", b"", &mut b).is_err());
        assert!(!d.reboot_due(now));
        assert!(d.handle_request(now, "reboot", b"", &mut b).is_ok());
        assert_eq!(d.poll_timeout(), Instant::from_millis(1000), "readings were never polled");
        d.poll_readings(now, &mut b);
        assert_eq!(d.poll_timeout(), now + REBOOT_DELAY);
        assert!(!d.reboot_due(now + Duration::from_millis(999)));
        assert!(d.reboot_due(now + REBOOT_DELAY));
    }

    #[test]
    fn gpio_set_without_a_pin_says_how_to_configure_one() {
        let mut d = device(false);
        let e = d.handle_request(Instant::ZERO, "gpio.set", b"1", &mut FakeBoard::default()).unwrap_err();
        assert!(String::from_utf8(e).unwrap().contains("--gpio PIN"));
    }

    #[test]
    fn config_of_an_identity_device_shows_its_public_key_never_its_secret() {
        use starling::identity::{AllowEntry, Allowlist, Identity, Permissions};
        use starling::TopicFilter;
        let identity = Identity::from_secret([5; 32]);
        let public = identity.public();
        let permissions = Permissions { publish: alloc::vec![TopicFilter::new("#").unwrap()], ..Default::default() };
        let allowlist = Allowlist {
            network: "home".into(),
            entries: alloc::vec![AllowEntry { name: "d".into(), key: public, permissions }],
        };
        let p = Provisioning::with_membership("d", "home", "", Membership::Identity { identity, allowlist });
        let cfg = Device::new(p, Instant::ZERO).config_json();
        assert!(
            cfg.contains(&format!(
                "\"membership\":\"identity\",\"public_key\":\"{public}\",\"network\":\"home\",\"members\":1,"
            )),
            "{cfg}"
        );
        assert!(!cfg.contains("0505"), "{cfg}");
    }

    #[test]
    fn stats_lines() {
        let t = stats_text(&Stats::default());
        assert!(t.lines().count() >= 20 && t.lines().all(|l| l.ends_with(" 0")), "{t}");
    }
}
