//! The scheduler of a job: which VM's backup starts when, in which slot.
//!
//! A pure state machine over a clock the caller supplies (no threads, no I/O), so
//! the real run (`run.rs`), the `--dry-run` plan and the unit tests drive the same
//! code: the tests simulate whole jobs with made-up durations and failures and check
//! the rules below on the timeline.
//!
//! Rules, all enforced at every instant:
//! - never more than `max_concurrent` backups, `max_per_host` on one host, or
//!   `max_per_datastore` on one datastore (a VM whose disks span several
//!   datastores counts against each of them);
//! - work-conserving: whenever a VM is ready and fits in every limit it is started,
//!   so no slot stays idle while runnable work waits;
//! - staggered fulls: among the VMs that fit, a full (predicted by the caller) on a
//!   host where a full is already running comes last; it still starts when nothing
//!   else can;
//! - retries: a failed attempt gives its slot back at once and the VM becomes ready
//!   again after its backoff.
//!
//! Among the VMs that fit, the order is: not a second full on its host, then fulls
//! before incrementals (the longest work first shortens the whole job), then the
//! order of the job file.

use std::collections::HashMap;
use std::time::Duration;

/// What the scheduler needs to know of one VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Task {
    pub host: Option<String>,
    pub datastores: Vec<String>,
    /// The next backup is predicted to read everything.
    pub full: bool,
    /// Attempts after the first failed one.
    pub retries: u32,
    pub backoff: Duration,
}

/// The concurrency limits (`None`: only `max_concurrent` applies).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotLimits {
    pub max_concurrent: usize,
    pub max_per_host: Option<usize>,
    pub max_per_datastore: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Ready from `ready_at`; `attempt` is the next attempt's number (1-based).
    Waiting {
        ready_at: Duration,
        attempt: u32,
    },
    Running {
        slot: usize,
        attempt: u32,
    },
    Done {
        ok: bool,
    },
}

/// A decision to start an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Start {
    pub task: usize,
    /// 1-based.
    pub attempt: u32,
    /// 0-based slot (below `max_concurrent`), for displays.
    pub slot: usize,
    /// When this attempt became ready (the job's start, or a retry's backoff end).
    pub ready_at: Duration,
    /// A full started beside another full on its host because nothing else could start.
    pub beside_full: bool,
}

/// What became of a finished attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finished {
    Succeeded,
    /// Ready again at this time.
    Retry {
        ready_at: Duration,
    },
    /// Failed with no retries left.
    Failed,
}

/// The scheduler state.
#[derive(Debug, Clone)]
pub struct Scheduler {
    limits: SlotLimits,
    tasks: Vec<Task>,
    state: Vec<State>,
    slots: Vec<bool>,
    per_host: HashMap<String, usize>,
    per_datastore: HashMap<String, usize>,
    fulls_per_host: HashMap<String, usize>,
}

impl Scheduler {
    /// All tasks ready at time zero. `max_concurrent` is taken as at least 1.
    pub fn new(tasks: Vec<Task>, limits: SlotLimits) -> Self {
        let n = tasks.len();
        let limits = SlotLimits {
            max_concurrent: limits.max_concurrent.max(1),
            max_per_host: limits.max_per_host.map(|n| n.max(1)),
            max_per_datastore: limits.max_per_datastore.map(|n| n.max(1)),
        };
        Scheduler {
            slots: vec![false; limits.max_concurrent],
            limits,
            tasks,
            state: vec![
                State::Waiting {
                    ready_at: Duration::ZERO,
                    attempt: 1
                };
                n
            ],
            per_host: HashMap::new(),
            per_datastore: HashMap::new(),
            fulls_per_host: HashMap::new(),
        }
    }

    pub fn tasks(&self) -> &[Task] {
        &self.tasks
    }

    pub fn limits(&self) -> SlotLimits {
        self.limits
    }

    /// Backups running now.
    pub fn running(&self) -> usize {
        self.slots.iter().filter(|b| **b).count()
    }

    /// Whether every task has finished for good.
    pub fn is_done(&self) -> bool {
        self.state.iter().all(|s| matches!(s, State::Done { .. }))
    }

    /// Whether `task` would fit in every limit now (whatever its state).
    pub fn fits(&self, task: usize) -> bool {
        let Some(t) = self.tasks.get(task) else {
            return false;
        };
        if self.running() >= self.limits.max_concurrent {
            return false;
        }
        if let (Some(h), Some(max)) = (&t.host, self.limits.max_per_host) {
            if self.per_host.get(h).copied().unwrap_or(0) >= max {
                return false;
            }
        }
        if let Some(max) = self.limits.max_per_datastore {
            if distinct(&t.datastores)
                .any(|d| self.per_datastore.get(d).copied().unwrap_or(0) >= max)
            {
                return false;
            }
        }
        true
    }

    /// A full on a host where a full already runs.
    fn second_full(&self, t: &Task) -> bool {
        t.full
            && t.host
                .as_ref()
                .is_some_and(|h| self.fulls_per_host.get(h).copied().unwrap_or(0) > 0)
    }

    /// Starts the best ready task that fits, if any.
    pub fn start_next(&mut self, now: Duration) -> Option<Start> {
        let best = (0..self.tasks.len())
            .filter(|&i| {
                matches!(self.state[i], State::Waiting { ready_at, .. } if ready_at <= now)
                    && self.fits(i)
            })
            .min_by_key(|&i| {
                let t = &self.tasks[i];
                (self.second_full(t), !t.full, i)
            })?;
        let State::Waiting { ready_at, attempt } = self.state[best] else {
            return None; // OK: filtered to Waiting above
        };
        let slot = self.slots.iter().position(|b| !*b)?; // OK: fits() checked a free slot
        self.slots[slot] = true;
        let t = self.tasks[best].clone();
        let beside_full = self.second_full(&t);
        if let Some(h) = &t.host {
            *self.per_host.entry(h.clone()).or_default() += 1;
            if t.full {
                *self.fulls_per_host.entry(h.clone()).or_default() += 1;
            }
        }
        for d in distinct(&t.datastores) {
            *self.per_datastore.entry(d.clone()).or_default() += 1;
        }
        self.state[best] = State::Running { slot, attempt };
        Some(Start {
            task: best,
            attempt,
            slot,
            ready_at,
            beside_full,
        })
    }

    /// Starts everything that can start now.
    pub fn start_all(&mut self, now: Duration) -> Vec<Start> {
        std::iter::from_fn(|| self.start_next(now)).collect()
    }

    /// Records the end of `task`'s running attempt at `now`.
    pub fn finish(&mut self, task: usize, now: Duration, ok: bool) -> Finished {
        let Some(State::Running { slot, attempt }) = self.state.get(task).copied() else {
            return Finished::Failed;
        };
        self.slots[slot] = false;
        let t = &self.tasks[task];
        if let Some(h) = &t.host {
            dec(&mut self.per_host, h);
            if t.full {
                dec(&mut self.fulls_per_host, h);
            }
        }
        for d in distinct(&t.datastores) {
            dec(&mut self.per_datastore, d);
        }
        if ok {
            self.state[task] = State::Done { ok: true };
            Finished::Succeeded
        } else if attempt <= t.retries {
            let ready_at = now + t.backoff;
            self.state[task] = State::Waiting {
                ready_at,
                attempt: attempt + 1,
            };
            Finished::Retry { ready_at }
        } else {
            self.state[task] = State::Done { ok: false };
            Finished::Failed
        }
    }

    /// The earliest time after `now` at which a waiting task becomes ready.
    pub fn next_ready(&self, now: Duration) -> Option<Duration> {
        self.state
            .iter()
            .filter_map(|s| match s {
                State::Waiting { ready_at, .. } if *ready_at > now => Some(*ready_at),
                _ => None,
            })
            .min()
    }
}

fn dec(map: &mut HashMap<String, usize>, key: &str) {
    if let Some(n) = map.get_mut(key) {
        *n = n.saturating_sub(1);
    }
}

/// Each datastore once (a VM with two disks on one datastore counts once there).
fn distinct(list: &[String]) -> impl Iterator<Item = &String> {
    list.iter()
        .enumerate()
        .filter(move |(i, d)| !list[..*i].contains(d))
        .map(|(_, d)| d)
}

/// One attempt of a simulated run.
#[derive(Debug, Clone, PartialEq)]
pub struct SimAttempt {
    pub start: Start,
    pub begin: Duration,
    pub end: Duration,
    pub ok: bool,
}

/// Runs the scheduler over a simulated clock: `outcome(task, attempt)` gives each
/// attempt's duration and success. Returns the attempts in start order.
pub fn simulate(
    mut sched: Scheduler,
    mut outcome: impl FnMut(usize, u32) -> (Duration, bool),
) -> Vec<SimAttempt> {
    let mut now = Duration::ZERO;
    let mut done: Vec<SimAttempt> = Vec::new();
    let mut running: Vec<SimAttempt> = Vec::new();
    loop {
        for s in sched.start_all(now) {
            let (d, ok) = outcome(s.task, s.attempt);
            running.push(SimAttempt {
                start: s,
                begin: now,
                end: now + d,
                ok,
            });
        }
        let next_end = running
            .iter()
            .enumerate()
            .min_by_key(|(_, a)| (a.end, a.start.task))
            .map(|(i, a)| (i, a.end));
        let next_ready = sched.next_ready(now);
        match (next_end, next_ready) {
            (Some((_, end)), Some(ready)) if ready < end => now = ready,
            (Some((i, end)), _) => {
                now = end;
                let a = running.swap_remove(i);
                sched.finish(a.start.task, now, a.ok);
                done.push(a);
            }
            (None, Some(ready)) => now = ready,
            (None, None) => break,
        }
    }
    done.sort_by_key(|a| (a.begin, a.start.slot));
    done
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn task(host: &str, ds: &[&str], full: bool) -> Task {
        Task {
            host: Some(host.to_string()),
            datastores: ds.iter().map(|s| s.to_string()).collect(),
            full,
            retries: 0,
            backoff: ms(0),
        }
    }

    /// Deterministic pseudo-random numbers (xorshift).
    struct Rng(u64);
    impl Rng {
        fn next(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }

    /// Checks the rules on a timeline: no limit exceeded at any instant, and no
    /// attempt waited (after becoming ready) while it would have fitted.
    fn check_timeline(tasks: &[Task], limits: SlotLimits, timeline: &[SimAttempt]) {
        let mut times: Vec<Duration> = timeline.iter().flat_map(|a| [a.begin, a.end]).collect();
        times.sort();
        times.dedup();
        for w in times.windows(2) {
            let mid = w[0] + (w[1] - w[0]) / 2;
            let live: Vec<&SimAttempt> = timeline
                .iter()
                .filter(|a| a.begin <= mid && mid < a.end)
                .collect();
            let count =
                |f: &dyn Fn(&Task) -> bool| live.iter().filter(|a| f(&tasks[a.start.task])).count();
            assert!(live.len() <= limits.max_concurrent, "at {mid:?}: {live:?}");
            let fits = |t: &Task| {
                live.len() < limits.max_concurrent
                    && limits
                        .max_per_host
                        .is_none_or(|m| count(&|o| o.host == t.host) < m)
                    && limits.max_per_datastore.is_none_or(|m| {
                        t.datastores
                            .iter()
                            .all(|d| count(&|o| o.datastores.contains(d)) < m)
                    })
            };
            for t in tasks {
                if let Some(m) = limits.max_per_host {
                    assert!(count(&|o| o.host == t.host) <= m, "host limit at {mid:?}");
                }
                if let Some(m) = limits.max_per_datastore {
                    for d in &t.datastores {
                        assert!(
                            count(&|o| o.datastores.contains(d)) <= m,
                            "datastore limit at {mid:?}"
                        );
                    }
                }
            }
            // Work-conserving: whoever was ready and waiting did not fit.
            for a in timeline {
                if a.start.ready_at <= mid && mid < a.begin {
                    assert!(
                        !fits(&tasks[a.start.task]),
                        "task {} waited at {mid:?} with a free slot: {live:?}",
                        a.start.task
                    );
                }
            }
        }
    }

    #[test]
    fn random_jobs_keep_limits_and_slots_busy() {
        let mut rng = Rng(0x5eed);
        for round in 0..200 {
            let hosts = 1 + rng.next(4);
            let n = 1 + rng.next(25) as usize;
            let tasks: Vec<Task> = (0..n)
                .map(|_| {
                    let h = format!("h{}", rng.next(hosts));
                    let mut ds = vec![format!("ds{}", rng.next(3))];
                    if rng.next(4) == 0 {
                        ds.push(format!("ds{}", rng.next(3)));
                    }
                    let mut t = task(&h, &[], rng.next(3) == 0);
                    t.datastores = ds;
                    t.retries = rng.next(3) as u32;
                    t.backoff = ms(rng.next(500));
                    t
                })
                .collect();
            let limits = SlotLimits {
                max_concurrent: 1 + rng.next(5) as usize,
                max_per_host: (rng.next(3) > 0).then(|| 1 + rng.next(3) as usize),
                max_per_datastore: (rng.next(3) > 0).then(|| 1 + rng.next(3) as usize),
            };
            let mut durations = Rng(round + 1);
            let timeline = simulate(Scheduler::new(tasks.clone(), limits), |t, _| {
                let base = if tasks[t].full { 1000 } else { 100 };
                (ms(base + durations.next(300)), durations.next(4) > 0)
            });
            check_timeline(&tasks, limits, &timeline);
            // Every task ran, each at most 1 + retries times, and stopped at success.
            for (i, t) in tasks.iter().enumerate() {
                let mine: Vec<_> = timeline.iter().filter(|a| a.start.task == i).collect();
                assert!(!mine.is_empty() && mine.len() <= 1 + t.retries as usize);
                assert!(mine[..mine.len() - 1].iter().all(|a| !a.ok));
            }
        }
    }

    #[test]
    fn fulls_are_staggered_per_host() {
        // Two hosts, each with 2 fulls and 6 incrementals; 2 slots per host.
        let mut tasks = Vec::new();
        for h in ["h1", "h2"] {
            tasks.push(task(h, &["ds1"], true));
            tasks.push(task(h, &["ds1"], true));
            for _ in 0..6 {
                tasks.push(task(h, &["ds1"], false));
            }
        }
        let limits = SlotLimits {
            max_concurrent: 4,
            max_per_host: Some(2),
            max_per_datastore: None,
        };
        let timeline = simulate(Scheduler::new(tasks.clone(), limits), |t, _| {
            (if tasks[t].full { ms(1000) } else { ms(200) }, true)
        });
        check_timeline(&tasks, limits, &timeline);
        let fulls: Vec<&SimAttempt> = timeline
            .iter()
            .filter(|a| tasks[a.start.task].full)
            .collect();
        for a in &fulls {
            for b in &fulls {
                if a.start.task < b.start.task
                    && tasks[a.start.task].host == tasks[b.start.task].host
                {
                    assert!(
                        a.end <= b.begin || b.end <= a.begin,
                        "fulls overlap on a host: {a:?} {b:?}"
                    );
                }
            }
        }
        // Fulls go first on each host; the incrementals fill the other slot.
        assert!(timeline[..2].iter().all(|a| tasks[a.start.task].full));
        assert!(!timeline.iter().any(|a| a.start.beside_full));
    }

    #[test]
    fn fulls_run_together_when_nothing_else_waits() {
        let tasks = vec![
            task("h1", &[], true),
            task("h1", &[], true),
            task("h1", &[], false),
        ];
        let limits = SlotLimits {
            max_concurrent: 3,
            max_per_host: None,
            max_per_datastore: None,
        };
        let timeline = simulate(Scheduler::new(tasks.clone(), limits), |_, _| {
            (ms(100), true)
        });
        check_timeline(&tasks, limits, &timeline);
        assert!(timeline.iter().all(|a| a.begin == Duration::ZERO));
        assert_eq!(timeline.iter().filter(|a| a.start.beside_full).count(), 1);
    }

    #[test]
    fn a_vm_spanning_datastores_counts_against_each() {
        let tasks = vec![
            task("h1", &["a", "b"], false),
            task("h2", &["a"], false),
            task("h3", &["b"], false),
            task("h4", &["c"], false),
        ];
        let limits = SlotLimits {
            max_concurrent: 4,
            max_per_host: None,
            max_per_datastore: Some(1),
        };
        let timeline = simulate(Scheduler::new(tasks.clone(), limits), |_, _| {
            (ms(100), true)
        });
        check_timeline(&tasks, limits, &timeline);
        let begin = |t: usize| timeline.iter().find(|a| a.start.task == t).unwrap().begin;
        assert_eq!((begin(0), begin(3)), (ms(0), ms(0)));
        assert_eq!((begin(1), begin(2)), (ms(100), ms(100)));
    }

    #[test]
    fn retries_wait_for_the_backoff_without_a_slot() {
        let mut flaky = task("h1", &[], false);
        flaky.retries = 2;
        flaky.backoff = ms(1000);
        let tasks = vec![flaky, task("h1", &[], false), task("h1", &[], false)];
        let limits = SlotLimits {
            max_concurrent: 1,
            max_per_host: None,
            max_per_datastore: None,
        };
        // Task 0 always fails: three attempts, 1 s apart at least, others in between.
        let timeline = simulate(Scheduler::new(tasks.clone(), limits), |t, _| {
            (ms(100), t != 0)
        });
        check_timeline(&tasks, limits, &timeline);
        let order: Vec<(usize, u32, u64)> = timeline
            .iter()
            .map(|a| (a.start.task, a.start.attempt, a.begin.as_millis() as u64))
            .collect();
        assert_eq!(
            order,
            vec![
                (0, 1, 0),
                (1, 1, 100),
                (2, 1, 200),
                (0, 2, 1100),
                (0, 3, 2200)
            ]
        );
    }
}
