//! dfastllm's inference core: everything that turns token ids into answers, and nothing
//! that speaks HTTP or draws plots (Cargo enforces it: this crate links neither).
//!
//! The layers point one way, down:
//! - `engine` (one scheduler thread that owns the model and batches every sequence's
//!   decoding steps) drives `decoding`;
//! - `decoding` (diffusion and autoregressive samplers, APD, MoR, cache policies) calls
//!   `models`;
//! - `models` (one file per architecture, checkpoint loading) runs forward passes only
//!   and knows nothing of decoding.
//!
//! `tokenizer` and `device` sit beside them; `generation` ties tokenizer, decoding and a
//! model into one call for the CLI and eval; `demo` writes tiny random checkpoints in the
//! real upstream layouts for tests and demos; `metrics` holds the Prometheus series that
//! the engine and the server both update.
pub mod decoding;
pub mod demo;
pub mod device;
pub mod engine;
pub mod generation;
pub mod gpu;
pub mod inspect;
pub mod metrics;
pub mod models;
pub mod names;
pub mod tokenizer;
