//! The operator against a real API server, controller manager, scheduler and kwok
//! nodes (see e2e/scripts/with-cluster.sh). Each test has its own namespace and its
//! own operator process watching only that namespace, so the tests run in parallel.
//!
//! One test binary (`cargo test --test cluster`), one module per theme; `helpers`
//! holds the waits and lookups the themes share.

mod children;
mod conditions;
mod failover;
mod helpers;
mod install;
mod rollout;
mod scheduling;
mod validation;
