//! What the GPU itself reports, through NVML (`nvml-wrapper`, which loads the driver's
//! `libnvidia-ml.so` at run time): memory, utilisation, temperature and power. No driver
//! (the CPU image, a laptop, CI) means no probe, never a failure to start.

use std::fmt;

use nvml_wrapper::enum_wrappers::device::TemperatureSensor;

/// One reading of one GPU. Memory is always there; the rest is `None` where the board
/// does not report it (NVML answers NotSupported on some of them).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GpuReading {
    pub used_bytes: u64,
    pub total_bytes: u64,
    pub utilization_ratio: Option<f64>,
    pub temperature_celsius: Option<f64>,
    pub power_watts: Option<f64>,
}

impl GpuReading {
    /// Used over total memory, 0 to 1 (0 for a board that reports no memory).
    pub fn memory_ratio(&self) -> f64 {
        if self.total_bytes == 0 {
            0.0
        } else {
            self.used_bytes as f64 / self.total_bytes as f64
        }
    }
}

/// Where readings come from: NVML in service, a fixed reading in tests.
pub trait GpuProbe: Send + Sync + fmt::Debug {
    /// The current reading; `None` when the device cannot answer right now.
    fn read(&self) -> Option<GpuReading>;
}

/// NVML, for the GPU with index `index` (the CUDA ordinal: in a pod, the only GPU it
/// was given is 0).
pub struct NvmlProbe {
    nvml: nvml_wrapper::Nvml,
    index: u32,
}

impl fmt::Debug for NvmlProbe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NvmlProbe")
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}

impl NvmlProbe {
    /// Loads NVML and checks that GPU `index` answers; the error says why not (no
    /// library, no such GPU) for the one log line that turns the guard off.
    pub fn open(index: u32) -> Result<Self, String> {
        let nvml = nvml_wrapper::Nvml::init().map_err(|e| format!("NVML: {e}"))?;
        nvml.device_by_index(index)
            .and_then(|d| d.memory_info())
            .map_err(|e| format!("NVML GPU {index}: {e}"))?;
        Ok(Self { nvml, index })
    }
}

impl GpuProbe for NvmlProbe {
    fn read(&self) -> Option<GpuReading> {
        let device = self.nvml.device_by_index(self.index).ok()?;
        let memory = device.memory_info().ok()?;
        Some(GpuReading {
            used_bytes: memory.used,
            total_bytes: memory.total,
            utilization_ratio: device
                .utilization_rates()
                .ok()
                .map(|u| f64::from(u.gpu) / 100.0),
            temperature_celsius: device
                .temperature(TemperatureSensor::Gpu)
                .ok()
                .map(f64::from),
            power_watts: device.power_usage().ok().map(|mw| f64::from(mw) / 1000.0),
        })
    }
}

/// A reading that never changes: what the test-only `--inject-faults
/// gpu_memory=USED/TOTAL` serves, so the guard and the cache budget are tested without
/// a GPU.
#[derive(Debug, Clone, Copy)]
pub struct FixedProbe(pub GpuReading);

impl FixedProbe {
    /// `USED/TOTAL` in bytes, e.g. `76000000000/80000000000`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?}: expected USED/TOTAL in bytes with USED <= TOTAL");
        let (used, total) = s.split_once('/').ok_or_else(bad)?;
        let (used, total) = (
            used.trim().parse::<u64>().map_err(|_| bad())?,
            total.trim().parse::<u64>().map_err(|_| bad())?,
        );
        if used > total || total == 0 {
            return Err(bad());
        }
        Ok(Self(GpuReading {
            used_bytes: used,
            total_bytes: total,
            utilization_ratio: Some(0.5),
            temperature_celsius: Some(40.0),
            power_watts: Some(100.0),
        }))
    }
}

impl GpuProbe for FixedProbe {
    fn read(&self) -> Option<GpuReading> {
        Some(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_readings_parse_and_bad_ones_say_the_form() {
        let p = FixedProbe::parse("95/100").unwrap();
        assert_eq!(p.read().unwrap().memory_ratio(), 0.95);
        for bad in ["", "5", "101/100", "a/b", "1/0"] {
            assert!(
                FixedProbe::parse(bad).unwrap_err().contains("USED/TOTAL"),
                "{bad}"
            );
        }
    }

    #[test]
    fn no_driver_is_an_error_not_a_panic() {
        // CI and this machine have no NVIDIA driver: opening must fail cleanly. Where a
        // driver exists, it must read a board with memory.
        match NvmlProbe::open(0) {
            Err(e) => assert!(e.starts_with("NVML"), "{e}"),
            Ok(p) => assert!(p.read().is_some_and(|r| r.total_bytes > 0)),
        }
    }
}
