//! Where the firmware keeps its data in flash (4 MB ESP32-C3 modules). `partitions.csv` declares
//! the same regions so the app partition can never grow over them; node-esp/README.md documents
//! them for `espflash write-bin`.

/// The provisioning blob (`starling_prov` partition, one 4 KiB sector).
pub const PROV_OFFSET: u32 = 0x20_0000;
/// The packet-number lease log (`starling_lease` partition, two 4 KiB sectors).
pub const LEASE_OFFSET: u32 = 0x20_1000;
