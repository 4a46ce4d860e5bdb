//! Links for QEMU's `virt` machine: RAM at 0x8000_0000, see `virt.x`.
fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo");
    println!("cargo:rustc-link-arg=-T{dir}/virt.x");
    println!("cargo:rerun-if-changed=virt.x");
}
