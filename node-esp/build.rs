//! Passes esp-hal's linker script; the firmware is linked for the ESP32-C3's memory map.
fn main() {
    println!("cargo:rustc-link-arg=-Tlinkall.x");
}
