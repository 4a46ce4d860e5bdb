//! Lowercase hex encoding for keys, ids and test vectors (no allocation).

/// Writes `2 * src.len()` lowercase hex digits into `out`.
pub fn encode_into(src: &[u8], out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in src.iter().enumerate() {
        out[2 * i] = DIGITS[usize::from(b >> 4)];
        out[2 * i + 1] = DIGITS[usize::from(b & 0x0f)];
    }
}

/// Decodes hex digits (either case) into `out`, which must be exactly half as long as `src`.
/// On error returns the character offset of the first bad digit.
pub fn decode_into(src: &str, out: &mut [u8]) -> Result<(), usize> {
    let bytes = src.as_bytes();
    if bytes.len() != 2 * out.len() {
        return Err(bytes.len().min(2 * out.len()));
    }
    for (i, o) in out.iter_mut().enumerate() {
        let hi = digit(bytes[2 * i]).ok_or(2 * i)?;
        let lo = digit(bytes[2 * i + 1]).ok_or(2 * i + 1)?;
        *o = (hi << 4) | lo;
    }
    Ok(())
}

fn digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}
