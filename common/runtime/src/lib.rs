//! slotq-runtime: what every slotq process does around its work.
//!
//! - [`config`]: the environment, validated before any port is bound (exit 64 on a problem)
//! - [`telemetry`]: tracing set-up; [`metrics`]: the Prometheus registry of a process
//! - [`admin`]: the admin listener (`/metrics`, `/livez`, `/readyz`)
//! - [`shutdown`]: SIGTERM → drain; [`tasks`]: supervised background tasks
//! - [`process`]: start-up shared by the three binaries

pub mod admin;
pub mod config;
pub mod metrics;
pub mod process;
pub mod shutdown;
pub mod tasks;
pub mod telemetry;
