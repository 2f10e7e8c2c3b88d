//! Runs a job: the scheduler (`plan.rs`) decides, a thread per running backup does
//! the work (its chunks on the global rayon pool, or with `threads` on its slot's
//! own pool), and one read-rate limiter is shared by all of them. One VM failing
//! never stops the others. After the backups: retention per VM (only for VMs
//! backed up in this run), then `gc` when asked and nothing failed.
//!
//! `--dry-run` (`plan_job`) reads the restore points and the sources' headers and
//! simulates the schedule with estimated durations: no lock, nothing written.

use std::io::IsTerminal;
use std::panic::AssertUnwindSafe;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::plan::{simulate, Finished, Scheduler, SlotLimits, Start, Task};
use super::predict::{predict, Prediction};
use super::report::{
    AttemptReport, JobReport, LimitsReport, Moment, PlanEntry, PlanReport, VmReport,
};
use super::validate::{Job, VmJob};
use crate::backup::ratelimit::RateLimiter;
use crate::backup::{BackupOptions, BackupReport};
use crate::error::{Error, Result};
use crate::inspect::human;
use crate::repo::Repository;

/// How often a waiting job looks for a stop signal.
const SIGNAL_POLL: Duration = Duration::from_millis(200);

/// Read rate assumed for the dry-run's time estimates when the job sets none.
const ESTIMATE_RATE: u64 = 200 << 20;

/// Worker threads per backup: `threads`, or the global pool's (`--threads`, or
/// one per core), which the running backups then share.
fn threads(job: &Job) -> usize {
    job.limits
        .threads
        .unwrap_or_else(rayon::current_num_threads)
}

fn limits_report(job: &Job) -> LimitsReport {
    LimitsReport {
        max_concurrent: job.limits.max_concurrent,
        max_per_host: job.limits.max_per_host,
        max_per_datastore: job.limits.max_per_datastore,
        limit_read: job.limits.limit_read,
        threads: threads(job),
    }
}

fn slot_limits(job: &Job) -> SlotLimits {
    SlotLimits {
        max_concurrent: job.limits.max_concurrent,
        max_per_host: job.limits.max_per_host,
        max_per_datastore: job.limits.max_per_datastore,
    }
}

fn tasks(job: &Job, predictions: &[Prediction]) -> Vec<Task> {
    job.vms
        .iter()
        .zip(predictions)
        .map(|(v, p)| Task {
            host: v.host.clone(),
            datastores: v.datastores.clone(),
            full: p.full,
            retries: v.retries,
            backoff: v.retry_backoff,
        })
        .collect()
}

/// Opens the job's repository (reading only: its config).
fn open_repo(job: &Job) -> Result<Arc<Repository>> {
    crate::repo::open_shared(&job.repository)
}

/// The `--dry-run` plan: predictions and a simulated schedule. Writes nothing.
pub fn plan_job(job: &Job) -> Result<PlanReport> {
    let repo = open_repo(job)?;
    let history = repo.snapshots()?;
    let predictions: Vec<Prediction> = job.vms.iter().map(|v| predict(v, &history)).collect();
    // Running backups share the read rate; the estimate assumes each gets its share.
    let rate = job.limits.limit_read.unwrap_or(ESTIMATE_RATE);
    let share = (rate / job.limits.max_concurrent.max(1) as u64).max(1);
    let timeline = simulate(
        Scheduler::new(tasks(job, &predictions), slot_limits(job)),
        |t, _| {
            let secs = predictions[t].expected_bytes as f64 / share as f64;
            (Duration::from_secs_f64(secs.max(1.0)), true)
        },
    );
    let entries = timeline
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let v = &job.vms[a.start.task];
            PlanEntry {
                order: i + 1,
                vm: v.vm.name.clone(),
                host: v.host.clone(),
                datastores: v.datastores.clone(),
                slot: a.start.slot,
                start_secs: a.begin.as_secs_f64(),
                end_secs: a.end.as_secs_f64(),
                expected: predictions[a.start.task].clone(),
                beside_full: a.start.beside_full,
            }
        })
        .collect();
    Ok(PlanReport {
        job: job.file.display().to_string(),
        repository: repo.location(),
        limits: limits_report(job),
        estimate: format!(
            "assuming {}/s per running backup, a full reads the virtual size, an incremental a tenth",
            human(share)
        ),
        entries,
    })
}

/// What a worker thread sends back.
struct Done {
    start: Start,
    ready: jiff::Timestamp,
    begin: jiff::Timestamp,
    end: jiff::Timestamp,
    result: Result<BackupReport>,
}

/// Runs the job. `progress`: one line per start and finish on stderr (only
/// shown when stderr is a terminal).
pub fn run_job(job: &Job, progress: bool) -> Result<JobReport> {
    let repo = open_repo(job)?;
    let history = repo.snapshots()?;
    let predictions: Vec<Prediction> = job.vms.iter().map(|v| predict(v, &history)).collect();
    let limiter = job.limits.limit_read.map(|r| Arc::new(RateLimiter::new(r)));
    // With `threads`, one pool per slot, kept for the whole job (the backups that
    // follow each other in a slot reuse its workers); without, the global pool
    // (one worker per core) serves all running backups, as for `vmback backup`.
    let pools: Vec<Result<Arc<rayon::ThreadPool>>> = match job.limits.threads {
        None => Vec::new(),
        Some(n) => (0..job.limits.max_concurrent)
            .map(|slot| {
                rayon::ThreadPoolBuilder::new()
                    .num_threads(n.max(1))
                    .thread_name(move |i| format!("slot {slot} worker {i}"))
                    .build()
                    .map(Arc::new)
                    .map_err(|e| Error::Usage(format!("cannot start {n} worker threads: {e}")))
            })
            .collect(),
    };
    let show = progress && std::io::stderr().is_terminal();
    let job_file = std::fs::canonicalize(&job.file).unwrap_or_else(|_| job.file.clone());

    let mut sched = Scheduler::new(tasks(job, &predictions), slot_limits(job));
    let started = jiff::Timestamp::now();
    let clock = Instant::now();
    let at = |d: Duration| {
        started
            .checked_add(jiff::SignedDuration::try_from(d).unwrap_or_default())
            .unwrap_or(started)
    };
    let mut attempts: Vec<Vec<AttemptReport>> = vec![Vec::new(); job.vms.len()];
    let mut results: Vec<Option<Result<BackupReport>>> = (0..job.vms.len()).map(|_| None).collect();
    let (tx, rx) = mpsc::channel::<Done>();

    std::thread::scope(|scope| {
        let mut running = 0usize;
        loop {
            let now = clock.elapsed();
            // After SIGINT/SIGTERM/SIGHUP (see `interrupt`) nothing new starts; the
            // running backups stop at their next chunk and run their post hooks.
            let stopping = crate::interrupt::requested().is_some();
            let starts = if stopping {
                Vec::new()
            } else {
                sched.start_all(now)
            };
            for s in starts {
                running += 1;
                let vm = &job.vms[s.task];
                let pred = &predictions[s.task];
                if show {
                    eprintln!(
                        "{} start  {} (attempt {}, slot {}): {}: {}",
                        clock_text(),
                        vm.vm.name,
                        s.attempt,
                        s.slot + 1,
                        if pred.full { "full" } else { "incremental" },
                        pred.reason
                    );
                }
                let mut opts = backup_options(vm, pred, limiter.clone(), &job_file, s.attempt);
                let (tx, repo) = (tx.clone(), repo.clone());
                let ready = at(s.ready_at);
                let pool = pools.get(s.slot);
                // Taken here, not in the thread: the report's start times then
                // follow the scheduler's order (a thread that happens to run
                // first would otherwise seem to have started first).
                let begin = jiff::Timestamp::now();
                std::thread::Builder::new()
                    .name(format!("backup {}", vm.vm.name))
                    .spawn_scoped(scope, move || {
                        let result = match pool {
                            None => run_one(&repo, &opts),
                            Some(Ok(p)) => {
                                opts.pool = Some(p.clone());
                                run_one(&repo, &opts)
                            }
                            Some(Err(e)) => Err(Error::Capture {
                                disk: opts.vm.name.clone(),
                                reason: e.to_string(),
                            }),
                        };
                        let end = jiff::Timestamp::now();
                        let _ = tx.send(Done {
                            start: s,
                            ready,
                            begin,
                            end,
                            result,
                        });
                    })
                    .map_err(|e| Error::io("thread", "start a backup thread", e))?;
            }
            if running == 0 {
                match sched.next_ready(now) {
                    // In slices, so that a signal is seen during a retry's backoff.
                    Some(t) if !stopping => {
                        std::thread::sleep(t.saturating_sub(now).min(SIGNAL_POLL))
                    }
                    _ => break,
                }
                continue;
            }
            let wait = sched
                .next_ready(now)
                .map_or(SIGNAL_POLL, |t| t.saturating_sub(now).min(SIGNAL_POLL));
            let done = match rx.recv_timeout(wait) {
                Ok(d) => d,
                Err(mpsc::RecvTimeoutError::Timeout) => continue,
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            };
            running -= 1;
            let task = done.start.task;
            let vm = &job.vms[task];
            let ok = done.result.is_ok();
            let outcome = sched.finish(task, clock.elapsed(), ok);
            let secs = done.end.duration_since(done.begin).as_secs_f64().max(0.0);
            let error = done.result.as_ref().err().map(|e| crate::error::chain(e));
            if show {
                match (&done.result, outcome) {
                    (Ok(r), _) => eprintln!(
                        "{} done   {} in {secs:.1}s: {}, read {}, new {}",
                        clock_text(),
                        vm.vm.name,
                        methods(r),
                        human(r.totals.bytes_read),
                        human(r.totals.bytes_new)
                    ),
                    (Err(_), Finished::Retry { ready_at }) => eprintln!(
                        "{} failed {} (attempt {}): {}; retry in {:.0}s",
                        clock_text(),
                        vm.vm.name,
                        done.start.attempt,
                        error.as_deref().unwrap_or(""),
                        ready_at.saturating_sub(clock.elapsed()).as_secs_f64()
                    ),
                    (Err(_), _) => eprintln!(
                        "{} failed {} (attempt {}, no retries left): {}",
                        clock_text(),
                        vm.vm.name,
                        done.start.attempt,
                        error.as_deref().unwrap_or("")
                    ),
                }
            }
            attempts[task].push(AttemptReport {
                attempt: done.start.attempt,
                slot: done.start.slot,
                host: vm.host.clone(),
                datastores: vm.datastores.clone(),
                ready: Moment::of(done.ready),
                start: Moment::of(done.begin),
                end: Moment::of(done.end),
                duration_secs: secs,
                result: if ok { "ok" } else { "failed" }.into(),
                error,
                beside_full: done.start.beside_full,
            });
            results[task] = Some(done.result);
        }
        Ok::<(), Error>(())
    })?;

    let interrupted = crate::interrupt::requested();
    let mut vms = Vec::new();
    for (i, v) in job.vms.iter().enumerate() {
        let result = results[i].take();
        let backup = result.as_ref().and_then(|r| r.as_ref().ok()).cloned();
        let tries = std::mem::take(&mut attempts[i]);
        let not_started = interrupted.filter(|_| tries.is_empty()).map(|s| {
            format!(
                "not started: interrupted by {}",
                crate::interrupt::signal_name(s)
            )
        });
        vms.push(VmReport {
            vm: v.vm.name.clone(),
            uuid: v.vm.uuid.clone(),
            host: v.host.clone(),
            datastores: v.datastores.clone(),
            expected: predictions[i].clone(),
            result: if backup.is_some() { "ok" } else { "failed" }.into(),
            snapshot: backup.as_ref().map(|b| b.snapshot.clone()),
            method: backup.as_ref().map(methods),
            bytes_read: backup.as_ref().map_or(0, |b| b.totals.bytes_read),
            bytes_new: backup.as_ref().map_or(0, |b| b.totals.bytes_new),
            duration_secs: tries.last().map_or(0.0, |a| a.duration_secs),
            error: tries.last().and_then(|a| a.error.clone()).or(not_started),
            attempts: tries,
            backup,
        });
    }
    let succeeded = vms.iter().filter(|v| v.result == "ok").count();
    let failed = vms.len() - succeeded;
    let mut errors = Vec::new();
    if let Some(s) = interrupted {
        errors.push(format!(
            "interrupted by {}: retention and gc skipped",
            crate::interrupt::signal_name(s)
        ));
    }
    let forgotten = if interrupted.is_some() {
        Vec::new()
    } else {
        match retention(&repo, job, &vms) {
            Ok(f) => f,
            Err(e) => {
                errors.push(format!("retention: {}", crate::error::chain(&e)));
                Vec::new()
            }
        }
    };
    let gc = if job.gc_after && failed == 0 && errors.is_empty() {
        match crate::repo::gc::gc(&repo, job.gc_grace, false) {
            Ok(g) => Some(g),
            Err(e) => {
                errors.push(format!("gc: {}", crate::error::chain(&e)));
                None
            }
        }
    } else {
        None
    };
    let end = jiff::Timestamp::now();
    Ok(JobReport {
        job: job.file.display().to_string(),
        repository: repo.location(),
        limits: limits_report(job),
        start: Moment::of(started),
        end: Moment::of(end),
        duration_secs: clock.elapsed().as_secs_f64(),
        succeeded,
        failed,
        vms,
        forgotten,
        gc,
        errors,
    })
}

/// The options of one attempt.
fn backup_options(
    vm: &VmJob,
    pred: &Prediction,
    limiter: Option<Arc<RateLimiter>>,
    job_file: &std::path::Path,
    attempt: u32,
) -> BackupOptions {
    BackupOptions {
        vm: vm.vm.clone(),
        host: vm.host.clone(),
        datastores: vm.datastores.clone(),
        tags: vm.tags.clone(),
        sources: vm.sources.clone(),
        pre_hook: vm.pre_hook.clone(),
        post_hook: vm.post_hook.clone(),
        hook_timeout: vm.hook_timeout,
        hook_dir: job_file.parent().map(|d| d.to_path_buf()),
        limiter,
        full_reason: pred.force.clone(),
        extra_env: vec![
            ("VMBACK_JOB".into(), job_file.display().to_string()),
            ("VMBACK_ATTEMPT".into(), attempt.to_string()),
        ],
        pool: None,
        progress: false,
    }
}

/// One backup (its chunks on its slot's workers); a panic is an error of this VM.
///
/// The backup's own control flow stays on this thread, outside the pool, as with
/// `vmback backup`. Measured on 12 × 128 MiB at max_concurrent 1: the global pool
/// costs about 4,000 page faults for the whole job, a pool of our own (`threads`)
/// about 575,000 (every chunk buffer faulted in anew; not understood yet), hence
/// the global pool unless `threads` is set.
fn run_one(repo: &Arc<Repository>, opts: &BackupOptions) -> Result<BackupReport> {
    std::panic::catch_unwind(AssertUnwindSafe(|| crate::backup::backup(repo, opts))).unwrap_or_else(
        |p| {
            let what = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            Err(Error::Capture {
                disk: opts.vm.name.clone(),
                reason: format!("the backup panicked (a bug): {what}"),
            })
        },
    )
}

/// The change-tracking methods of a backup's disks, each once, in disk order.
fn methods(r: &BackupReport) -> String {
    let mut m: Vec<&str> = Vec::new();
    for d in &r.disks {
        if !m.contains(&d.method.as_str()) {
            m.push(&d.method);
        }
    }
    m.join(", ")
}

/// Applies each backed-up VM's retention policy (one exclusive lock for all).
fn retention(
    repo: &Arc<Repository>,
    job: &Job,
    vms: &[VmReport],
) -> Result<Vec<crate::forget::Decision>> {
    let with_policy: Vec<&VmJob> = job
        .vms
        .iter()
        .zip(vms)
        .filter(|(v, r)| !v.keep.is_empty() && r.result == "ok")
        .map(|(v, _)| v)
        .collect();
    if with_policy.is_empty() {
        return Ok(Vec::new());
    }
    let all = repo.snapshots()?;
    let mut remove = Vec::new();
    for v in with_policy {
        let mine: Vec<_> = all
            .iter()
            .filter(|s| crate::backup::same_vm(&s.manifest.vm, &v.vm))
            .cloned()
            .collect();
        remove.extend(
            crate::forget::plan(&mine, &v.keep, false)?
                .into_iter()
                .filter(|d| !d.keep),
        );
    }
    if !remove.is_empty() {
        crate::forget::apply(repo, &remove)?;
    }
    Ok(remove)
}

fn clock_text() -> String {
    jiff::Zoned::now().strftime("%H:%M:%S").to_string()
}
