//! Parity repair for multicast streams (PROTOCOL.md §6.8): RaptorQ (RFC 6330) repair symbols over
//! one message's chunks, through the `raptorq` crate.
//!
//! A message of `K >= 2` chunks is one source block: its bytes, zero-padded to `K * symbol`, cut
//! into `K` symbols of `symbol` bytes (every chunk but the last is exactly that long). Any `K`
//! of its symbols, source chunks and repair symbols mixed, almost always rebuild it (RFC 6330
//! §5.5: fails about once in a hundred with exactly `K`, once in a million with `K + 2`). So one
//! repair symbol fills a different hole at every receiver, and a sender that lost different
//! chunks at each of ten receivers sends what the worst of them lost rather than their union.

//!
//! Without the `parity` feature (boards, to save about 190 KiB of flash) the codec is absent:
//! [`ENABLED`] is false, [`encode`] makes nothing and [`decode`] rebuilds nothing, and the node
//! neither sends Repair records nor announces that it can use them.

#[cfg(feature = "parity")]
use alloc::vec;
use alloc::vec::Vec;

#[cfg(feature = "parity")]
use raptorq::{EncodingPacket, ObjectTransmissionInformation, PayloadId, SourceBlockDecoder, SourceBlockEncoder};

/// Whether this build has the codec (the `parity` feature).
pub const ENABLED: bool = cfg!(feature = "parity");

#[cfg(feature = "parity")]
fn oti(len: u32, symbol: u16) -> ObjectTransmissionInformation {
    // One source block, one sub-block, alignment 1: symbols are the chunks as they are.
    ObjectTransmissionInformation::new(u64::from(len), symbol, 1, 1, 1)
}

/// Repair symbols `count` of them, starting with repair symbol number `start` (0 is the first
/// repair symbol), for the message whose chunks are `chunks` (all `symbol` bytes long but the
/// last, which is 1..=symbol). Returns each symbol's encoding symbol id and bytes.
#[cfg(feature = "parity")]
pub fn encode<'a>(
    chunks: impl Iterator<Item = &'a [u8]>,
    len: u32,
    symbol: u16,
    start: u32,
    count: u32,
) -> Vec<(u32, Vec<u8>)> {
    let t = usize::from(symbol);
    let k = (len as usize).div_ceil(t.max(1));
    let mut block = Vec::with_capacity(k * t);
    for c in chunks {
        block.extend_from_slice(c);
    }
    debug_assert_eq!(block.len(), len as usize);
    block.resize(k * t, 0);
    let encoder = SourceBlockEncoder::new(0, &oti(len, symbol), &block);
    encoder
        .repair_packets(start, count)
        .into_iter()
        .map(|p| {
            let (id, data) = p.split();
            (id.encoding_symbol_id(), data)
        })
        .collect()
}

/// Rebuilds the message of `len` bytes in `symbol`-byte chunks from the chunks a receiver
/// holds (`(index, bytes)`; the last one may be short) and repair symbols (`(esi, bytes)`, each
/// `symbol` bytes). `None` when they are not enough (ask for more). The caller checked the
/// shapes: indices below K, chunk lengths as the message's, repair ids at least K.
#[cfg(feature = "parity")]
pub fn decode<'a>(
    len: u32,
    symbol: u16,
    chunks: impl Iterator<Item = (u32, &'a [u8])>,
    repairs: impl Iterator<Item = (u32, &'a [u8])>,
) -> Option<Vec<u8>> {
    let t = usize::from(symbol);
    let mut packets = Vec::new();
    for (index, bytes) in chunks {
        let mut data = vec![0u8; t];
        data[..bytes.len().min(t)].copy_from_slice(&bytes[..bytes.len().min(t)]);
        packets.push(EncodingPacket::new(PayloadId::new(0, index), data));
    }
    for (esi, bytes) in repairs {
        if bytes.len() == t {
            packets.push(EncodingPacket::new(PayloadId::new(0, esi), bytes.to_vec()));
        }
    }
    let mut decoder = SourceBlockDecoder::new(0, &oti(len, symbol), u64::from(len));
    let mut out = decoder.decode(packets)?;
    out.truncate(len as usize);
    Some(out)
}

/// Without the codec: no repair symbols.
#[cfg(not(feature = "parity"))]
pub fn encode<'a>(
    _chunks: impl Iterator<Item = &'a [u8]>,
    _len: u32,
    _symbol: u16,
    _start: u32,
    _count: u32,
) -> Vec<(u32, Vec<u8>)> {
    Vec::new()
}

/// Without the codec: nothing is rebuilt.
#[cfg(not(feature = "parity"))]
pub fn decode<'a>(
    _len: u32,
    _symbol: u16,
    _chunks: impl Iterator<Item = (u32, &'a [u8])>,
    _repairs: impl Iterator<Item = (u32, &'a [u8])>,
) -> Option<Vec<u8>> {
    None
}

#[cfg(all(test, feature = "parity"))]
mod tests {
    use super::*;

    fn message(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 + 7) as u8).collect()
    }

    #[test]
    fn one_repair_symbol_fills_a_different_hole_at_each_receiver() {
        let msg = message(5000);
        let chunks: Vec<&[u8]> = msg.chunks(1000).collect();
        let repairs = encode(chunks.iter().copied(), 5000, 1000, 0, 2);
        assert_eq!(repairs.iter().map(|r| r.0).collect::<Vec<_>>(), vec![5, 6], "ids follow the K source ids");
        for lost in 0..5u32 {
            let held = chunks.iter().enumerate().filter(|(i, _)| *i as u32 != lost).map(|(i, c)| (i as u32, *c));
            let r = repairs.iter().take(1).map(|(e, b)| (*e, &b[..]));
            assert_eq!(decode(5000, 1000, held, r).as_deref(), Some(&msg[..]), "chunk {lost} lost");
        }
        // Two holes need two symbols.
        let held = || chunks.iter().enumerate().skip(2).map(|(i, c)| (i as u32, *c));
        assert_eq!(decode(5000, 1000, held(), repairs.iter().take(1).map(|(e, b)| (*e, &b[..]))), None);
        let both = repairs.iter().map(|(e, b)| (*e, &b[..]));
        assert_eq!(decode(5000, 1000, held(), both).as_deref(), Some(&msg[..]));
    }

    #[test]
    fn symbols_do_not_depend_on_how_many_are_asked_for_at_once() {
        // A sender makes repair symbols a few at a time, round after round: symbol n must be
        // the same whether it came in a burst of one or of ten.
        let msg = message(64 * 1024);
        let chunks = || msg.chunks(1124);
        let len = msg.len() as u32;
        let all = encode(chunks(), len, 1124, 0, 10);
        let later = encode(chunks(), len, 1124, 7, 3);
        assert_eq!(&all[7..], &later[..]);
    }

    #[test]
    fn a_whole_message_of_many_chunks_comes_back_from_enough_symbols_of_any_kind() {
        let msg = message(64 * 1024);
        let chunks: Vec<&[u8]> = msg.chunks(1124).collect();
        let k = chunks.len() as u32;
        let len = msg.len() as u32;
        // A third of the chunks lost (every third), as many repair symbols plus two.
        let lost = (0..k).filter(|i| i % 3 == 0).count() as u32;
        let repairs = encode(chunks.iter().copied(), len, 1124, 0, lost + 2);
        let held = chunks.iter().enumerate().filter(|(i, _)| i % 3 != 0).map(|(i, c)| (i as u32, *c));
        let got = decode(len, 1124, held, repairs.iter().map(|(e, b)| (*e, &b[..])));
        assert_eq!(got.as_deref(), Some(&msg[..]));
    }

    #[test]
    fn symbols_of_the_wrong_length_are_ignored_not_a_panic() {
        let msg = message(3000);
        let chunks: Vec<&[u8]> = msg.chunks(1000).collect();
        let held = chunks.iter().enumerate().skip(1).map(|(i, c)| (i as u32, *c));
        let bad = [(3u32, &[0u8; 10][..])];
        assert_eq!(decode(3000, 1000, held, bad.into_iter()), None);
    }
}
