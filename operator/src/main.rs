//! `dfastllm-operator`: reconciles `DiffusionModel` resources (dfastllm.io/v1alpha1)
//! into Deployments, ConfigMaps, Services and ServiceMonitors. The controller lands
//! with the operator issue; until then the binary only says so, so that nobody
//! mistakes it for a working operator.

use std::process::ExitCode;

fn main() -> ExitCode {
    eprintln!(
        "dfastllm-operator {}: the controller is not implemented yet",
        env!("CARGO_PKG_VERSION")
    );
    ExitCode::FAILURE
}
