//! Device selection: `auto` picks CUDA when this binary was built with the `cuda`
//! feature and a GPU answers, otherwise the CPU, so the same command line works on a
//! laptop and on a GPU node.

use std::fmt;
use std::str::FromStr;

use candle_core::Device;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceChoice {
    Auto,
    Cpu,
    Cuda(usize),
}

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("invalid device {0:?}: expected auto, cpu, cuda or cuda:N")]
    Invalid(String),
    #[error("device cuda:{0} was requested but this binary was built without the `cuda` feature")]
    CudaNotCompiled(usize),
    #[error("cannot open cuda:{ordinal}: {source}")]
    Cuda {
        ordinal: usize,
        #[source]
        source: candle_core::Error,
    },
}

impl FromStr for DeviceChoice {
    type Err = DeviceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" | "gpu" => Ok(Self::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Self::Cuda)
                .ok_or_else(|| DeviceError::Invalid(s.to_string())),
        }
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// Opens the chosen device. `Auto` never fails: a CUDA build on a machine whose GPU
/// cannot be opened falls back to the CPU.
pub fn select(choice: DeviceChoice) -> Result<Device, DeviceError> {
    match choice {
        DeviceChoice::Cpu => Ok(Device::Cpu),
        DeviceChoice::Auto => {
            if candle_core::utils::cuda_is_available() {
                Ok(Device::new_cuda(0).unwrap_or(Device::Cpu))
            } else {
                Ok(Device::Cpu)
            }
        }
        DeviceChoice::Cuda(ordinal) => {
            if !candle_core::utils::cuda_is_available() {
                return Err(DeviceError::CudaNotCompiled(ordinal));
            }
            Device::new_cuda(ordinal).map_err(|source| DeviceError::Cuda { ordinal, source })
        }
    }
}

/// A short name for logs and JSON output: `cpu` or `cuda:N`.
pub fn describe(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".to_string(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

/// The GPU behind a device, for `/health` and the memory gauges.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct GpuInfo {
    pub name: String,
    pub memory_used_bytes: u64,
    pub memory_total_bytes: u64,
}

/// Name and memory of the GPU behind `device`; `None` on the CPU or when the driver
/// cannot answer.
pub fn gpu_info(device: &Device) -> Option<GpuInfo> {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(cuda) = device {
        let stream = cuda.cuda_stream();
        let context = stream.context();
        let name = context.name().ok()?;
        let (free, total) = context.mem_get_info().ok()?;
        return Some(GpuInfo {
            name,
            memory_used_bytes: total.saturating_sub(free) as u64,
            memory_total_bytes: total as u64,
        });
    }
    let _ = device;
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_device_names() {
        assert_eq!("auto".parse::<DeviceChoice>().unwrap(), DeviceChoice::Auto);
        assert_eq!("CPU".parse::<DeviceChoice>().unwrap(), DeviceChoice::Cpu);
        assert_eq!(
            "cuda".parse::<DeviceChoice>().unwrap(),
            DeviceChoice::Cuda(0)
        );
        assert_eq!(
            "cuda:3".parse::<DeviceChoice>().unwrap(),
            DeviceChoice::Cuda(3)
        );
        assert!("cuda:x".parse::<DeviceChoice>().is_err());
        assert!("tpu".parse::<DeviceChoice>().is_err());
    }

    #[test]
    fn the_cpu_has_no_gpu_info() {
        assert_eq!(gpu_info(&Device::Cpu), None);
    }

    #[test]
    fn cpu_and_auto_always_open() {
        assert!(select(DeviceChoice::Cpu).unwrap().is_cpu());
        // Auto opens something on every machine; on a CPU-only build it is the CPU.
        let auto = select(DeviceChoice::Auto).unwrap();
        if !candle_core::utils::cuda_is_available() {
            assert!(auto.is_cpu());
        }
    }
}
