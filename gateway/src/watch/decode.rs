//! Views of a payload for the two panes: hex rows beside their text, and the decodings the text
//! pane can switch to (UTF-8, JSON, CBOR, postcard varints), plus a byte diff.

use std::fmt::Write as _;

/// Bytes per hex row.
pub const ROW: usize = 8;

/// What the text pane shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Decode {
    /// Each hex row's bytes as characters, `.` for anything not printable ASCII.
    #[default]
    Ascii,
    /// The payload as UTF-8; invalid bytes as `\xNN`, control characters escaped.
    Utf8,
    /// Pretty-printed JSON.
    Json,
    /// CBOR, shown as JSON-like text.
    Cbor,
    /// A postcard sequence of varints, each as its hex bytes and value.
    Postcard,
}

impl Decode {
    /// The next mode (`d` in the UI).
    pub fn next(self) -> Decode {
        match self {
            Decode::Ascii => Decode::Utf8,
            Decode::Utf8 => Decode::Json,
            Decode::Json => Decode::Cbor,
            Decode::Cbor => Decode::Postcard,
            Decode::Postcard => Decode::Ascii,
        }
    }

    /// Its name, as shown in the pane title.
    pub fn name(self) -> &'static str {
        match self {
            Decode::Ascii => "text",
            Decode::Utf8 => "utf-8",
            Decode::Json => "json",
            Decode::Cbor => "cbor",
            Decode::Postcard => "postcard",
        }
    }
}

/// Hex rows: `offset  xx xx ..`, [`ROW`] bytes each.
pub fn hex_rows(bytes: &[u8]) -> Vec<String> {
    bytes
        .chunks(ROW)
        .enumerate()
        .map(|(i, chunk)| {
            let mut s = format!("{:04x} ", i * ROW);
            for b in chunk {
                let _ = write!(s, " {b:02x}");
            }
            s
        })
        .collect()
}

/// The text pane's lines for `mode`; for [`Decode::Ascii`] one line per hex row.
pub fn text_lines(bytes: &[u8], mode: Decode) -> Vec<String> {
    match mode {
        Decode::Ascii => bytes
            .chunks(ROW)
            .map(|c| c.iter().map(|&b| if b.is_ascii_graphic() || b == b' ' { b as char } else { '.' }).collect())
            .collect(),
        Decode::Utf8 => utf8_escaped(bytes).split('\n').map(str::to_owned).collect(),
        Decode::Json => match serde_json::from_slice::<serde_json::Value>(bytes) {
            Ok(v) => serde_json::to_string_pretty(&v).unwrap_or_default().lines().map(str::to_owned).collect(),
            Err(e) => vec![format!("not JSON: {e}")],
        },
        Decode::Cbor => match ciborium::de::from_reader::<ciborium::Value, _>(bytes) {
            Ok(v) => cbor_text(&v).lines().map(str::to_owned).collect(),
            Err(e) => vec![format!("not CBOR: {e}")],
        },
        Decode::Postcard => postcard_varints(bytes),
    }
}

/// UTF-8 text with every byte accounted for: invalid bytes as `\xNN`, NUL as `\0`, other control
/// characters (except newline and tab) as `\xNN`.
pub fn utf8_escaped(bytes: &[u8]) -> String {
    let mut out = String::new();
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\0' => out.push_str("\\0"),
                '\n' | '\t' => out.push(c),
                '\\' => out.push_str("\\\\"),
                c if c.is_control() && (c as u32) < 0x80 => {
                    let _ = write!(out, "\\x{:02x}", c as u32);
                }
                c if c.is_control() => {
                    let _ = write!(out, "\\u{{{:x}}}", c as u32);
                }
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    out
}

fn cbor_text(v: &ciborium::Value) -> String {
    use ciborium::Value as V;
    fn json(v: &V) -> serde_json::Value {
        match v {
            V::Integer(i) => {
                let i: i128 = (*i).into();
                i64::try_from(i).map(Into::into).unwrap_or_else(|_| i.to_string().into())
            }
            V::Bytes(b) => format!("h'{}'", crate::render::hex(b)).into(),
            V::Float(f) => serde_json::Number::from_f64(*f).map(Into::into).unwrap_or_else(|| f.to_string().into()),
            V::Text(t) => t.clone().into(),
            V::Bool(b) => (*b).into(),
            V::Null => serde_json::Value::Null,
            V::Tag(t, inner) => serde_json::json!({ format!("tag {t}"): json(inner) }),
            V::Array(a) => a.iter().map(json).collect(),
            V::Map(m) => m
                .iter()
                .map(|(k, v)| {
                    (
                        match k {
                            V::Text(t) => t.clone(),
                            other => json(other).to_string(),
                        },
                        json(v),
                    )
                })
                .collect::<serde_json::Map<_, _>>()
                .into(),
            _ => "(unknown CBOR value)".into(),
        }
    }
    serde_json::to_string_pretty(&json(v)).unwrap_or_default()
}

/// Postcard has no schema on the wire, but every integer and length in it is a LEB128 varint:
/// splitting the payload into varints shows its structure (`hex = value` per varint).
pub fn postcard_varints(bytes: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() && out.len() < 256 {
        let start = i;
        let mut value: u128 = 0;
        let mut shift = 0;
        loop {
            let b = bytes[i];
            i += 1;
            if shift < 128 {
                value |= u128::from(b & 0x7f) << shift;
            }
            shift += 7;
            if b & 0x80 == 0 || i == bytes.len() || i - start == 19 {
                break;
            }
        }
        let hex: Vec<String> = bytes[start..i].iter().map(|b| format!("{b:02x}")).collect();
        let complete = bytes[i - 1] & 0x80 == 0;
        let note = if complete { format!("= {value}") } else { "(unterminated varint)".into() };
        out.push(format!("{:04x}  {:<12} {note}", start, hex.join(" ")));
    }
    if i < bytes.len() {
        out.push(format!("... {} more bytes", bytes.len() - i));
    }
    out
}

/// How a payload differs from the previous one on its topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diff {
    /// Offsets whose byte differs (or exists in only one of them).
    pub changed: Vec<usize>,
    /// Previous length.
    pub before: usize,
    /// This length.
    pub after: usize,
}

/// Byte by byte, offsets aligned.
pub fn diff(before: &[u8], after: &[u8]) -> Diff {
    let n = before.len().max(after.len());
    let changed = (0..n).filter(|&i| before.get(i) != after.get(i)).collect();
    Diff { changed, before: before.len(), after: after.len() }
}

impl Diff {
    /// One line: how many bytes changed and where (the first few offsets).
    pub fn summary(&self) -> String {
        if self.changed.is_empty() {
            return "same bytes as the previous message".into();
        }
        let at: Vec<String> = self.changed.iter().take(8).map(|o| format!("{o:#x}")).collect();
        let more = if self.changed.len() > 8 { ", ..." } else { "" };
        let len = if self.before != self.after {
            format!("; length {} -> {}", self.before, self.after)
        } else {
            String::new()
        };
        format!("{} byte(s) differ at {}{more}{len}", self.changed.len(), at.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_rows_and_ascii_line_up() {
        let p = b"\x00\xffA\xc3(hi\x00zz";
        assert_eq!(hex_rows(p), ["0000  00 ff 41 c3 28 68 69 00", "0008  7a 7a"]);
        assert_eq!(text_lines(p, Decode::Ascii), ["..A.(hi.", "zz"]);
        assert!(hex_rows(b"").is_empty());
    }

    #[test]
    fn utf8_shows_every_byte() {
        assert_eq!(utf8_escaped(b"\x00\xffA\xc3(h\\"), "\\0\\xffA\\xc3(h\\\\");
        assert_eq!(utf8_escaped("grüße\x1b".as_bytes()), "grüße\\x1b");
        assert_eq!(text_lines(b"a\nb", Decode::Utf8), ["a", "b"]);
    }

    #[test]
    fn json_cbor_and_postcard() {
        assert_eq!(text_lines(br#"{"t":21.5}"#, Decode::Json), ["{", "  \"t\": 21.5", "}"]);
        assert!(text_lines(b"\xff", Decode::Json)[0].starts_with("not JSON"));
        // {"t": 21, "b": h'00ff'}
        let cbor = [0xa2, 0x61, b't', 0x15, 0x61, b'b', 0x42, 0x00, 0xff];
        assert_eq!(text_lines(&cbor, Decode::Cbor), ["{", "  \"b\": \"h'00ff'\",", "  \"t\": 21", "}"]);
        assert!(text_lines(&[0xa2], Decode::Cbor)[0].starts_with("not CBOR"));
        assert_eq!(
            postcard_varints(&[0x05, 0xac, 0x02, 0x80]),
            ["0000  05           = 5", "0001  ac 02        = 300", "0003  80           (unterminated varint)"]
        );
    }

    #[test]
    fn diffs() {
        let d = diff(b"abcd", b"abXdE");
        assert_eq!(d.changed, [2, 4]);
        assert_eq!(d.summary(), "2 byte(s) differ at 0x2,0x4; length 4 -> 5");
        assert_eq!(diff(b"x", b"x").summary(), "same bytes as the previous message");
    }
}
