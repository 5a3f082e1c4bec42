//! End-to-end tests against a real Kubernetes control plane and the real runtime
//! binary. The suite and its control-plane scripts land with the e2e issue.
