//! The main stack's high-water mark, for `info`: the free part of the stack is painted with a
//! pattern at boot, and the lowest word that no longer holds it marks the deepest use so far.
//!
//! Every async task of this firmware (embassy tasks are state machines, not threads) and every
//! interrupt handler runs on this stack, so its peak is the firmware's stack use. The radio's
//! threads (esp-radio) have their own stacks on the heap; they are counted in the heap figures.

use core::arch::asm;

/// The paint ("STLK"); a stack word that still holds it was never written.
const PAINT: u32 = 0x5354_4c4b;
/// Bytes at the bottom left unpainted: the stack-protector guard word lives there.
const BOTTOM_SKIP: usize = 256;
/// Bytes below the stack pointer left unpainted: the painting code's own calls.
const BELOW_SP: usize = 512;

unsafe extern "C" {
    static _stack_end_cpu0: u32;
    static _stack_start_cpu0: u32;
}

/// Lowest and highest address of the main stack (it grows down from the highest).
fn bounds() -> (usize, usize) {
    ((&raw const _stack_end_cpu0) as usize, (&raw const _stack_start_cpu0) as usize)
}

/// Paints the unused part of the main stack. Called once, first thing in `main`, with
/// interrupts masked so that no handler's frame below the stack pointer is overwritten.
#[inline(never)]
pub fn paint() {
    let sp: usize;
    // SAFETY: reads the stack pointer register, nothing else.
    unsafe { asm!("mv {0}, sp", out(reg) sp) };
    let (bottom, _) = bounds();
    let (from, to) = (bottom + BOTTOM_SKIP, sp.saturating_sub(BELOW_SP));
    critical_section::with(|_| {
        let mut p = from as *mut u32;
        while (p as usize) < to {
            // SAFETY: [from, to) lies inside the main stack below the live frames (sp minus a
            // margin for this function's calls) and above the guard word; nothing else
            // uses that memory while interrupts are masked.
            unsafe {
                p.write_volatile(PAINT);
                p = p.add(1);
            }
        }
    });
}

/// Size of the main stack in bytes.
pub fn size() -> usize {
    let (bottom, top) = bounds();
    top - bottom
}

/// The deepest use of the main stack since [`paint`], in bytes.
pub fn peak_used() -> usize {
    let (bottom, top) = bounds();
    let mut p = (bottom + BOTTOM_SKIP) as *const u32;
    // SAFETY: reads words of the main stack below the current frame; they are plain memory
    // (the paint, or what a deeper call left there).
    while (p as usize) < top && unsafe { p.read_volatile() } == PAINT {
        p = unsafe { p.add(1) };
    }
    top - p as usize
}
