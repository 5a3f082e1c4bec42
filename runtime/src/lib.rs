//! The dfastllm runtime as a library: everything the `dfastllm` binary does, so that
//! tests and benchmarks drive the same code paths as the CLI and (later) the server.
//!
//! Data flows `tokenizer` -> `decoding` (which owns the sampling loop) -> `models`
//! (forward passes only) and back; `generation` ties them into one call, and `demo`
//! writes tiny random checkpoints in the real upstream layouts for tests and demos.
//! `serve` puts `server` (HTTP, OpenAI API) in front of `engine` (one scheduler thread
//! that owns the model and batches every request's decoding steps).

pub mod batch;
pub mod config;
pub mod decoding;
pub mod demo;
pub mod device;
pub mod engine;
pub mod eval;
pub mod generation;
pub mod loadgen;
pub mod metrics;
pub mod models;
pub mod plot;
pub mod server;
pub mod tokenizer;
