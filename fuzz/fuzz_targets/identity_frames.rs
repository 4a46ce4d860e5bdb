//! Identity mode's unsealed frames (`wire::identity`: Announce, HandshakeInit, HandshakeResp,
//! Cookie) on arbitrary bytes: no parser panics, each accepts only its own suite and layout, and
//! what one accepts is emitted back to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use starling::wire::identity::{Announce, CookieReply, HandshakeInit, HandshakeResp, MAC_LEN};
use starling::wire::Header;

fuzz_target!(|data: &[u8]| {
    let suite = Header::parse(data).map(|h| h.suite).ok();
    let mut accepted = 0;
    if let Ok(a) = Announce::parse(data) {
        accepted += 1;
        assert_eq!(a.emit(), data, "Announce: emit(parse(x)) differs from x");
    }
    if let Ok(i) = HandshakeInit::parse(data) {
        accepted += 1;
        let mut f = HandshakeInit::emit_unmacked(i.header.net_tag, i.header.sender, i.receiver, i.message);
        f.extend_from_slice(&i.mac1);
        f.extend_from_slice(&i.mac2);
        assert_eq!(f.len(), HandshakeInit::MAC2_AT + MAC_LEN);
        assert_eq!(f, data, "HandshakeInit: emit(parse(x)) differs from x");
    }
    if let Ok(r) = HandshakeResp::parse(data) {
        accepted += 1;
        let mut f = HandshakeResp::emit_unmacked(r.header.net_tag, r.header.sender, r.receiver, r.message);
        f.extend_from_slice(&r.mac1);
        assert_eq!(f, data, "HandshakeResp: emit(parse(x)) differs from x");
        assert_eq!(HandshakeResp::covered(data), &data[..data.len() - MAC_LEN]);
    }
    if let Ok(c) = CookieReply::parse(data) {
        accepted += 1;
        assert_eq!(c.emit(), data, "Cookie: emit(parse(x)) differs from x");
    }
    // The suite decides which parser may accept: at most one, and only on a valid header
    // whose packet-number field is that of unsealed frames (any value parses; emit writes 0).
    assert!(accepted <= 1);
    if accepted == 1 {
        assert!(matches!(suite, Some(1..=4)), "accepted with suite {suite:?}");
    }
});
