//! The provisioning blob: what a device needs to join a mesh, written by `starling provision` and
//! flashed into the device's `starling_prov` partition (node-esp/README.md gives the offsets).
//!
//! Layout, version 1 (integers big-endian):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic `STLP` |
//! | 4 | 1 | format version, 1 |
//! | 5 | 1 | reserved, 0 |
//! | 6 | 2 | body length `N` |
//! | 8 | `N` | body |
//! | 8+`N` | 16 | BLAKE2s-128 (unkeyed) of bytes `0..8+N` |
//!
//! Body v1, in order: network key (32 bytes); node name, Wi-Fi SSID and Wi-Fi password, each a
//! length byte and UTF-8; publish interval and beacon interval in milliseconds (u32 each); GPIO
//! pin (u8, `0xff` for none) and GPIO flags (u8, bit 0: active low); multicast group (4 bytes)
//! and UDP port (u16). Bytes after the checksum are ignored (erased flash reads as `0xff`).

use alloc::string::String;
use alloc::vec::Vec;
use blake2::digest::{Update, VariableOutput};
use blake2::Blake2sVar;
use core::fmt;
use core::net::Ipv4Addr;
use core::time::Duration;
use starling::NetworkKey;

/// First bytes of every blob.
pub const MAGIC: &[u8; 4] = b"STLP";
/// The format version this crate writes and reads.
pub const VERSION: u8 = 1;
/// Bytes before the body: magic, version, reserved byte, body length.
pub const HEADER_LEN: usize = 8;
/// Bytes of the trailing checksum.
pub const CHECKSUM_LEN: usize = 16;
/// Largest blob a valid body can make; a device reads this many bytes from flash.
pub const MAX_BLOB_LEN: usize = 512;
/// Highest GPIO number accepted (the ESP32-C3 has GPIO0..=GPIO21).
pub const MAX_GPIO: u8 = 21;
/// Default multicast group, as on hosts.
pub const DEFAULT_GROUP: Ipv4Addr = Ipv4Addr::new(239, 255, 83, 76);
/// Default UDP port, as on hosts.
pub const DEFAULT_PORT: u16 = 4783;

/// A GPIO output the device drives on `gpio.set`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GpioPin {
    /// GPIO number.
    pub pin: u8,
    /// The output is on when the pin is low (LEDs wired to 3.3 V).
    pub active_low: bool,
}

/// Everything a device is provisioned with.
#[derive(Clone, PartialEq, Eq)]
pub struct Provisioning {
    /// The node name, also the first level of every topic it publishes (1-32 bytes, no `/`, `+`, `#`).
    pub name: String,
    /// Wi-Fi network name (1-32 bytes).
    pub wifi_ssid: String,
    /// Wi-Fi passphrase: empty for an open network, else 8-63 bytes.
    pub wifi_password: String,
    /// The mesh's network key.
    pub key: NetworkKey,
    /// Time between two rounds of readings (1 s to 1 day).
    pub publish_interval: Duration,
    /// Mean time between beacons (1 s to 1 hour).
    pub beacon_interval: Duration,
    /// The output `gpio.set` drives, if any.
    pub gpio: Option<GpioPin>,
    /// The mesh's multicast group.
    pub group: Ipv4Addr,
    /// The mesh's UDP port.
    pub port: u16,
}

impl fmt::Debug for Provisioning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Secrets stay out of logs.
        f.debug_struct("Provisioning")
            .field("name", &self.name)
            .field("wifi_ssid", &self.wifi_ssid)
            .field("wifi_password", &"<redacted>")
            .field("key", &"<redacted>")
            .field("publish_interval", &self.publish_interval)
            .field("beacon_interval", &self.beacon_interval)
            .field("gpio", &self.gpio)
            .field("group", &self.group)
            .field("port", &self.port)
            .finish()
    }
}

/// Why a provisioning blob was refused. The device logs it and waits for a valid blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProvisionError {
    /// The partition is erased (all `0xff`): nothing was ever written there.
    Missing,
    /// The first bytes are not `STLP`: something else was written there.
    NotProvisioning,
    /// A format version this firmware does not read.
    UnsupportedVersion {
        /// The blob's version.
        found: u8,
    },
    /// The blob ends before its header says it does.
    Truncated {
        /// Bytes the header announces (header, body, checksum).
        needed: usize,
        /// Bytes present.
        got: usize,
    },
    /// The checksum does not match: a corrupted or partly written blob.
    Checksum,
    /// A field is missing, malformed or out of range.
    Field {
        /// The field's name, as in [`Provisioning`].
        field: &'static str,
        /// What is wrong.
        problem: &'static str,
    },
}

impl fmt::Display for ProvisionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProvisionError::Missing => {
                f.write_str("no provisioning blob (partition erased); write one made by `starling provision`")
            }
            ProvisionError::NotProvisioning => {
                f.write_str("the provisioning partition does not hold a Starling blob (magic is not STLP)")
            }
            ProvisionError::UnsupportedVersion { found } => {
                write!(f, "provisioning blob version {found} is not supported (this firmware reads version {VERSION})")
            }
            ProvisionError::Truncated { needed, got } => {
                write!(f, "provisioning blob truncated: header announces {needed} bytes, {got} present")
            }
            ProvisionError::Checksum => {
                f.write_str("provisioning blob checksum mismatch (corrupted or partly written)")
            }
            ProvisionError::Field { field, problem } => write!(f, "provisioning field `{field}` {problem}"),
        }
    }
}

impl core::error::Error for ProvisionError {}

fn checksum(bytes: &[u8]) -> [u8; CHECKSUM_LEN] {
    let mut h = Blake2sVar::new(CHECKSUM_LEN).expect("16 is a valid BLAKE2s output length");
    h.update(bytes);
    let mut out = [0u8; CHECKSUM_LEN];
    h.finalize_variable(&mut out).expect("length matches");
    out
}

fn field(field: &'static str, problem: &'static str) -> ProvisionError {
    ProvisionError::Field { field, problem }
}

/// Checks a node name for use as a topic level: 1-32 bytes, no `/`, `+`, `#` or NUL.
pub fn check_name(name: &str) -> Result<(), ProvisionError> {
    if name.is_empty() || name.len() > starling::wire::MAX_NAME_LEN {
        return Err(field("name", "must be 1 to 32 bytes"));
    }
    if name.chars().any(|c| matches!(c, '/' | '+' | '#' | '\0') || c.is_control()) {
        return Err(field("name", "must not contain '/', '+', '#' or control characters (it is a topic level)"));
    }
    Ok(())
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Provisioning {
    /// A provisioning with default intervals (readings every 10 s, beacons every 5 s), no GPIO
    /// and the default group and port.
    pub fn new(name: &str, wifi_ssid: &str, wifi_password: &str, key: NetworkKey) -> Self {
        Provisioning {
            name: name.into(),
            wifi_ssid: wifi_ssid.into(),
            wifi_password: wifi_password.into(),
            key,
            publish_interval: Duration::from_secs(10),
            beacon_interval: Duration::from_secs(5),
            gpio: None,
            group: DEFAULT_GROUP,
            port: DEFAULT_PORT,
        }
    }

    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), ProvisionError> {
        check_name(&self.name)?;
        if self.wifi_ssid.is_empty() || self.wifi_ssid.len() > 32 {
            return Err(field("wifi_ssid", "must be 1 to 32 bytes"));
        }
        let p = self.wifi_password.len();
        if p != 0 && !(8..=63).contains(&p) {
            return Err(field("wifi_password", "must be empty (open network) or 8 to 63 bytes (WPA2)"));
        }
        if !(1_000..=86_400_000).contains(&millis(self.publish_interval)) {
            return Err(field("publish_interval", "must be between 1 s and 1 day"));
        }
        if !(1_000..=3_600_000).contains(&millis(self.beacon_interval)) {
            return Err(field("beacon_interval", "must be between 1 s and 1 hour"));
        }
        if let Some(g) = self.gpio {
            if g.pin > MAX_GPIO {
                return Err(field("gpio", "must be a GPIO number from 0 to 21"));
            }
        }
        if !self.group.is_multicast() {
            return Err(field("group", "must be an IPv4 multicast address (224.0.0.0/4)"));
        }
        if self.port == 0 {
            return Err(field("port", "must not be 0"));
        }
        Ok(())
    }

    /// Encodes the blob (layout in the module docs), after [`validate`](Self::validate).
    pub fn encode(&self) -> Result<Vec<u8>, ProvisionError> {
        self.validate()?;
        let mut b = Vec::with_capacity(MAX_BLOB_LEN);
        b.extend_from_slice(MAGIC);
        b.push(VERSION);
        b.push(0);
        b.extend_from_slice(&[0, 0]); // body length, filled in below
        b.extend_from_slice(self.key.as_bytes());
        for s in [&self.name, &self.wifi_ssid, &self.wifi_password] {
            b.push(s.len() as u8); // validated: each at most 63 bytes
            b.extend_from_slice(s.as_bytes());
        }
        // Validated: both intervals fit in u32 milliseconds.
        b.extend_from_slice(&(millis(self.publish_interval) as u32).to_be_bytes());
        b.extend_from_slice(&(millis(self.beacon_interval) as u32).to_be_bytes());
        match self.gpio {
            Some(g) => b.extend_from_slice(&[g.pin, g.active_low as u8]),
            None => b.extend_from_slice(&[0xff, 0]),
        }
        b.extend_from_slice(&self.group.octets());
        b.extend_from_slice(&self.port.to_be_bytes());
        let body_len = (b.len() - HEADER_LEN) as u16;
        b[6..8].copy_from_slice(&body_len.to_be_bytes());
        let c = checksum(&b);
        b.extend_from_slice(&c);
        Ok(b)
    }

    /// Decodes and checks a blob; `bytes` may extend past it (a whole flash region).
    pub fn decode(bytes: &[u8]) -> Result<Self, ProvisionError> {
        if bytes.len() >= 4 && bytes[..4] == [0xff; 4] {
            return Err(ProvisionError::Missing);
        }
        if bytes.len() < HEADER_LEN {
            if bytes.len() < 4 || &bytes[..4] != MAGIC {
                return Err(if bytes.is_empty() { ProvisionError::Missing } else { ProvisionError::NotProvisioning });
            }
            return Err(ProvisionError::Truncated { needed: HEADER_LEN, got: bytes.len() });
        }
        if &bytes[..4] != MAGIC {
            return Err(ProvisionError::NotProvisioning);
        }
        if bytes[4] != VERSION {
            return Err(ProvisionError::UnsupportedVersion { found: bytes[4] });
        }
        let body_len = u16::from_be_bytes([bytes[6], bytes[7]]) as usize;
        let needed = HEADER_LEN + body_len + CHECKSUM_LEN;
        if bytes.len() < needed {
            return Err(ProvisionError::Truncated { needed, got: bytes.len() });
        }
        let end = HEADER_LEN + body_len;
        if checksum(&bytes[..end]) != bytes[end..needed] {
            return Err(ProvisionError::Checksum);
        }
        let mut r = Reader { b: &bytes[HEADER_LEN..end] };
        let mut key = [0u8; 32];
        key.copy_from_slice(r.take(32, "key")?);
        let name = r.string("name")?;
        let wifi_ssid = r.string("wifi_ssid")?;
        let wifi_password = r.string("wifi_password")?;
        let publish_interval = Duration::from_millis(r.u32("publish_interval")?.into());
        let beacon_interval = Duration::from_millis(r.u32("beacon_interval")?.into());
        let gpio = r.take(2, "gpio")?;
        let gpio = match gpio[0] {
            0xff => None,
            pin => Some(GpioPin { pin, active_low: gpio[1] & 1 != 0 }),
        };
        let g = r.take(4, "group")?;
        let group = Ipv4Addr::new(g[0], g[1], g[2], g[3]);
        let p = r.take(2, "port")?;
        let port = u16::from_be_bytes([p[0], p[1]]);
        if !r.b.is_empty() {
            return Err(field("body", "has bytes after the last field"));
        }
        let prov = Provisioning {
            name,
            wifi_ssid,
            wifi_password,
            key: NetworkKey::from_bytes(key),
            publish_interval,
            beacon_interval,
            gpio,
            group,
            port,
        };
        prov.validate()?;
        Ok(prov)
    }
}

struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, name: &'static str) -> Result<&'a [u8], ProvisionError> {
        if self.b.len() < n {
            return Err(field(name, "is cut off (the body ends inside it)"));
        }
        let (head, rest) = self.b.split_at(n);
        self.b = rest;
        Ok(head)
    }

    fn string(&mut self, name: &'static str) -> Result<String, ProvisionError> {
        let len = self.take(1, name)?[0] as usize;
        let bytes = self.take(len, name)?;
        core::str::from_utf8(bytes).map(String::from).map_err(|_| field(name, "is not valid UTF-8"))
    }

    fn u32(&mut self, name: &'static str) -> Result<u32, ProvisionError> {
        let b = self.take(4, name)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Provisioning {
        let mut p = Provisioning::new("kitchen-sensor", "home", "correct horse", NetworkKey::from_bytes([7; 32]));
        p.gpio = Some(GpioPin { pin: 8, active_low: true });
        p.publish_interval = Duration::from_millis(2500);
        p
    }

    fn reseal(b: &mut [u8]) {
        let end = b.len() - CHECKSUM_LEN;
        let c = checksum(&b[..end]);
        b[end..].copy_from_slice(&c);
    }

    #[test]
    fn round_trip_with_trailing_erased_flash() {
        let p = sample();
        let mut b = p.encode().unwrap();
        assert_eq!(Provisioning::decode(&b), Ok(p.clone()));
        b.resize(4096, 0xff);
        assert_eq!(Provisioning::decode(&b), Ok(p));
    }

    #[test]
    fn every_flipped_bit_is_refused() {
        let b = sample().encode().unwrap();
        for i in 0..b.len() {
            for bit in 0..8 {
                let mut t = b.clone();
                t[i] ^= 1 << bit;
                assert!(Provisioning::decode(&t).is_err(), "byte {i} bit {bit}");
            }
        }
        let mut t = b.clone();
        t[20] ^= 1;
        assert_eq!(Provisioning::decode(&t), Err(ProvisionError::Checksum));
    }

    #[test]
    fn truncated_missing_foreign_and_wrong_version() {
        let b = sample().encode().unwrap();
        for cut in 0..b.len() {
            let e = Provisioning::decode(&b[..cut]).unwrap_err();
            assert!(
                matches!(
                    e,
                    ProvisionError::Truncated { .. } | ProvisionError::Missing | ProvisionError::NotProvisioning
                ),
                "cut {cut}: {e:?}"
            );
        }
        assert_eq!(
            Provisioning::decode(&b[..b.len() - 1]),
            Err(ProvisionError::Truncated { needed: b.len(), got: b.len() - 1 })
        );
        assert_eq!(Provisioning::decode(&[0xff; 64]), Err(ProvisionError::Missing));
        assert_eq!(Provisioning::decode(b"hello world, not a blob"), Err(ProvisionError::NotProvisioning));
        let mut v2 = b.clone();
        v2[4] = 2;
        reseal(&mut v2);
        assert_eq!(Provisioning::decode(&v2), Err(ProvisionError::UnsupportedVersion { found: 2 }));
    }

    #[test]
    fn bad_fields_are_named() {
        let mut p = sample();
        p.name = "a/b".into();
        assert!(matches!(p.encode(), Err(ProvisionError::Field { field: "name", .. })));
        let mut p = sample();
        p.wifi_password = "short".into();
        assert!(matches!(p.encode(), Err(ProvisionError::Field { field: "wifi_password", .. })));
        let mut p = sample();
        p.gpio = Some(GpioPin { pin: 40, active_low: false });
        assert!(matches!(p.encode(), Err(ProvisionError::Field { field: "gpio", .. })));
        // A sealed blob with an out-of-range field is refused by the decoder too.
        let mut b = sample().encode().unwrap();
        let port_at = b.len() - CHECKSUM_LEN - 2;
        b[port_at..port_at + 2].copy_from_slice(&[0, 0]);
        reseal(&mut b);
        assert_eq!(Provisioning::decode(&b), Err(ProvisionError::Field { field: "port", problem: "must not be 0" }));
        let text = alloc::format!("{:?}", sample());
        assert!(!text.contains("correct horse"), "Debug must not print the Wi-Fi password");
    }
}
