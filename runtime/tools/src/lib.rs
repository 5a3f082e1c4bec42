//! dfastllm's tools: what measures and drives the runtime rather than serving it.
//! `eval` scores decoding strategies on checkable tasks, `bench` times forward passes
//! and autoregressive generation, `loadgen` load-tests a running server (`bench serve`)
//! and `plot` draws its report, `batch` runs OpenAI Batch files against a server or a
//! model served in-process. They sit above `dfastllm-core` and `dfastllm-server`.

pub mod batch;
pub mod bench;
pub mod eval;
pub mod in_process;
pub mod loadgen;
pub mod plot;
