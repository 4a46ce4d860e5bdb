//! Parsing of what users type: durations, hex payloads, key files. Every error says how to fix it.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use starling::NetworkKey;

/// Parses `500ms`, `2s`, `1.5s`, `3m`, `1h`, and sums such as `2m30s` or `1h15m` (a bare number
/// is seconds).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let not_a_duration = || format!("'{text}' is not a duration; write e.g. 500ms, 2s, 1.5m, 2m30s or 1h");
    if t.is_empty() {
        return Err(not_a_duration());
    }
    if let Ok(secs) = t.parse::<f64>() {
        return Duration::try_from_secs_f64(secs).map_err(|_| format!("duration '{text}' is out of range"));
    }
    let mut total = 0.0;
    let mut rest = t;
    while !rest.is_empty() {
        let split = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let (num, after) = rest.split_at(split);
        let value: f64 = num.parse().map_err(|_| not_a_duration())?;
        let unit_len = after.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_len);
        total += match unit.trim() {
            "ms" => value / 1000.0,
            "s" => value,
            "m" | "min" => value * 60.0,
            "h" => value * 3600.0,
            "" => return Err(format!("'{text}' mixes a bare number with units; write e.g. 2m30s")),
            unit => return Err(format!("unknown unit '{unit}' in '{text}'; use ms, s, m or h")),
        };
        rest = next;
    }
    Duration::try_from_secs_f64(total).map_err(|_| format!("duration '{text}' is out of range"))
}

/// A duration that must be more than zero: a time limit of nothing is a mistake.
pub fn parse_positive_duration(text: &str) -> Result<Duration, String> {
    match parse_duration(text)? {
        Duration::ZERO => Err(format!("'{text}' is zero; give a time of at least 1ms")),
        d => Ok(d),
    }
}

/// A reliable message's time to live: more than zero and at most 24 h (a publisher retains a
/// message for repair at most 30 s by default, so longer lifetimes add nothing).
pub fn parse_ttl(text: &str) -> Result<Duration, String> {
    let d = parse_positive_duration(text)?;
    if d > Duration::from_secs(24 * 3600) {
        return Err(format!("'{text}' is longer than 24h; a time to live is at most 24h"));
    }
    Ok(d)
}

/// Decodes hex digits; spaces, colons and a leading `0x` are allowed for readability.
pub fn parse_hex(text: &str) -> Result<Vec<u8>, String> {
    let clean: String = text.trim_start_matches("0x").chars().filter(|c| !matches!(c, ' ' | ':' | '\n')).collect();
    if !clean.len().is_multiple_of(2) {
        return Err(format!("hex payload has an odd number of digits ({}); each byte is two digits", clean.len()));
    }
    (0..clean.len())
        .step_by(2)
        .map(|i| {
            u8::from_str_radix(&clean[i..i + 2], 16)
                .map_err(|_| format!("'{}' at digit {} is not hex (0-9, a-f)", &clean[i..i + 2], i + 1))
        })
        .collect()
}

/// Loads the network key from a file written by `starling keygen`, warning when others can read it.
pub fn load_key_file(path: &Path) -> Result<NetworkKey> {
    let bytes = std::fs::read(path).with_context(|| {
        format!("cannot read key file {} (create one with `starling keygen > net.key`)", path.display())
    })?;
    let Ok(text) = String::from_utf8(bytes) else {
        bail!(
            "key file {} is not text: a network key is 64 hexadecimal digits on a line (create one with \
             `starling keygen > net.key`)",
            path.display()
        );
    };
    let key = NetworkKey::parse(&text).with_context(|| format!("key file {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path) {
            if meta.permissions().mode() & 0o077 != 0 {
                eprintln!(
                    "warning: key file {} is readable by other users; run `chmod 600 {}`",
                    path.display(),
                    path.display()
                );
            }
        }
    }
    Ok(key)
}

/// The key from `--key FILE`, or from the `STARLING_KEY` environment variable holding the key text.
pub fn resolve_key(file: Option<&Path>, env_text: Option<&str>) -> Result<NetworkKey> {
    match (file, env_text) {
        (Some(path), _) => load_key_file(path),
        (None, Some(text)) => NetworkKey::parse(text).context("environment variable STARLING_KEY"),
        (None, None) => bail!(
            "no network key: pass --key FILE (create one with `starling keygen > net.key`) \
             or set STARLING_KEY_FILE or STARLING_KEY"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("2m30s"), Ok(Duration::from_secs(150)));
        assert_eq!(parse_duration("1h15m"), Ok(Duration::from_secs(4500)));
        assert_eq!(parse_duration("1s500ms"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("2 parsecs").unwrap_err().contains("unknown unit"));
        assert!(parse_duration("soon").unwrap_err().contains("not a duration"));
        assert!(parse_duration("").unwrap_err().contains("not a duration"));
        assert!(parse_duration("2m30").unwrap_err().contains("bare number"));
        assert!(parse_positive_duration("0s").unwrap_err().contains("zero"));
        assert!(parse_ttl("0").unwrap_err().contains("zero"));
        assert!(parse_ttl("100000h").unwrap_err().contains("24h"));
        assert_eq!(parse_ttl("30s"), Ok(Duration::from_secs(30)));
    }

    #[test]
    fn hex_payloads() {
        assert_eq!(parse_hex("00ff10"), Ok(vec![0, 0xff, 0x10]));
        assert_eq!(parse_hex("0x00:FF 10"), Ok(vec![0, 0xff, 0x10]));
        assert_eq!(parse_hex(""), Ok(vec![]));
        assert!(parse_hex("abc").unwrap_err().contains("odd number"));
        assert!(parse_hex("zz").unwrap_err().contains("not hex"));
    }

    #[test]
    fn key_sources() {
        let err = resolve_key(None, None).unwrap_err().to_string();
        assert!(err.contains("starling keygen"), "{err}");
        let err = format!("{:#}", resolve_key(None, Some("abc")).unwrap_err());
        assert!(err.contains("STARLING_KEY") && err.contains("64 hexadecimal digits"), "{err}");
        let k = resolve_key(None, Some(&"ab".repeat(32))).unwrap();
        assert_eq!(k.as_bytes()[0], 0xab);
    }
}
