//! Which number format the weights run in. `--dtype auto` follows the checkpoint on a
//! GPU: config.json's `dtype` (newer transformers) or `torch_dtype`, else the format
//! the safetensors files store (LLaDA-8B's config names none; its weights are bf16, and
//! f32 would double them to ~32 GB). On the CPU it stays f32, where candle's
//! half-precision matmuls are several times slower.

use std::io::Read;
use std::path::{Path, PathBuf};

use candle_core::DType;
use serde_json::Value;

use super::ModelError;

/// `--dtype`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
#[value(rename_all = "lowercase")]
pub enum DTypeChoice {
    Auto,
    #[value(aliases = ["float32", "float"])]
    F32,
    #[value(aliases = ["float16", "half"])]
    F16,
    #[value(alias = "bfloat16")]
    Bf16,
}

crate::named_enum!(DTypeChoice, "dtype", true);

/// The chosen format and why, as the load log line says it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DTypeDecision {
    pub dtype: DType,
    pub reason: String,
}

fn name(dtype: DType) -> &'static str {
    match dtype {
        DType::BF16 => "bf16",
        DType::F16 => "f16",
        _ => "f32",
    }
}

/// The half formats a checkpoint names or stores; anything else runs in f32.
fn half_or_f32(text: &str) -> DType {
    match text.to_ascii_lowercase().as_str() {
        "bfloat16" | "bf16" => DType::BF16,
        "float16" | "f16" | "half" => DType::F16,
        _ => DType::F32,
    }
}

/// config.json's `dtype` (transformers 4.56 and later write this) or `torch_dtype`.
pub fn declared(config: &Value) -> Option<DType> {
    ["dtype", "torch_dtype"]
        .iter()
        .find_map(|k| config.get(*k).and_then(Value::as_str))
        .map(half_or_f32)
}

/// A safetensors file's header (8 bytes of length, then JSON), without its data.
pub(crate) fn read_header(path: &Path) -> Result<Value, ModelError> {
    let invalid = |message: String| ModelError::InvalidFile {
        path: path.to_path_buf(),
        message,
    };
    let io = |source: std::io::Error| ModelError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len).map_err(io)?;
    let len = u64::from_le_bytes(len);
    // A header is a few hundred bytes per tensor; a bigger one is not a safetensors file.
    if len > 100 << 20 {
        return Err(invalid(format!("safetensors header of {len} bytes")));
    }
    let mut header = vec![0u8; len as usize];
    file.read_exact(&mut header).map_err(io)?;
    serde_json::from_slice(&header).map_err(|e| invalid(format!("safetensors header: {e}")))
}

/// The floating-point format of the first tensor stored in the safetensors files,
/// read from the first file's header alone.
pub fn stored(files: &[PathBuf]) -> Result<Option<DType>, ModelError> {
    let Some(path) = files.first() else {
        return Ok(None);
    };
    let header = read_header(path)?;
    let dtype = header
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(name, _)| *name != "__metadata__")
        .filter_map(|(_, t)| t.get("dtype").and_then(Value::as_str))
        .find(|d| matches!(*d, "BF16" | "F16" | "F32" | "F64"))
        .map(half_or_f32);
    Ok(dtype)
}

impl DTypeChoice {
    /// The format to run in, from the flag, what config.json declares, what the
    /// weights store, and whether the device is the CPU.
    pub fn resolve(
        self,
        declared: Option<DType>,
        stored: Option<DType>,
        on_cpu: bool,
    ) -> DTypeDecision {
        let decide = |dtype: DType, reason: String| DTypeDecision { dtype, reason };
        match self {
            Self::F32 => decide(DType::F32, "--dtype f32".into()),
            Self::F16 => decide(DType::F16, "--dtype f16".into()),
            Self::Bf16 => decide(DType::BF16, "--dtype bf16".into()),
            Self::Auto if on_cpu => decide(
                DType::F32,
                "auto on the CPU: f32 (half-precision matmuls are slower there)".into(),
            ),
            Self::Auto => match (declared, stored) {
                (Some(d), _) => decide(d, format!("auto: config.json declares {}", name(d))),
                (None, Some(s)) => decide(
                    s,
                    format!(
                        "auto: config.json declares none, the weights are stored in {}",
                        name(s)
                    ),
                ),
                (None, None) => decide(DType::F32, "auto: no dtype declared or stored: f32".into()),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn auto_follows_the_config_then_the_weights_on_a_gpu_and_is_f32_on_the_cpu() {
        let auto = DTypeChoice::Auto;
        let gpu = |d, s| auto.resolve(d, s, false).dtype;
        assert_eq!(gpu(Some(DType::F16), Some(DType::BF16)), DType::F16);
        assert_eq!(gpu(None, Some(DType::BF16)), DType::BF16);
        assert_eq!(gpu(None, None), DType::F32);
        let cpu = auto.resolve(Some(DType::BF16), Some(DType::BF16), true);
        assert_eq!(cpu.dtype, DType::F32);
        assert!(cpu.reason.contains("CPU"), "{}", cpu.reason);
        assert_eq!(
            DTypeChoice::Bf16.resolve(None, None, true).dtype,
            DType::BF16
        );
        let why = auto.resolve(None, Some(DType::BF16), false).reason;
        assert!(
            why.contains("declares none") && why.contains("bf16"),
            "{why}"
        );
    }

    #[test]
    fn dtype_and_torch_dtype_are_both_read() {
        assert_eq!(
            declared(&json!({"torch_dtype": "bfloat16"})),
            Some(DType::BF16)
        );
        assert_eq!(declared(&json!({"dtype": "float16"})), Some(DType::F16));
        assert_eq!(declared(&json!({"dtype": "float32"})), Some(DType::F32));
        assert_eq!(declared(&json!({})), None);
        assert_eq!("float16".parse::<DTypeChoice>(), Ok(DTypeChoice::F16));
        assert!("f8".parse::<DTypeChoice>().is_err());
    }
}
