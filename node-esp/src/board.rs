//! The ESP32-C3 as a [`Board`]: its temperature sensor, the Wi-Fi RSSI, the heap, one GPIO.

use core::sync::atomic::{AtomicI32, Ordering};
use esp_hal::gpio::{AnyPin, Level, Output, OutputConfig};
use esp_hal::peripherals::TSENS;
use esp_hal::tsens::TemperatureSensor;
use log::warn;
use starling_device::provision::{GpioPin, ESP32C3_RESERVED_GPIOS};
use starling_device::{Board, Memory};

/// The last RSSI the Wi-Fi task read; `i32::MIN` while disconnected.
pub static RSSI: AtomicI32 = AtomicI32::new(i32::MIN);

/// The board's peripherals the application uses.
pub struct EspBoard {
    tsens: Option<TemperatureSensor<'static>>,
    output: Option<(GpioPin, Output<'static>)>,
}

impl EspBoard {
    /// Takes the temperature sensor and, when provisioned, the output pin (off at start).
    pub fn new(tsens: TSENS<'static>, gpio: Option<GpioPin>) -> Self {
        let tsens = TemperatureSensor::new(tsens, Default::default()).ok();
        let output = gpio.and_then(|g| {
            if ESP32C3_RESERVED_GPIOS.contains(&g.pin) {
                warn!("GPIO{} is reserved (flash or USB serial); gpio.set will refuse", g.pin);
                return None;
            }
            // SAFETY: the pin number was validated (0..=21, not flash or USB) and no other code
            // of this firmware takes GPIO pins.
            let pin = unsafe { AnyPin::steal(g.pin) };
            let off = if g.active_low { Level::High } else { Level::Low };
            Some((g, Output::new(pin, off, OutputConfig::default())))
        });
        EspBoard { tsens, output }
    }
}

impl Board for EspBoard {
    fn temperature_c(&mut self) -> Option<f32> {
        self.tsens.as_ref().map(|t| t.get_temperature().to_celsius())
    }

    fn rssi_dbm(&mut self) -> Option<i32> {
        let r = RSSI.load(Ordering::Relaxed);
        (r != i32::MIN).then_some(r)
    }

    fn free_heap(&mut self) -> Option<usize> {
        Some(esp_alloc::HEAP.free())
    }

    fn set_output(&mut self, pin: GpioPin, on: bool) -> Result<(), &'static str> {
        let Some((g, out)) = self.output.as_mut() else {
            return Err("reserved on the ESP32-C3 (flash or USB serial pins 12-19)");
        };
        if g.pin != pin.pin {
            return Err("not the provisioned output");
        }
        out.set_level(if on != g.active_low { Level::High } else { Level::Low });
        Ok(())
    }

    fn platform(&self) -> &'static str {
        "esp32c3"
    }

    fn memory(&mut self) -> Memory {
        let heap = esp_alloc::HEAP.stats();
        Memory {
            heap_size: Some(heap.size),
            heap_peak: Some(heap.max_usage),
            stack_size: Some(crate::stack::size()),
            stack_peak: Some(crate::stack::peak_used()),
        }
    }
}
