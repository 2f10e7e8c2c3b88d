//! What a job did (or, with `--dry-run`, would do): per VM and per attempt, as a
//! terminal table and as JSON. Times are RFC 3339 UTC with sub-second precision and,
//! for programs, unix milliseconds.

use serde::Serialize;

use super::predict::Prediction;
use crate::backup::BackupReport;
use crate::forget::Decision;
use crate::inspect::human;
use crate::repo::gc::GcReport;

/// The limits a job ran with.
#[derive(Debug, Clone, Serialize)]
pub struct LimitsReport {
    pub max_concurrent: usize,
    pub max_per_host: Option<usize>,
    pub max_per_datastore: Option<usize>,
    pub limit_read: Option<u64>,
    pub threads: usize,
}

/// A moment, twice: for people and for programs.
#[derive(Debug, Clone, Serialize)]
pub struct Moment {
    /// RFC 3339, UTC, nanoseconds.
    pub time: String,
    /// Milliseconds since the unix epoch.
    pub unix_ms: i64,
}

impl Moment {
    pub fn of(t: jiff::Timestamp) -> Self {
        Moment {
            time: t.to_string(),
            unix_ms: t.as_millisecond(),
        }
    }
}

/// One attempt at backing up a VM.
#[derive(Debug, Clone, Serialize)]
pub struct AttemptReport {
    /// 1-based.
    pub attempt: u32,
    /// 0-based slot (below max_concurrent).
    pub slot: usize,
    pub host: Option<String>,
    pub datastores: Vec<String>,
    /// When the VM became ready for this attempt (job start, or end of the backoff).
    pub ready: Moment,
    pub start: Moment,
    pub end: Moment,
    pub duration_secs: f64,
    /// `ok` or `failed`.
    pub result: String,
    pub error: Option<String>,
    /// A full started beside another full on the same host (nothing else could start).
    pub beside_full: bool,
}

/// One VM of the job.
#[derive(Debug, Clone, Serialize)]
pub struct VmReport {
    pub vm: String,
    pub uuid: Option<String>,
    pub host: Option<String>,
    pub datastores: Vec<String>,
    /// What the planner predicted (full or incremental, and why).
    pub expected: Prediction,
    /// `ok` or `failed`.
    pub result: String,
    pub attempts: Vec<AttemptReport>,
    /// The new restore point's id.
    pub snapshot: Option<String>,
    /// Change tracking per disk, e.g. `differencing` or `full, changed-extents`.
    pub method: Option<String>,
    pub bytes_read: u64,
    pub bytes_new: u64,
    /// Of the last attempt.
    pub duration_secs: f64,
    /// Of the last attempt, when it failed.
    pub error: Option<String>,
    pub backup: Option<BackupReport>,
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub struct JobReport {
    pub job: String,
    pub repository: String,
    pub limits: LimitsReport,
    pub start: Moment,
    pub end: Moment,
    pub duration_secs: f64,
    pub succeeded: usize,
    pub failed: usize,
    pub vms: Vec<VmReport>,
    /// Restore points removed by the retention policies.
    pub forgotten: Vec<Decision>,
    pub gc: Option<GcReport>,
    /// Problems after the backups (retention, gc): reported, and they fail the run.
    pub errors: Vec<String>,
}

impl JobReport {
    pub fn ok(&self) -> bool {
        self.failed == 0 && self.errors.is_empty()
    }
}

/// One line of a `--dry-run` plan.
#[derive(Debug, Clone, Serialize)]
pub struct PlanEntry {
    /// 1-based start order.
    pub order: usize,
    pub vm: String,
    pub host: Option<String>,
    pub datastores: Vec<String>,
    /// 0-based slot.
    pub slot: usize,
    /// Estimated start and end, seconds after the job's start.
    pub start_secs: f64,
    pub end_secs: f64,
    pub expected: Prediction,
    pub beside_full: bool,
}

/// The plan `--dry-run` prints.
#[derive(Debug, Clone, Serialize)]
pub struct PlanReport {
    pub job: String,
    pub repository: String,
    pub limits: LimitsReport,
    /// What the estimates assume, in words.
    pub estimate: String,
    pub entries: Vec<PlanEntry>,
}

fn limits_text(l: &LimitsReport) -> String {
    let or_none = |v: Option<usize>| v.map_or("-".to_string(), |n| n.to_string());
    format!(
        "max_concurrent {}, max_per_host {}, max_per_datastore {}, limit_read {}, {} threads per backup",
        l.max_concurrent,
        or_none(l.max_per_host),
        or_none(l.max_per_datastore),
        l.limit_read
            .map_or("-".to_string(), |r| format!("{}/s", human(r))),
        l.threads
    )
}

/// Lays out rows as columns (the last column is not padded).
fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (c, cell) in r.iter().enumerate() {
            if c + 1 == r.len() {
                line += cell;
            } else {
                line += &format!("{cell:<w$}  ", w = widths[c]);
            }
        }
        out += line.trim_end();
        out += "\n";
    }
    out
}

fn host_ds(host: &Option<String>, ds: &[String]) -> (String, String) {
    (
        host.clone().unwrap_or_else(|| "-".into()),
        if ds.is_empty() {
            "-".into()
        } else {
            ds.join(",")
        },
    )
}

/// The `--dry-run` plan as text.
pub fn render_plan(p: &PlanReport) -> String {
    let mut rows = vec![vec![
        "#".to_string(),
        "start".into(),
        "slot".into(),
        "vm".into(),
        "host".into(),
        "datastores".into(),
        "backup".into(),
        "why".into(),
    ]];
    for e in &p.entries {
        let (h, d) = host_ds(&e.host, &e.datastores);
        rows.push(vec![
            e.order.to_string(),
            format!("+{:.0}s", e.start_secs),
            (e.slot + 1).to_string(),
            e.vm.clone(),
            h,
            d,
            if e.expected.full {
                "full".into()
            } else {
                "incremental".into()
            },
            format!(
                "{}{}",
                e.expected.reason,
                if e.beside_full {
                    " (beside another full on this host: nothing else can start)"
                } else {
                    ""
                }
            ),
        ]);
    }
    let fulls = p.entries.iter().filter(|e| e.expected.full).count();
    let end = p.entries.iter().map(|e| e.end_secs).fold(0.0, f64::max);
    format!(
        "plan of {} for {} ({}): {} VMs, {} full, {} incremental\n{}estimated {:.0}s ({}); nothing was run\n",
        p.job,
        p.repository,
        limits_text(&p.limits),
        p.entries.len(),
        fulls,
        p.entries.len() - fulls,
        table(&rows),
        end,
        p.estimate
    )
}

/// The report of a run as text: a table per VM, then totals and problems.
pub fn render_report(r: &JobReport) -> String {
    let mut rows = vec![vec![
        "vm".to_string(),
        "host".into(),
        "result".into(),
        "attempts".into(),
        "method".into(),
        "read".into(),
        "new".into(),
        "duration".into(),
        "error".into(),
    ]];
    for v in &r.vms {
        let (h, _) = host_ds(&v.host, &v.datastores);
        rows.push(vec![
            v.vm.clone(),
            h,
            v.result.clone(),
            v.attempts.len().to_string(),
            v.method.clone().unwrap_or_else(|| "-".into()),
            human(v.bytes_read),
            human(v.bytes_new),
            format!("{:.1}s", v.duration_secs),
            v.error.clone().unwrap_or_default(),
        ]);
    }
    let mut out = table(&rows);
    let read: u64 = r.vms.iter().map(|v| v.bytes_read).sum();
    let new: u64 = r.vms.iter().map(|v| v.bytes_new).sum();
    out += &format!(
        "{} of {} VMs backed up, {} failed; read {}, new {}; {:.1}s ({})\n",
        r.succeeded,
        r.vms.len(),
        r.failed,
        human(read),
        human(new),
        r.duration_secs,
        limits_text(&r.limits)
    );
    if !r.forgotten.is_empty() {
        out += &format!(
            "retention removed {} restore point(s): {}\n",
            r.forgotten.len(),
            r.forgotten
                .iter()
                .map(|d| format!("{}/{}", d.vm, d.name))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if let Some(g) = &r.gc {
        out += &format!(
            "gc removed {} chunks and {} indexes ({})\n",
            g.chunks_removed,
            g.indexes_removed,
            human(g.bytes_reclaimed)
        );
    }
    for e in &r.errors {
        out += &format!("error: {e}\n");
    }
    out
}
