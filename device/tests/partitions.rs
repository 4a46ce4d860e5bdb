//! `node-esp/partitions.csv` is read by espflash's own parser (esp-idf-part, the version espflash
//! 4.7 uses), as `espflash flash --partition-table` and `save-image` read it: it must parse (the
//! numeric data subtypes 0x40/0x41 it had made espflash panic), and the Starling partitions must
//! lie where the firmware's fixed offsets (`node-esp/src/layout.rs`) and the provisioning blob's
//! size limit say.

use esp_idf_part::{DataType, PartitionTable, SubType, Type};

const CSV: &str = include_str!("../../node-esp/partitions.csv");
const LAYOUT: &str = include_str!("../../node-esp/src/layout.rs");

/// The value of `pub const NAME: u32 = 0x..;` in layout.rs.
fn layout_const(name: &str) -> u32 {
    let line = LAYOUT.lines().find(|l| l.contains(&format!("pub const {name}: u32"))).expect("constant in layout.rs");
    let value = line.split('=').nth(1).unwrap().trim().trim_end_matches(';').replace('_', "");
    u32::from_str_radix(value.trim_start_matches("0x"), 16).expect("hex constant")
}

#[test]
fn espflash_parses_the_partition_table_and_it_matches_the_firmware_layout() {
    let table = PartitionTable::try_from(CSV.as_bytes().to_vec()).expect("espflash's parser accepts partitions.csv");
    let find = |name: &str| table.partitions().iter().find(|p| p.name() == name).cloned().expect(name);
    let prov = find("starling_prov");
    let lease = find("starling_lease");
    for p in [&prov, &lease] {
        assert_eq!((p.ty(), p.subtype()), (Type::Data, SubType::Data(DataType::Undefined)), "{}", p.name());
    }
    assert_eq!(prov.offset(), layout_const("PROV_OFFSET"));
    assert_eq!(prov.size() as usize, starling_device::provision::MAX_BLOB_LEN);
    assert_eq!(lease.offset(), layout_const("LEASE_OFFSET"));
    assert_eq!(lease.size(), 2 * 4096, "two 4 KiB sectors for the lease log");
    let app = find("factory");
    assert!(app.offset() + app.size() <= prov.offset(), "the app partition ends before Starling's data");
}
