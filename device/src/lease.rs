//! The packet-number lease log on NOR flash (PROTOCOL.md §3.3): a device writes each new
//! [`PersistedState`] here before it uses the packet numbers it covers, so a reboot or power
//! loss never reuses a nonce.
//!
//! The region is two erase sectors. Records are the 32-byte [`PersistedState`] encoding,
//! appended to the active sector without erasing (NOR flash programs erased bytes). When the
//! active sector is full, the other one is erased and the next record starts it: the newest
//! record always survives a power loss, whether it strikes during a write (the torn record fails
//! its checksum, the one before it stands) or during an erase (the other sector holds the newest).
//! On open, the valid record with the highest lease end wins.

use core::fmt;
use embedded_storage::nor_flash::{NorFlash, NorFlashError, NorFlashErrorKind};
use starling::state::STATE_LEN;
use starling::PersistedState;

const SLOT: usize = STATE_LEN;

/// Why the lease log could not read or write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LeaseError {
    /// The flash driver failed.
    Flash(NorFlashErrorKind),
    /// A record read back differs from what was written (worn or failing flash).
    Verify,
    /// The flash's geometry does not suit the log (sector or write size).
    Geometry(&'static str),
}

impl fmt::Display for LeaseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LeaseError::Flash(k) => write!(f, "flash error: {k:?}"),
            LeaseError::Verify => f.write_str("lease record read back wrong (worn or failing flash)"),
            LeaseError::Geometry(why) => write!(f, "flash geometry unsuitable: {why}"),
        }
    }
}

impl core::error::Error for LeaseError {}

fn flash_err<E: NorFlashError>(e: E) -> LeaseError {
    LeaseError::Flash(e.kind())
}

/// The log over two sectors of `F` starting at byte offset `base`.
#[derive(Debug)]
pub struct LeaseLog<F> {
    flash: F,
    base: u32,
    active: u32,
    next_slot: u32,
}

impl<F: NorFlash> LeaseLog<F> {
    /// Bytes the log occupies: two erase sectors.
    pub const REGION_LEN: u32 = 2 * F::ERASE_SIZE as u32;

    fn slots() -> u32 {
        (F::ERASE_SIZE / SLOT) as u32
    }

    fn addr(&self, sector: u32, slot: u32) -> u32 {
        self.base + sector * F::ERASE_SIZE as u32 + slot * SLOT as u32
    }

    /// Scans the region and returns the log with the newest valid record, if any.
    pub fn open(flash: F, base: u32) -> Result<(Self, Option<PersistedState>), LeaseError> {
        if F::ERASE_SIZE < 2 * SLOT || !F::ERASE_SIZE.is_multiple_of(SLOT) || !SLOT.is_multiple_of(F::WRITE_SIZE) {
            return Err(LeaseError::Geometry("sectors must hold whole 32-byte records, written in whole units"));
        }
        if !base.is_multiple_of(F::ERASE_SIZE as u32) {
            return Err(LeaseError::Geometry("the region must start on a sector boundary"));
        }
        let mut log = LeaseLog { flash, base, active: 0, next_slot: 0 };
        let mut best: Option<(PersistedState, u32, u32)> = None;
        for sector in 0..2 {
            for slot in 0..Self::slots() {
                let mut b = [0u8; SLOT];
                log.flash.read(log.addr(sector, slot), &mut b).map_err(flash_err)?;
                if let Ok(s) = PersistedState::decode(&b) {
                    if best.is_none_or(|(o, _, _)| s.lease_end > o.lease_end) {
                        best = Some((s, sector, slot));
                    }
                }
            }
        }
        match best {
            Some((s, sector, slot)) => {
                log.active = sector;
                log.next_slot = slot + 1;
                Ok((log, Some(s)))
            }
            None => {
                // Nothing valid: start fresh in sector 0 (erased at the first store if needed).
                log.active = 1;
                log.next_slot = Self::slots();
                Ok((log, None))
            }
        }
    }

    /// Appends `state` durably; when this returns `Ok` the record survives power loss.
    pub fn store(&mut self, state: &PersistedState) -> Result<(), LeaseError> {
        // Skip slots that are not erased (a torn write from an earlier boot).
        while self.next_slot < Self::slots() && !self.slot_erased(self.active, self.next_slot)? {
            self.next_slot += 1;
        }
        if self.next_slot >= Self::slots() {
            let other = 1 - self.active;
            let from = self.addr(other, 0);
            self.flash.erase(from, from + F::ERASE_SIZE as u32).map_err(flash_err)?;
            self.active = other;
            self.next_slot = 0;
        }
        let at = self.addr(self.active, self.next_slot);
        self.next_slot += 1;
        let bytes = state.encode();
        self.flash.write(at, &bytes).map_err(flash_err)?;
        let mut back = [0u8; SLOT];
        self.flash.read(at, &mut back).map_err(flash_err)?;
        if back != bytes {
            return Err(LeaseError::Verify);
        }
        Ok(())
    }

    fn slot_erased(&mut self, sector: u32, slot: u32) -> Result<bool, LeaseError> {
        let mut b = [0u8; SLOT];
        self.flash.read(self.addr(sector, slot), &mut b).map_err(flash_err)?;
        Ok(b.iter().all(|&x| x == 0xff))
    }

    /// Gives the flash back.
    pub fn into_inner(self) -> F {
        self.flash
    }
}

/// A NOR flash in RAM with NOR semantics (writes only clear bits, erase sets a sector to `0xff`)
/// and injectable faults: for tests of the log and of drivers on the host.
#[derive(Debug, Clone)]
pub struct RamFlash {
    /// The contents.
    pub bytes: alloc::vec::Vec<u8>,
    /// Fail every erase (a worn sector).
    pub fail_erase: bool,
    /// Write only this many bytes of the next write, then fail (power loss mid-write).
    pub tear_next_write: Option<usize>,
}

impl RamFlash {
    /// An erased flash of `len` bytes.
    pub fn new(len: usize) -> Self {
        RamFlash { bytes: alloc::vec![0xff; len], fail_erase: false, tear_next_write: None }
    }
}

/// The error of [`RamFlash`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RamFlashError(pub NorFlashErrorKind);

impl NorFlashError for RamFlashError {
    fn kind(&self) -> NorFlashErrorKind {
        self.0
    }
}

impl embedded_storage::nor_flash::ErrorType for RamFlash {
    type Error = RamFlashError;
}

impl embedded_storage::nor_flash::ReadNorFlash for RamFlash {
    const READ_SIZE: usize = 1;

    fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), Self::Error> {
        let o = offset as usize;
        let src = self.bytes.get(o..o + bytes.len()).ok_or(RamFlashError(NorFlashErrorKind::OutOfBounds))?;
        bytes.copy_from_slice(src);
        Ok(())
    }

    fn capacity(&self) -> usize {
        self.bytes.len()
    }
}

impl NorFlash for RamFlash {
    const WRITE_SIZE: usize = 4;
    const ERASE_SIZE: usize = 4096;

    fn erase(&mut self, from: u32, to: u32) -> Result<(), Self::Error> {
        if self.fail_erase {
            return Err(RamFlashError(NorFlashErrorKind::Other));
        }
        let r = self.bytes.get_mut(from as usize..to as usize).ok_or(RamFlashError(NorFlashErrorKind::OutOfBounds))?;
        r.fill(0xff);
        Ok(())
    }

    fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), Self::Error> {
        let o = offset as usize;
        let dst = self.bytes.get_mut(o..o + bytes.len()).ok_or(RamFlashError(NorFlashErrorKind::OutOfBounds))?;
        let n = self.tear_next_write.take().map_or(bytes.len(), |n| n.min(bytes.len()));
        for (d, s) in dst.iter_mut().zip(&bytes[..n]) {
            *d &= *s;
        }
        if n < bytes.len() {
            return Err(RamFlashError(NorFlashErrorKind::Other));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use starling::{Boot, NodeId};

    type Log = LeaseLog<RamFlash>;

    fn state(lease_end: u64) -> PersistedState {
        PersistedState { node_id: NodeId::from_u64(42), epoch: 3, lease_end }
    }

    #[test]
    fn empty_flash_then_many_records_across_sector_switches() {
        let (mut log, prev) = Log::open(RamFlash::new(3 * 4096), 4096).unwrap();
        assert_eq!(prev, None);
        // 128 records per sector: 300 records fill and switch sectors twice.
        for i in 1..=300 {
            log.store(&state(i * 100)).unwrap();
            if i % 37 == 0 {
                let (again, prev) = Log::open(log.into_inner(), 4096).unwrap();
                assert_eq!(prev, Some(state(i * 100)), "after {i} records");
                log = again;
            }
        }
        let flash = log.into_inner();
        assert!(flash.bytes[..4096].iter().all(|&b| b == 0xff), "the log stays inside its region");
        assert_eq!(Log::open(flash, 4096).unwrap().1, Some(state(30_000)));
    }

    #[test]
    fn torn_write_keeps_the_previous_record_and_the_next_write_works() {
        let (mut log, _) = Log::open(RamFlash::new(2 * 4096), 0).unwrap();
        log.store(&state(100)).unwrap();
        let mut flash = log.into_inner();
        flash.tear_next_write = Some(13);
        let (mut log, _) = Log::open(flash, 0).unwrap();
        assert!(matches!(log.store(&state(200)), Err(LeaseError::Flash(_))));
        let (mut log, prev) = Log::open(log.into_inner(), 0).unwrap();
        assert_eq!(prev, Some(state(100)), "the torn record is ignored");
        log.store(&state(300)).unwrap();
        assert_eq!(Log::open(log.into_inner(), 0).unwrap().1, Some(state(300)));
    }

    #[test]
    fn full_sector_with_failing_erase_reports_and_keeps_the_newest() {
        let (mut log, _) = Log::open(RamFlash::new(2 * 4096), 0).unwrap();
        for i in 1..=128 {
            log.store(&state(i)).unwrap();
        }
        let mut flash = log.into_inner();
        flash.fail_erase = true;
        let (mut log, _) = Log::open(flash, 0).unwrap();
        assert_eq!(log.store(&state(129)), Err(LeaseError::Flash(NorFlashErrorKind::Other)));
        let mut flash = log.into_inner();
        flash.fail_erase = false;
        let (mut log, prev) = Log::open(flash, 0).unwrap();
        assert_eq!(prev, Some(state(128)));
        log.store(&state(129)).unwrap();
        assert_eq!(Log::open(log.into_inner(), 0).unwrap().1, Some(state(129)));
    }

    #[test]
    fn reboots_never_reuse_packet_numbers() {
        let mut flash = RamFlash::new(2 * 4096);
        let mut last_first_pn = None;
        for boot_no in 0..5u32 {
            let (mut log, prev) = Log::open(flash, 0).unwrap();
            let (boot, to_store) = Boot::resume(prev, NodeId::from_u64(7), 1 << 14).unwrap();
            log.store(&to_store).unwrap();
            assert_eq!(boot.epoch, boot_no + 1);
            if let Some(p) = last_first_pn {
                assert!(boot.first_pn >= p + (1 << 14), "boot {boot_no} starts past the previous lease");
            }
            last_first_pn = Some(boot.first_pn);
            flash = log.into_inner();
        }
    }

    #[test]
    fn unaligned_region_is_refused() {
        assert!(matches!(Log::open(RamFlash::new(3 * 4096), 100), Err(LeaseError::Geometry(_))));
    }
}
