//! Text decoders: `NetworkKey::parse` (key files), `hex::decode_into` and `NodeId::from_str` on
//! arbitrary text. A parsed key prints back (`to_hex`) to text that parses to the same key;
//! hex and node ids round-trip through their encoders.
#![no_main]

use libfuzzer_sys::fuzz_target;
use starling::{hex, NetworkKey, NodeId};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(key) = NetworkKey::parse(text) {
        let mut out = [0u8; 64];
        key.to_hex(&mut out);
        let printed = std::str::from_utf8(&out).expect("hex is ASCII");
        assert_eq!(NetworkKey::parse(printed).as_ref(), Ok(&key), "to_hex -> parse changed the key");
        assert_eq!(NetworkKey::parse(&format!("# key\n{printed}\n")).as_ref(), Ok(&key));
    }
    let mut raw = vec![0u8; text.len() / 2];
    if hex::decode_into(text, &mut raw).is_ok() {
        let mut out = vec![0u8; 2 * raw.len()];
        hex::encode_into(&raw, &mut out);
        assert!(out.eq_ignore_ascii_case(text.as_bytes()), "hex round trip changed {text:?}");
    }
    if let Ok(id) = text.parse::<NodeId>() {
        let shown = id.to_string();
        assert_eq!(shown.parse::<NodeId>(), Ok(id), "Display -> parse changed the id");
        assert_eq!(u64::from_str_radix(text, 16).ok(), Some(id.as_u64()));
    }
});
