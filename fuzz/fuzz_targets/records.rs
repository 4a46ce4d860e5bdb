//! `wire::RecordIter` over an arbitrary opened body. Every record that parses must survive
//! emit -> parse unchanged, with `encoded_len` equal to what `emit` wrote, and re-emitting the
//! re-parsed record must give the same bytes. The iterator stops after the first error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use starling::wire::RecordIter;

fuzz_target!(|data: &[u8]| {
    let mut iter = RecordIter::new(data);
    let mut count = 0usize;
    while let Some(item) = iter.next() {
        count += 1;
        // Every record takes at least its type byte and a length byte.
        assert!(count <= data.len(), "more records than bytes");
        let record = match item {
            Ok(r) => r,
            Err(_) => {
                assert!(iter.next().is_none(), "the iterator goes on after an error");
                break;
            }
        };
        let mut out = Vec::new();
        record.emit(&mut out);
        assert_eq!(out.len(), record.encoded_len(), "encoded_len disagrees with emit for {record:?}");
        let mut again = RecordIter::new(&out);
        let reparsed = again.next().expect("one record").expect("an emitted record parses");
        assert!(again.next().is_none(), "emit wrote more than one record");
        assert_eq!(reparsed, record, "emit -> parse changed the record");
        let mut out2 = Vec::new();
        reparsed.emit(&mut out2);
        assert_eq!(out2, out, "emit is not stable");
    }
});
