//! The scenarios. Each builds its own data set, drives the stack, and returns its figures;
//! [`crate::run`] turns them into checks and targets.

pub mod availability;
pub mod baseline;
pub mod latency;
pub mod mixed;
pub mod storm;
pub mod throughput;

use sqlx::PgPool;

use crate::{client::Api, options::Settings};

/// What every scenario gets.
pub struct Ctx {
    /// The run's settings.
    pub settings: Settings,
    /// The stack's API, as a `service`.
    pub api: Api,
    /// The stack's database (data set, baseline, checks).
    pub pool: PgPool,
    /// A short tag unique to this run, in specialties and e-mail addresses.
    pub tag: String,
}
