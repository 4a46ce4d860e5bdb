//! The provisioning blob: what a device needs to join a mesh, written by `starling provision` and
//! flashed into the device's `starling_prov` partition (node-esp/README.md gives the offsets).
//!
//! Layout (integers big-endian):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic `STLP` |
//! | 4 | 1 | format version: 1 (network key) or 2 (membership field) |
//! | 5 | 1 | reserved, 0 |
//! | 6 | 2 | body length `N` |
//! | 8 | `N` | body |
//! | 8+`N` | 16 | BLAKE2s-128 (unkeyed) of bytes `0..8+N` |
//!
//! Body v1, in order: network key (32 bytes); node name, Wi-Fi SSID and Wi-Fi password, each a
//! length byte and UTF-8; publish interval and beacon interval in milliseconds (u32 each); GPIO
//! pin (u8, `0xff` for none) and GPIO flags (u8, bit 0: active low); multicast group (4 bytes)
//! and UDP port (u16). Bytes after the checksum are ignored (erased flash reads as `0xff`).
//!
//! Body v2: the v1 body with the network key replaced by a membership field: a tag byte, then
//! - tag 0, PSK: the network key (32 bytes);
//! - tag 1, identity (PROTOCOL.md §11): the device's X25519 secret (32 bytes); the network name
//!   (length byte and UTF-8, 1-255 bytes); the member count (u8, at least 1); for each member its
//!   name (length byte and UTF-8, 1-32 bytes), its public key (32 bytes), then its publish filters,
//!   subscribe filters and call patterns, each list a count byte followed by length-prefixed
//!   (u8) UTF-8 strings.
//!
//! [`Provisioning::encode`] writes version 1 for a network key (so firmware that predates
//! version 2 still reads it) and version 2 for an identity; [`Provisioning::decode`] reads both.
//! A blob is at most [`MAX_BLOB_LEN`] bytes: one flash sector, the size of the partition.

use alloc::string::String;
use alloc::vec::Vec;
use blake2::digest::{Update, VariableOutput};
use blake2::Blake2sVar;
use core::fmt;
use core::net::Ipv4Addr;
use core::time::Duration;
use starling::identity::{AllowEntry, Allowlist, Identity, MethodPattern, Permissions, PublicKey, KEY_LEN};
use starling::{NetworkKey, NodeId, Topic, TopicFilter};

/// First bytes of every blob.
pub const MAGIC: &[u8; 4] = b"STLP";
/// The newest format version this crate reads; written for identity-mode blobs.
pub const VERSION: u8 = 2;
/// The version written for network-key (PSK) blobs, readable by every firmware.
pub const VERSION_PSK: u8 = 1;
/// Bytes before the body: magic, version, reserved byte, body length.
pub const HEADER_LEN: usize = 8;
/// Bytes of the trailing checksum.
pub const CHECKSUM_LEN: usize = 16;
/// Largest blob accepted: one 4 KiB flash sector, the size of the `starling_prov` partition
/// (node-esp/partitions.csv). A device reads this many bytes from flash.
pub const MAX_BLOB_LEN: usize = 4096;
/// Most members an identity-mode blob lists.
pub const MAX_MEMBERS: usize = 255;
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

/// The ESP32-C3's GPIOs the firmware never drives: 12-17 carry the SPI flash, 18-19 the USB serial
/// console.
pub const ESP32C3_RESERVED_GPIOS: core::ops::RangeInclusive<u8> = 12..=19;

impl GpioPin {
    /// Why an ESP32-C3 would refuse to drive this pin, if it would (a blob written before
    /// `encode` refused these is still read: the board then refuses `gpio.set`).
    pub fn esp32c3_refusal(&self) -> Option<&'static str> {
        if self.pin > MAX_GPIO {
            Some("the ESP32-C3 has GPIO 0 to 21")
        } else if ESP32C3_RESERVED_GPIOS.contains(&self.pin) {
            Some("GPIO 12-17 carry the ESP32-C3's flash and 18-19 its USB serial console")
        } else {
            None
        }
    }
}

/// How the device proves it belongs to the mesh.
#[derive(Clone)]
pub enum Membership {
    /// PSK mode: the mesh's shared network key.
    Psk(NetworkKey),
    /// Identity mode (PROTOCOL.md §11): the device's own key pair and the network's allowlist,
    /// which must list the device's public key.
    Identity {
        /// The device's key pair.
        identity: Identity,
        /// Who may join and what each member may do.
        allowlist: Allowlist,
    },
}

impl Membership {
    /// Whether this is identity mode (per-device keys and an allowlist) rather than a network key.
    pub fn is_identity(&self) -> bool {
        matches!(self, Membership::Identity { .. })
    }

    /// The node id this membership fixes: identity mode derives it from the public key, PSK
    /// mode leaves it free (`None`).
    pub fn fixed_node_id(&self) -> Option<NodeId> {
        match self {
            Membership::Psk(_) => None,
            Membership::Identity { identity, .. } => Some(identity.node_id()),
        }
    }
}

impl PartialEq for Membership {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Membership::Psk(a), Membership::Psk(b)) => a == b,
            (
                Membership::Identity { identity: a, allowlist: la },
                Membership::Identity { identity: b, allowlist: lb },
            ) => a.secret() == b.secret() && la == lb,
            _ => false,
        }
    }
}

impl Eq for Membership {}

impl fmt::Debug for Membership {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Secrets stay out of logs: the network key and the identity's secret are never printed.
        match self {
            Membership::Psk(_) => f.write_str("Psk(<redacted>)"),
            Membership::Identity { identity, allowlist } => f
                .debug_struct("Identity")
                .field("public", &identity.public())
                .field("network", &allowlist.network)
                .field("members", &allowlist.entries.len())
                .finish_non_exhaustive(),
        }
    }
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
    /// The network key, or the identity and allowlist.
    pub membership: Membership,
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
            .field("membership", &self.membership)
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
    /// A member of the allowlist is malformed or conflicts with another.
    Member {
        /// Index of the member (0-based; shown 1-based).
        entry: usize,
        /// The member's field: `name`, `key`, `publish`, `subscribe` or `call`.
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
                write!(
                    f,
                    "provisioning blob version {found} is not supported (this firmware reads versions 1 to {VERSION})"
                )
            }
            ProvisionError::Truncated { needed, got } => {
                write!(f, "provisioning blob truncated: header announces {needed} bytes, {got} present")
            }
            ProvisionError::Checksum => {
                f.write_str("provisioning blob checksum mismatch (corrupted or partly written)")
            }
            ProvisionError::Field { field, problem } => write!(f, "provisioning field `{field}` {problem}"),
            ProvisionError::Member { entry, field, problem } => {
                write!(f, "provisioning allowlist member {} `{field}`: {problem}", entry + 1)
            }
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
        Self::with_membership(name, wifi_ssid, wifi_password, Membership::Psk(key))
    }

    /// As [`new`](Self::new), for any membership (a network key or an identity and allowlist).
    pub fn with_membership(name: &str, wifi_ssid: &str, wifi_password: &str, membership: Membership) -> Self {
        Provisioning {
            name: name.into(),
            wifi_ssid: wifi_ssid.into(),
            wifi_password: wifi_password.into(),
            membership,
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
        if let Membership::Identity { identity, allowlist } = &self.membership {
            check_allowlist(&self.name, identity, allowlist)?;
        }
        Ok(())
    }

    /// Encodes the blob (layout in the module docs), after [`validate`](Self::validate). A GPIO
    /// the ESP32-C3 firmware would refuse to drive (12-19) is refused here too, so it is found
    /// before flashing; reading (`decode`) still accepts one, and the board then refuses
    /// `gpio.set`, as before this check.
    pub fn encode(&self) -> Result<Vec<u8>, ProvisionError> {
        self.validate()?;
        if self.gpio.is_some_and(|g| ESP32C3_RESERVED_GPIOS.contains(&g.pin)) {
            return Err(field("gpio", "must not be 12-19 (an ESP32-C3's flash and USB serial console)"));
        }
        let mut b = Vec::with_capacity(MAX_BLOB_LEN);
        b.extend_from_slice(MAGIC);
        b.push(match self.membership {
            Membership::Psk(_) => VERSION_PSK,
            Membership::Identity { .. } => VERSION,
        });
        b.push(0);
        b.extend_from_slice(&[0, 0]); // body length, filled in below
        match &self.membership {
            Membership::Psk(key) => b.extend_from_slice(key.as_bytes()),
            Membership::Identity { identity, allowlist } => {
                // Validated: every length and count below fits in a byte.
                b.push(1);
                b.extend_from_slice(identity.secret());
                put_str(&mut b, &allowlist.network);
                b.push(allowlist.entries.len() as u8);
                for e in &allowlist.entries {
                    put_str(&mut b, &e.name);
                    b.extend_from_slice(&e.key.0);
                    let p = &e.permissions;
                    b.push(p.publish.len() as u8);
                    p.publish.iter().for_each(|f| put_str(&mut b, f.as_str()));
                    b.push(p.subscribe.len() as u8);
                    p.subscribe.iter().for_each(|f| put_str(&mut b, f.as_str()));
                    b.push(p.call.len() as u8);
                    p.call.iter().for_each(|m| put_str(&mut b, m.as_str()));
                }
            }
        }
        for s in [&self.name, &self.wifi_ssid, &self.wifi_password] {
            put_str(&mut b, s); // validated: each at most 63 bytes
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
        if b.len() + CHECKSUM_LEN > MAX_BLOB_LEN {
            return Err(field("allowlist", "makes the blob larger than 4096 bytes, the provisioning partition"));
        }
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
        let version = bytes[4];
        if !(VERSION_PSK..=VERSION).contains(&version) {
            return Err(ProvisionError::UnsupportedVersion { found: version });
        }
        let body_len = u16::from_be_bytes([bytes[6], bytes[7]]) as usize;
        let needed = HEADER_LEN + body_len + CHECKSUM_LEN;
        if needed > MAX_BLOB_LEN {
            return Err(field("body", "is longer than the 4096-byte provisioning partition"));
        }
        if bytes.len() < needed {
            return Err(ProvisionError::Truncated { needed, got: bytes.len() });
        }
        let end = HEADER_LEN + body_len;
        if checksum(&bytes[..end]) != bytes[end..needed] {
            return Err(ProvisionError::Checksum);
        }
        let mut r = Reader { b: &bytes[HEADER_LEN..end] };
        let membership = match version {
            VERSION_PSK => Membership::Psk(NetworkKey::from_bytes(r.key("key")?)),
            _ => match r.take(1, "membership")?[0] {
                0 => Membership::Psk(NetworkKey::from_bytes(r.key("key")?)),
                1 => read_identity(&mut r)?,
                _ => return Err(field("membership", "has an unknown tag (0: network key, 1: identity)")),
            },
        };
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
            membership,
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

fn put_str(b: &mut Vec<u8>, s: &str) {
    b.push(s.len() as u8);
    b.extend_from_slice(s.as_bytes());
}

fn member(entry: usize, field: &'static str, problem: &'static str) -> ProvisionError {
    ProvisionError::Member { entry, field, problem }
}

/// Checks an identity membership: lengths that the format stores in a byte, the allowlist's own
/// rules ([`Allowlist::validate`]), that it lists this device, and that this device may publish
/// its readings.
fn check_allowlist(name: &str, identity: &Identity, list: &Allowlist) -> Result<(), ProvisionError> {
    if list.network.is_empty() || list.network.len() > 255 {
        return Err(field("allowlist.network", "must be 1 to 255 bytes"));
    }
    if list.entries.is_empty() || list.entries.len() > MAX_MEMBERS {
        return Err(field("allowlist", "must list 1 to 255 members"));
    }
    for (i, e) in list.entries.iter().enumerate() {
        if e.name.is_empty() || e.name.len() > starling::wire::MAX_NAME_LEN {
            return Err(member(i, "name", "must be 1 to 32 bytes"));
        }
        let p = &e.permissions;
        for (what, n) in [("publish", p.publish.len()), ("subscribe", p.subscribe.len()), ("call", p.call.len())] {
            if n > 255 {
                return Err(member(i, what, "has more than 255 entries"));
            }
        }
        if p.call.iter().any(|m| m.as_str().len() > 255) {
            return Err(member(i, "call", "has a pattern longer than 255 bytes"));
        }
    }
    list.validate().map_err(|e| {
        let what = if e.problem.contains("name") { "name" } else { "key" };
        member(e.entry, what, e.problem)
    })?;
    let Some(own) = list.get(&identity.public()) else {
        return Err(field(
            "identity",
            "its public key is not on the allowlist: add the device with `starling allow add`",
        ));
    };
    let uptime = alloc::format!("{name}/uptime");
    if !Topic::new(&uptime).is_ok_and(|t| own.permissions.may_publish(&t)) {
        return Err(field(
            "allowlist",
            "does not let the device publish its readings: its member needs a publish filter such as `NAME/#`",
        ));
    }
    Ok(())
}

fn read_identity(r: &mut Reader<'_>) -> Result<Membership, ProvisionError> {
    let identity = Identity::from_secret(r.key("identity")?);
    let network = r.string("allowlist.network")?;
    let count = r.take(1, "allowlist")?[0] as usize;
    let mut entries = Vec::with_capacity(count);
    for i in 0..count {
        let at = |e: ProvisionError| match e {
            ProvisionError::Field { field, problem } => member(i, field, problem),
            other => other,
        };
        let name = r.string("name").map_err(at)?;
        let key = PublicKey(r.key("key").map_err(at)?);
        let mut filters = |what: &'static str| -> Result<Vec<TopicFilter>, ProvisionError> {
            let n = r.take(1, what).map_err(at)?[0] as usize;
            let mut v = Vec::with_capacity(n);
            for _ in 0..n {
                let s = r.string(what).map_err(at)?;
                v.push(TopicFilter::new(&s).map_err(|_| member(i, what, "holds an invalid topic filter"))?);
            }
            Ok(v)
        };
        let publish = filters("publish")?;
        let subscribe = filters("subscribe")?;
        let n = r.take(1, "call").map_err(at)?[0] as usize;
        let mut call = Vec::with_capacity(n);
        for _ in 0..n {
            let s = r.string("call").map_err(at)?;
            call.push(MethodPattern::new(&s).map_err(|problem| member(i, "call", problem))?);
        }
        entries.push(AllowEntry { name, key, permissions: Permissions { publish, subscribe, call } });
    }
    Ok(Membership::Identity { identity, allowlist: Allowlist { network, entries } })
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

    fn key(&mut self, name: &'static str) -> Result<[u8; KEY_LEN], ProvisionError> {
        let mut k = [0u8; KEY_LEN];
        k.copy_from_slice(self.take(KEY_LEN, name)?);
        Ok(k)
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
        let mut v3 = b.clone();
        v3[4] = 3;
        reseal(&mut v3);
        assert_eq!(Provisioning::decode(&v3), Err(ProvisionError::UnsupportedVersion { found: 3 }));
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

    fn entry(name: &str, secret: u8, publish: &[&str]) -> AllowEntry {
        AllowEntry {
            name: name.into(),
            key: Identity::from_secret([secret; 32]).public(),
            permissions: Permissions {
                publish: publish.iter().map(|f| TopicFilter::new(f).unwrap()).collect(),
                subscribe: alloc::vec![TopicFilter::new("home/+/cmd").unwrap()],
                call: alloc::vec![MethodPattern::new("info").unwrap(), MethodPattern::new("gpio.*").unwrap()],
            },
        }
    }

    fn identity_sample() -> Provisioning {
        let allowlist = Allowlist {
            network: "home".into(),
            entries: alloc::vec![entry("laptop", 2, &["#"]), entry("kitchen", 1, &["kitchen-sensor/#"])],
        };
        let membership = Membership::Identity { identity: Identity::from_secret([1; 32]), allowlist };
        let mut p = Provisioning::with_membership("kitchen-sensor", "home", "correct horse", membership);
        p.gpio = Some(GpioPin { pin: 3, active_low: false });
        p
    }

    fn identity_parts(p: &mut Provisioning) -> &mut Allowlist {
        match &mut p.membership {
            Membership::Identity { allowlist, .. } => allowlist,
            Membership::Psk(_) => unreachable!("an identity sample"),
        }
    }

    #[test]
    fn psk_blobs_stay_version_1_identity_blobs_are_version_2() {
        assert_eq!(sample().encode().unwrap()[4], VERSION_PSK);
        let p = identity_sample();
        let mut b = p.encode().unwrap();
        assert_eq!(b[4], VERSION);
        assert_eq!(Provisioning::decode(&b), Ok(p.clone()));
        assert_eq!(p.membership.fixed_node_id(), Some(Identity::from_secret([1; 32]).node_id()));
        b.resize(MAX_BLOB_LEN, 0xff);
        assert_eq!(Provisioning::decode(&b), Ok(p.clone()));
        let text = alloc::format!("{p:?}");
        assert!(!text.contains("0101") && text.contains("members: 2"), "{text}");
        // A version 2 blob may also carry a network key (tag 0).
        let v1 = sample().encode().unwrap();
        let mut v2 = v1[..HEADER_LEN].to_vec();
        v2[4] = 2;
        v2.push(0);
        v2.extend_from_slice(&v1[HEADER_LEN..v1.len() - CHECKSUM_LEN]);
        let n = (v2.len() - HEADER_LEN) as u16;
        v2[6..8].copy_from_slice(&n.to_be_bytes());
        v2.extend_from_slice(&[0; CHECKSUM_LEN]);
        reseal(&mut v2);
        assert_eq!(Provisioning::decode(&v2), Ok(sample()));
        v2[HEADER_LEN] = 7;
        reseal(&mut v2);
        assert!(matches!(Provisioning::decode(&v2), Err(ProvisionError::Field { field: "membership", .. })));
    }

    #[test]
    fn every_flipped_bit_of_an_identity_blob_is_refused() {
        let b = identity_sample().encode().unwrap();
        for i in 0..b.len() {
            for bit in 0..8 {
                let mut t = b.clone();
                t[i] ^= 1 << bit;
                assert!(Provisioning::decode(&t).is_err(), "byte {i} bit {bit}");
            }
        }
        for cut in 0..b.len() {
            assert!(Provisioning::decode(&b[..cut]).is_err(), "cut {cut}");
        }
    }

    #[test]
    fn bad_allowlists_are_refused_with_the_member_and_field() {
        // Own key missing.
        let mut p = identity_sample();
        identity_parts(&mut p).entries.remove(1);
        assert!(matches!(p.encode(), Err(ProvisionError::Field { field: "identity", .. })));
        // Duplicate name, duplicate key, small-order key.
        let mut p = identity_sample();
        identity_parts(&mut p).entries[0].name = "kitchen".into();
        assert!(matches!(p.encode(), Err(ProvisionError::Member { entry: 1, field: "name", .. })));
        let mut p = identity_sample();
        identity_parts(&mut p).entries[0].key = Identity::from_secret([1; 32]).public();
        assert!(matches!(p.encode(), Err(ProvisionError::Member { entry: 1, field: "key", .. })));
        let mut p = identity_sample();
        identity_parts(&mut p).entries[0].key = PublicKey([0; 32]);
        assert!(matches!(p.encode(), Err(ProvisionError::Member { entry: 0, field: "key", .. })));
        // The device may not publish its own readings.
        let mut p = identity_sample();
        identity_parts(&mut p).entries[1] = entry("kitchen", 1, &["elsewhere/#"]);
        assert!(matches!(p.encode(), Err(ProvisionError::Field { field: "allowlist", .. })));
        // Too many members for one flash sector.
        let mut p = identity_sample();
        for i in 0..100u8 {
            let e = entry(&alloc::format!("m{i}"), i.wrapping_add(10), &["some/rather/long/topic/filter/#"]);
            identity_parts(&mut p).entries.push(e);
        }
        let e = p.encode().unwrap_err();
        assert!(alloc::format!("{e}").contains("4096"), "{e}");

        // Sealed blobs with bad contents are refused by the decoder too.
        let good = identity_sample().encode().unwrap();
        let find = |needle: &[u8]| good.windows(needle.len()).position(|w| w == needle).unwrap();
        // A publish filter with `#` inside a level.
        let mut b = good.clone();
        let at = find(b"kitchen-sensor/#");
        b[at + 15] = b'x';
        b[at + 14] = b'#';
        reseal(&mut b);
        assert_eq!(
            Provisioning::decode(&b),
            Err(ProvisionError::Member { entry: 1, field: "publish", problem: "holds an invalid topic filter" })
        );
        // A low-order member key.
        let mut b = good.clone();
        let at = find(&Identity::from_secret([2; 32]).public().0);
        b[at..at + 32].copy_from_slice(&[0; 32]);
        reseal(&mut b);
        let e = Provisioning::decode(&b).unwrap_err();
        assert!(matches!(e, ProvisionError::Member { entry: 0, field: "key", .. }), "{e:?}");
        assert!(alloc::format!("{e}").contains("member 1 `key`"), "{e}");
        // A bad call pattern.
        let mut b = good.clone();
        let at = find(b"gpio.*");
        b[at] = b'*';
        reseal(&mut b);
        assert!(matches!(Provisioning::decode(&b), Err(ProvisionError::Member { entry: 0, field: "call", .. })));
    }
}
