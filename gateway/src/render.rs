//! How `starling sub` shows messages: payload as text when it is printable UTF-8 (lines and tabs
//! included) and as hex otherwise; `--hex` gives a classic hexdump, `--json` one JSON object per
//! line.

use std::fmt::Write as _;

/// Lowercase hex of `bytes`, two digits per byte, no separators.
pub fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// `bytes` as text if they are UTF-8 without control characters other than tab, line feed and
/// carriage return (multi-line text such as a `$stats` reply is text), else `None`.
pub fn printable_text(bytes: &[u8]) -> Option<&str> {
    let s = std::str::from_utf8(bytes).ok()?;
    (!s.chars().any(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r'))).then_some(s)
}

/// `text` on one line, for places that show one line per message (the live monitor): line
/// breaks become `⏎`, and at most `max` characters are kept.
pub fn one_line(text: &str, max: usize) -> String {
    text.trim_end_matches(['\n', '\r'])
        .chars()
        .filter(|&c| c != '\r')
        .map(|c| if c == '\n' { '⏎' } else { c })
        .take(max)
        .collect()
}

/// A hexdump: offset, 16 bytes in hex, and their printable ASCII, one line per 16 bytes.
pub fn hexdump(bytes: &[u8], indent: &str) -> String {
    let mut out = String::new();
    for (i, chunk) in bytes.chunks(16).enumerate() {
        let _ = write!(out, "{indent}{:08x} ", i * 16);
        for j in 0..16 {
            if j == 8 {
                out.push(' ');
            }
            match chunk.get(j) {
                Some(b) => {
                    let _ = write!(out, " {b:02x}");
                }
                None => out.push_str("   "),
            }
        }
        out.push_str("  |");
        out.extend(chunk.iter().map(|&b| if b.is_ascii_graphic() || b == b' ' { b as char } else { '.' }));
        out.push_str("|\n");
    }
    out
}

/// A received message as the CLI shows it.
pub struct Shown<'a> {
    /// Topic name.
    pub topic: &'a str,
    /// Sender id as 16 hex digits.
    pub from: String,
    /// Sender name, if known.
    pub name: Option<&'a str>,
    /// Payload bytes.
    pub payload: &'a [u8],
    /// Sequence number in the publisher's reliable stream, if it came reliably.
    pub seq: Option<u64>,
}

impl Shown<'_> {
    fn sender(&self) -> String {
        match self.name {
            Some(n) if !n.is_empty() => format!("{n} ({})", self.from),
            _ => self.from.clone(),
        }
    }

    /// Topic, sender, size, then the payload as text, or as hex when it is binary. Text of
    /// several lines follows the header on lines of its own, indented, so that every message
    /// still starts with its topic at the start of a line.
    pub fn line(&self) -> String {
        let n = self.payload.len();
        let head = format!("{}  from {}  {n} B", self.topic, self.sender());
        match printable_text(self.payload) {
            _ if n == 0 => format!("{head}  (empty)"),
            Some(text) if text.trim_end_matches(['\n', '\r']).contains('\n') => {
                let mut s = head;
                for l in text.trim_end_matches(['\n', '\r']).lines() {
                    s.push_str("\n    ");
                    s.push_str(l);
                }
                s
            }
            Some(text) => format!("{head}  {}", text.trim_end_matches(['\n', '\r'])),
            None => format!("{head}  hex {}", hex(self.payload)),
        }
    }

    /// The header line followed by a hexdump of the payload.
    pub fn hexdump(&self) -> String {
        format!("{}  from {}  {} B\n{}", self.topic, self.sender(), self.payload.len(), hexdump(self.payload, "  "))
    }

    /// One JSON object: topic, from, name, size, hex, and text when the payload is UTF-8.
    pub fn json(&self) -> String {
        self.json_value().to_string()
    }

    /// [`json`](Self::json) with the arrival time, `t_ms` (Unix milliseconds, as in `watch`'s
    /// save format).
    pub fn json_at(&self, t_ms: u64) -> String {
        let mut v = self.json_value();
        v["t_ms"] = t_ms.into();
        v.to_string()
    }

    fn json_value(&self) -> serde_json::Value {
        let mut v = serde_json::json!({
            "topic": self.topic,
            "from": self.from,
            "name": self.name,
            "size": self.payload.len(),
            "hex": hex(self.payload),
        });
        if let Some(seq) = self.seq {
            v["seq"] = seq.into();
        }
        if let Ok(text) = std::str::from_utf8(self.payload) {
            v["text"] = serde_json::Value::String(text.to_owned());
        }
        v
    }
}

/// One node's column of [`counter_table`]: its name and its counters (`None`: not available).
pub type CounterColumn = (String, Option<Vec<(String, u64)>>);

/// Counters of several nodes as one table: a row per counter (in the order first seen), a
/// column per node (`-`: that node has no such counter, or did not answer). Rows that are zero
/// in every column are left out unless `all`; a line then says how many.
pub fn counter_table(columns: &[CounterColumn], all: bool) -> String {
    let mut names: Vec<&str> = Vec::new();
    for (_, fields) in columns {
        for (k, _) in fields.iter().flatten() {
            if !names.contains(&k.as_str()) {
                names.push(k);
            }
        }
    }
    let value = |col: &Option<Vec<(String, u64)>>, name: &str| {
        col.as_ref().and_then(|f| f.iter().find(|(k, _)| k == name).map(|(_, v)| *v))
    };
    let rows: Vec<&str> = names
        .iter()
        .copied()
        .filter(|n| all || columns.iter().any(|(_, c)| value(c, n).is_some_and(|v| v != 0)))
        .collect();
    let label = rows.iter().map(|n| n.len()).max().unwrap_or(7).max(7);
    let widths: Vec<usize> = columns
        .iter()
        .map(|(h, c)| {
            rows.iter().map(|n| value(c, n).map_or(1, |v| v.to_string().len())).max().unwrap_or(1).max(h.len())
        })
        .collect();
    let mut out = format!("{:<label$}", "counter");
    for ((h, _), w) in columns.iter().zip(&widths) {
        out.push_str(&format!("  {h:>w$}"));
    }
    out.push('\n');
    for n in &rows {
        out.push_str(&format!("{n:<label$}"));
        for ((_, c), w) in columns.iter().zip(&widths) {
            let cell = value(c, n).map_or("-".to_owned(), |v| v.to_string());
            out.push_str(&format!("  {cell:>w$}"));
        }
        out.push('\n');
    }
    let hidden = names.len() - rows.len();
    if hidden > 0 {
        out.push_str(&format!("({hidden} counter(s) zero everywhere not shown; --all shows them)\n"));
    }
    for (h, c) in columns {
        if c.is_none() {
            out.push_str(&format!("({h}: counters not available)\n"));
        }
    }
    out
}

/// Datagrams a node heard that its key or mode does not open: the tag of another network key,
/// the other security mode, or a failed authentication. What the "another network" notes count.
pub fn foreign_datagrams(core: &starling::Stats) -> u64 {
    core.drop_foreign_network + core.drop_auth + core.drop_version
}

/// The sentence for `n` (> 0) datagrams of another network on `mesh` (`group:port`): the
/// likeliest misconfiguration must not meet silence.
pub fn other_network_note(n: u64, mesh: &str) -> String {
    format!(
        "heard {n} datagram(s) on {mesh} from another network: do the nodes you expect use another key, or the \
         other mode (network key or identity)?"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shown(payload: &[u8]) -> Shown<'_> {
        Shown { topic: "a/b", from: "00000000000000ff".into(), name: Some("kitchen"), payload, seq: None }
    }

    #[test]
    fn text_binary_and_empty_lines() {
        assert_eq!(shown(b"21.5").line(), "a/b  from kitchen (00000000000000ff)  4 B  21.5");
        assert_eq!(shown(&[0, 0xff, b'a']).line(), "a/b  from kitchen (00000000000000ff)  3 B  hex 00ff61");
        assert_eq!(shown(b"two\nlines\n").line(), "a/b  from kitchen (00000000000000ff)  10 B\n    two\n    lines");
        assert_eq!(shown(b"one line\r\n").line(), "a/b  from kitchen (00000000000000ff)  10 B  one line");
        assert_eq!(shown(b"a\x1bb").line(), "a/b  from kitchen (00000000000000ff)  3 B  hex 611b62");
        assert_eq!(one_line("rx 1\r\ntx 2\n", 40), "rx 1⏎tx 2");
        assert_eq!(one_line("abcdef", 3), "abc");
        assert_eq!(shown(b"").line(), "a/b  from kitchen (00000000000000ff)  0 B  (empty)");
    }

    #[test]
    fn hexdump_layout() {
        let d = hexdump(b"0123456789abcdefXY\x00", "");
        assert_eq!(
            d,
            "00000000  30 31 32 33 34 35 36 37  38 39 61 62 63 64 65 66  |0123456789abcdef|\n\
             00000010  58 59 00                                          |XY.|\n"
        );
    }

    #[test]
    fn counter_table_hides_rows_zero_everywhere_and_marks_what_a_node_lacks() {
        let c = |pairs: &[(&str, u64)]| Some(pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect::<Vec<_>>());
        let columns = vec![
            ("this node".to_owned(), c(&[("rx_accepted", 12), ("drop_auth", 0), ("drop_replay", 0)])),
            ("gw".to_owned(), c(&[("rx_accepted", 3), ("drop_auth", 2), ("drop_replay", 0), ("mqtt_out", 7)])),
            ("board".to_owned(), None),
        ];
        let t = counter_table(&columns, false);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0].split_whitespace().collect::<Vec<_>>(), ["counter", "this", "node", "gw", "board"]);
        assert_eq!(lines[1].split_whitespace().collect::<Vec<_>>(), ["rx_accepted", "12", "3", "-"]);
        assert_eq!(lines[2].split_whitespace().collect::<Vec<_>>(), ["drop_auth", "0", "2", "-"]);
        assert_eq!(lines[3].split_whitespace().collect::<Vec<_>>(), ["mqtt_out", "-", "7", "-"]);
        assert!(lines[4].contains("1 counter(s) zero everywhere"), "{t}");
        assert!(lines[5].contains("board: counters not available"), "{t}");
        assert!(!t.contains("drop_replay"));
        assert!(counter_table(&columns, true).contains("drop_replay"));
    }

    #[test]
    fn json_has_hex_always_and_text_when_utf8() {
        let v: serde_json::Value = serde_json::from_str(&shown(&[0xff, 0]).json()).unwrap();
        assert_eq!(v["hex"], "ff00");
        assert!(v.get("text").is_none());
        let v: serde_json::Value = serde_json::from_str(&shown(b"hi").json()).unwrap();
        assert_eq!(v["text"], "hi");
        assert_eq!(v["size"], 2);
    }
}
