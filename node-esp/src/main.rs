//! Starling firmware for the ESP32-C3.
//!
//! Thin glue: it reads the provisioning blob and the lease log from flash, joins Wi-Fi, and then
//! [`runner::run`] moves datagrams, time and randomness between embassy-net and the `starling`
//! core. What to publish and how to answer calls is `starling-device`'s [`Device`], tested on the
//! host.
//!
//! # Map
//! - `main`: boot order, provisioning, Wi-Fi and network tasks.
//! - [`board`]: the [`Board`](starling_device::Board) of the ESP32-C3 (temperature sensor, RSSI,
//!   heap, one GPIO output).
//! - [`runner`]: the datagram/time loop around the core.
//! - [`layout`]: where the provisioning blob and the lease log live in flash.
//! - [`stack`]: the main stack's high-water mark, reported by `info`.
#![no_std]
#![no_main]

extern crate alloc;

mod board;
mod layout;
mod runner;
mod stack;

use alloc::boxed::Box;
use core::time::Duration;
use embassy_executor::Spawner;
use embassy_net::{Runner, StackResources};
use embassy_time::Timer;
use esp_backtrace as _;
use esp_radio::wifi::sta::StationConfig;
use esp_radio::wifi::{AuthenticationMethodConfig, Config as WifiConfig, Interface, WifiController};
use esp_storage::FlashStorage;
use log::{error, info, warn};
use starling_device::lease::LeaseLog;
use starling_device::{Device, Provisioning};

esp_bootloader_esp_idf::esp_app_desc!();

pub(crate) use starling_device::retry::backoff;

#[esp_rtos::main]
async fn main(spawner: Spawner) -> ! {
    stack::paint();
    esp_println::logger::init_logger_from_env();
    let peripherals = esp_hal::init(esp_hal::Config::default().with_cpu_clock(esp_hal::clock::CpuClock::max()));
    // Wi-Fi wants about 72 KiB of heap; the starling core stays below 32 KiB with 16 peers in PSK
    // mode and keeps at most 12 in identity mode (starling_device::IDENTITY_MAX_PEERS).
    esp_alloc::heap_allocator!(#[esp_hal::ram(reclaimed)] size: 64 * 1024);
    esp_alloc::heap_allocator!(size: 64 * 1024);
    let timg0 = esp_hal::timer::timg::TimerGroup::new(peripherals.TIMG0);
    esp_rtos::start(timg0.timer0, peripherals.FROM_CPU_INTR0);
    info!("starling node-esp {} booting", env!("CARGO_PKG_VERSION"));

    let mut flash = FlashStorage::new(peripherals.FLASH);
    let prov = read_provisioning(&mut flash).await;
    info!("provisioned: {prov:?}");

    // The radio must run before the TRNG gives real randomness.
    let sta = Interface::station();
    let controller = match WifiController::new(peripherals.WIFI, Default::default()) {
        Ok(c) => c,
        Err(e) => {
            error!("starting the Wi-Fi controller failed: {e:?}; restarting in 10 s");
            Timer::after_secs(10).await;
            esp_hal::system::software_reset();
        }
    };
    let trng = loop_until_ok("hardware RNG", esp_hal::rng::Trng::try_new).await;
    let mut seed = [0u8; 32];
    trng.read(&mut seed);
    let net_seed = u64::from(trng.random()) << 32 | u64::from(trng.random());

    let resources = Box::leak(Box::new(StackResources::<4>::new()));
    let net_config = embassy_net::Config::dhcpv4(Default::default());
    let (stack, net_runner) = embassy_net::new(sta, net_config, resources, net_seed);
    spawner.spawn(net_task(net_runner).expect("net task spawns once"));
    spawner.spawn(
        wifi_task(controller, prov.wifi_ssid.clone(), prov.wifi_password.clone()).expect("wifi task spawns once"),
    );

    let board = board::EspBoard::new(peripherals.TSENS, prov.gpio);
    let (lease, prev) = match LeaseLog::open(flash, layout::LEASE_OFFSET) {
        Ok((log, prev)) => (Some(log), prev),
        Err(e) => {
            error!("lease log unreadable ({e}); running without stored state (a fresh node id per boot)");
            (None, None)
        }
    };
    let device = Device::new(prov, runner::now());
    runner::run(stack, device, board, lease, prev, trng, seed).await
}

/// Called by esp-backtrace after it has printed a panic (an exhausted heap panics too): restart
/// after a pause instead of hanging with interrupts off, so that a board in a ceiling comes back
/// by itself. The lease log keeps packet numbers unique across the restart; the pause lets the
/// log drain and bounds the flash writes of a panic at every boot (one lease record per boot).
#[no_mangle]
fn custom_halt() -> ! {
    esp_hal::delay::Delay::new().delay_millis(3000);
    esp_hal::system::software_reset()
}

/// Reads and checks the provisioning blob; while it is missing or bad, says why on the serial
/// log with growing pauses and tries again (the device never boot-loops silently).
async fn read_provisioning(flash: &mut FlashStorage<'_>) -> Provisioning {
    let mut attempt = 0;
    // One flash sector (4 KiB): on the heap, not on the main task's stack.
    let mut blob = alloc::vec![0u8; starling_device::provision::MAX_BLOB_LEN];
    loop {
        match flash.read(layout::PROV_OFFSET, &mut blob) {
            Ok(()) => match Provisioning::decode(&blob) {
                Ok(p) => return p,
                Err(e) => error!(
                    "provisioning at flash offset {:#x}: {e}. Write one with `espflash write-bin {:#x} node.prov` \
                     (see node-esp/README.md). Waiting; nothing is sent.",
                    layout::PROV_OFFSET,
                    layout::PROV_OFFSET
                ),
            },
            Err(e) => error!("reading provisioning from flash offset {:#x} failed: {e:?}", layout::PROV_OFFSET),
        }
        let wait = backoff(attempt, Duration::from_secs(5), Duration::from_secs(60));
        attempt += 1;
        Timer::after_millis(wait.as_millis() as u64).await;
    }
}

async fn loop_until_ok<T, E: core::fmt::Debug>(what: &str, mut f: impl FnMut() -> Result<T, E>) -> T {
    let mut attempt = 0;
    loop {
        match f() {
            Ok(v) => return v,
            Err(e) => {
                let wait = backoff(attempt, Duration::from_secs(1), Duration::from_secs(30));
                error!("{what}: {e:?}; retrying in {} s", wait.as_secs());
                attempt += 1;
                Timer::after_millis(wait.as_millis() as u64).await;
            }
        }
    }
}

/// A state the device cannot leave without new provisioning: says so every minute, forever.
async fn stuck(why: &str) {
    loop {
        error!("{why}");
        Timer::after_secs(60).await;
    }
}

#[embassy_executor::task]
async fn net_task(mut runner: Runner<'static, Interface>) -> ! {
    runner.run().await
}

/// Keeps the station connected: wrong credentials or a vanished access point are logged and
/// retried with backoff; the RSSI reading is refreshed while connected.
#[embassy_executor::task]
async fn wifi_task(
    mut controller: WifiController<'static>,
    ssid: alloc::string::String,
    password: alloc::string::String,
) {
    let auth = if password.is_empty() {
        AuthenticationMethodConfig::Open
    } else {
        match password.as_str().try_into() {
            Ok(p) => AuthenticationMethodConfig::WpaWpa2Personal(p),
            Err(_) => {
                error!("Wi-Fi password rejected by the driver; trying an open network");
                AuthenticationMethodConfig::Open
            }
        }
    };
    let Ok(ssid_cfg) = ssid.as_str().try_into() else {
        return stuck("the Wi-Fi SSID was rejected by the driver; reprovision the device").await;
    };
    let config = WifiConfig::Station(StationConfig::default().with_ssid(ssid_cfg).with_authentication(auth));
    if let Err(e) = controller.set_config(&config) {
        error!("Wi-Fi configuration refused: {e:?}");
        return stuck("the Wi-Fi configuration was refused; reprovision the device").await;
    }
    let mut attempt = 0;
    loop {
        info!("Wi-Fi: connecting to {ssid:?}");
        match controller.connect_async().await {
            Ok(_) => {
                info!("Wi-Fi: connected to {ssid:?}");
                attempt = 0;
                loop {
                    if let Ok(r) = controller.rssi() {
                        board::RSSI.store(r, core::sync::atomic::Ordering::Relaxed);
                    }
                    let disconnected =
                        embassy_futures::select::select(controller.wait_for_disconnect_async(), Timer::after_secs(5))
                            .await;
                    if let embassy_futures::select::Either::First(d) = disconnected {
                        warn!("Wi-Fi: disconnected ({d:?})");
                        board::RSSI.store(i32::MIN, core::sync::atomic::Ordering::Relaxed);
                        break;
                    }
                }
            }
            Err(e) => {
                let wait = backoff(attempt, Duration::from_secs(2), Duration::from_secs(60));
                error!(
                    "Wi-Fi: connecting to {ssid:?} failed: {e:?} (wrong SSID or password, or out of range); \
                     retrying in {} s",
                    wait.as_secs()
                );
                attempt += 1;
                Timer::after_millis(wait.as_millis() as u64).await;
            }
        }
    }
}
