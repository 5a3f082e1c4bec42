//! The fault injector, for tests only (the hidden `dfastllm serve --inject-faults`, named
//! test-only in docs/runtime.md): makes chosen forward passes fail, shaped like a CUDA
//! out-of-memory error or like any other model error, so the circuit breaker and the
//! out-of-memory halving are proven without a GPU.
//!
//! A plan is a comma-separated list of `KIND@PASSES`: `oom@3`, `error@5-9`, `oom@2-`.
//! Passes count every call to the model's step from 1, retries included. One more item,
//! `gpu_memory=USED/TOTAL` (bytes), makes the GPU memory guard read that fixed reading
//! instead of NVML, so the guard and the cache budget are tested without a GPU.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::decoding::{DecodeError, Sequence, StepState, Stepper};

/// The text of an out-of-memory failure as cudarc reports it, which
/// [`is_out_of_memory`] recognises.
const OOM_TEXT: &str = "DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\")";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    OutOfMemory,
    Error,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Fault {
    kind: FaultKind,
    from: u64,
    /// Inclusive; `None` for every pass from `from` on.
    to: Option<u64>,
}

/// Which passes fail, and how.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FaultPlan {
    faults: Vec<Fault>,
    gpu_memory: Option<(u64, u64)>,
}

impl std::str::FromStr for FaultPlan {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = |part: &str| {
            format!("{part:?}: expected KIND@PASSES with KIND oom or error and PASSES N, N-M or N- (passes count from 1), or gpu_memory=USED/TOTAL")
        };
        let mut faults = Vec::new();
        let mut gpu_memory = None;
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            if let Some(reading) = part.strip_prefix("gpu_memory=") {
                let probe = crate::gpu::FixedProbe::parse(reading)?;
                gpu_memory = Some((probe.0.used_bytes, probe.0.total_bytes));
                continue;
            }
            let (kind, passes) = part.split_once('@').ok_or_else(|| bad(part))?;
            let kind = match kind {
                "oom" => FaultKind::OutOfMemory,
                "error" => FaultKind::Error,
                _ => return Err(bad(part)),
            };
            let number = |t: &str| t.parse::<u64>().ok().filter(|&n| n >= 1);
            let (from, to) = match passes.split_once('-') {
                None => {
                    let n = number(passes).ok_or_else(|| bad(part))?;
                    (n, Some(n))
                }
                Some((a, "")) => (number(a).ok_or_else(|| bad(part))?, None),
                Some((a, b)) => {
                    let (a, b) = (number(a), number(b));
                    match (a, b) {
                        (Some(a), Some(b)) if a <= b => (a, Some(b)),
                        _ => return Err(bad(part)),
                    }
                }
            };
            faults.push(Fault { kind, from, to });
        }
        Ok(Self { faults, gpu_memory })
    }
}

impl FaultPlan {
    pub fn is_empty(&self) -> bool {
        self.faults.is_empty() && self.gpu_memory.is_none()
    }

    /// The fixed GPU reading the plan asks for (`gpu_memory=USED/TOTAL`).
    pub fn gpu_memory(&self) -> Option<crate::gpu::FixedProbe> {
        self.gpu_memory.and_then(|(used, total)| {
            crate::gpu::FixedProbe::parse(&format!("{used}/{total}")).ok()
        })
    }

    fn at(&self, pass: u64) -> Option<FaultKind> {
        self.faults
            .iter()
            .find(|f| pass >= f.from && f.to.is_none_or(|to| pass <= to))
            .map(|f| f.kind)
    }
}

/// Whether a model error is the device running out of memory (CUDA, cuBLAS), the one
/// failure a smaller batch can cure.
pub fn is_out_of_memory(e: &DecodeError) -> bool {
    let DecodeError::Model(e) = e else {
        return false;
    };
    let text = e.to_string();
    [
        "OUT_OF_MEMORY",
        "out of memory",
        "CUBLAS_STATUS_ALLOC_FAILED",
    ]
    .iter()
    .any(|needle| text.contains(needle))
}

/// `inner` with the passes `plan` names failing.
pub struct FaultInjector<'a, M: ?Sized> {
    inner: &'a M,
    plan: FaultPlan,
    passes: AtomicU64,
}

impl<'a, M: Stepper + ?Sized> FaultInjector<'a, M> {
    pub fn new(inner: &'a M, plan: FaultPlan) -> Self {
        Self {
            inner,
            plan,
            passes: AtomicU64::new(0),
        }
    }
}

impl<M: Stepper + ?Sized> Stepper for FaultInjector<'_, M> {
    fn step(&self, batch: &mut [&mut Sequence], state: &mut StepState) -> Result<(), DecodeError> {
        let pass = self.passes.fetch_add(1, Ordering::SeqCst) + 1;
        let text = match self.plan.at(pass) {
            None => return self.inner.step(batch, state),
            Some(FaultKind::OutOfMemory) => OOM_TEXT.to_string(),
            Some(FaultKind::Error) => format!("injected fault at forward pass {pass}"),
        };
        Err(DecodeError::Model(candle_core::Error::Msg(text)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_parse_and_name_the_bad_part() {
        let plan: FaultPlan = "oom@3, error@5-6,error@9-".parse().unwrap();
        let kinds: Vec<Option<FaultKind>> = (1..=10).map(|p| plan.at(p)).collect();
        use FaultKind::*;
        assert_eq!(
            kinds,
            [
                None,
                None,
                Some(OutOfMemory),
                None,
                Some(Error),
                Some(Error),
                None,
                None,
                Some(Error),
                Some(Error)
            ]
        );
        for bad in ["boom@1", "oom", "oom@0", "error@5-2", "oom@x"] {
            let e = bad.parse::<FaultPlan>().unwrap_err();
            assert!(e.contains(bad), "{e}");
        }
        assert!("".parse::<FaultPlan>().unwrap().is_empty());
    }

    #[test]
    fn only_memory_errors_count_as_out_of_memory() {
        let oom = DecodeError::Model(candle_core::Error::Msg(OOM_TEXT.into()));
        assert!(is_out_of_memory(&oom));
        let other = DecodeError::Model(candle_core::Error::Msg("illegal address".into()));
        assert!(!is_out_of_memory(&other));
        assert!(!is_out_of_memory(&DecodeError::Internal(
            "out of memory".into()
        )));
    }
}
