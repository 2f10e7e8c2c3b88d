//! `vmback run JOBFILE`: backup jobs for many VMs.
//!
//! A job file (TOML, `file.rs`) names a repository, limits, defaults and VMs; it is
//! checked completely before anything runs (`validate.rs`). Each VM's next backup
//! is predicted full or incremental (`predict.rs`); the scheduler (`plan.rs`, pure)
//! starts backups within the limits per job, host and datastore, keeps the slots
//! busy, staggers fulls per host and retries failures after a backoff; `run.rs`
//! executes it with threads and one shared read-rate limiter; `report.rs` shows the
//! result as a table and as JSON.

pub mod file;
pub mod plan;
pub mod predict;
pub mod report;
pub mod run;
pub mod validate;

pub use report::{render_plan, render_report, JobReport, PlanReport};
pub use run::{plan_job, run_job};
pub use validate::{load_job, Job};
