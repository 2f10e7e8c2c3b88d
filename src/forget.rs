//! `vmback forget`: retention per VM. Only manifests are removed; `vmback gc` then
//! reclaims the chunks no restore point uses any more.
//!
//! The policy, per VM, newest first (as restic and borg do): `--keep-last N` keeps
//! the N newest; `--keep-hourly/daily/weekly/monthly/yearly N` each keep the newest
//! restore point of each of the N most recent hours / days / ISO weeks / months /
//! years that have one. A restore point kept by several rules lists every reason.
//! Times are UTC. A policy never removes the last restore point of a VM unless
//! `--allow-empty` is given.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::repo::manifest::Snapshot;
use crate::repo::{lock, Repository};

/// Names the time bucket (hour, day, ISO week, ...) a restore point falls in.
type BucketOf = fn(&jiff::civil::DateTime) -> String;

/// How many restore points each rule keeps (0: rule off).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Policy {
    pub last: usize,
    pub hourly: usize,
    pub daily: usize,
    pub weekly: usize,
    pub monthly: usize,
    pub yearly: usize,
}

impl Policy {
    pub fn is_empty(&self) -> bool {
        *self == Policy::default()
    }
}

/// The decision for one restore point.
#[derive(Debug, Clone, Serialize)]
pub struct Decision {
    pub id: String,
    pub vm: String,
    pub name: String,
    pub time: String,
    pub keep: bool,
    /// Why it is kept ("last 1", "daily 2026-11-20", ...); empty when removed.
    pub reasons: Vec<String>,
}

/// Applies `policy` to the restore points of each VM (all of them: pass those of
/// one VM only to restrict). `allow_empty` permits removing a VM's last one.
pub fn plan(snapshots: &[Snapshot], policy: &Policy, allow_empty: bool) -> Result<Vec<Decision>> {
    let mut by_vm: BTreeMap<&str, Vec<&Snapshot>> = BTreeMap::new();
    for s in snapshots {
        by_vm.entry(&s.manifest.vm.name).or_default().push(s);
    }
    let mut out = Vec::new();
    for (vm, mut list) in by_vm {
        // Newest first.
        list.sort_by(|a, b| {
            (b.manifest.time.as_str(), &b.id).cmp(&(a.manifest.time.as_str(), &a.id))
        });
        let mut decisions: Vec<Decision> = Vec::with_capacity(list.len());
        for s in &list {
            decisions.push(Decision {
                id: s.id.clone(),
                vm: vm.to_string(),
                name: s.manifest.name.clone(),
                time: s.manifest.time.clone(),
                keep: false,
                reasons: Vec::new(),
            });
        }
        for (i, d) in decisions.iter_mut().enumerate().take(policy.last) {
            d.keep = true;
            d.reasons.push(format!("last {}", i + 1));
        }
        let rules: [(usize, &str, BucketOf); 5] = [
            (policy.hourly, "hourly", |t| {
                t.strftime("%Y-%m-%d %H:00").to_string()
            }),
            (policy.daily, "daily", |t| {
                t.strftime("%Y-%m-%d").to_string()
            }),
            (policy.weekly, "weekly", |t| {
                let w = t.date().iso_week_date();
                format!("{}-W{:02}", w.year(), w.week())
            }),
            (policy.monthly, "monthly", |t| {
                t.strftime("%Y-%m").to_string()
            }),
            (policy.yearly, "yearly", |t| t.strftime("%Y").to_string()),
        ];
        for (n, rule, bucket_of) in rules {
            if n == 0 {
                continue;
            }
            let mut last_bucket: Option<String> = None;
            let mut used = 0;
            for d in decisions.iter_mut() {
                if used >= n {
                    break;
                }
                let t: jiff::Timestamp = d.time.parse().map_err(|e| {
                    Error::Usage(format!(
                        "restore point {} has a bad time {:?}: {e}",
                        d.id, d.time
                    ))
                })?;
                let bucket = bucket_of(&t.to_zoned(jiff::tz::TimeZone::UTC).datetime());
                if last_bucket.as_deref() != Some(bucket.as_str()) {
                    d.keep = true;
                    d.reasons.push(format!("{rule} {bucket}"));
                    last_bucket = Some(bucket);
                    used += 1;
                }
            }
        }
        if !allow_empty && !decisions.iter().any(|d| d.keep) {
            if let Some(newest) = decisions.first_mut() {
                newest.keep = true;
                newest
                    .reasons
                    .push("the VM's last restore point (use --allow-empty to remove it)".into());
            }
        }
        out.extend(decisions);
    }
    Ok(out)
}

/// Removes the manifests `plan` did not keep (under the exclusive lock).
pub fn apply(repo: &Arc<Repository>, decisions: &[Decision]) -> Result<usize> {
    let _lock = lock::exclusive(repo, "forget")?;
    let mut n = 0;
    for d in decisions.iter().filter(|d| !d.keep) {
        repo.backend().delete(&format!("snapshots/{}", d.id))?;
        n += 1;
    }
    Ok(n)
}

/// The plan as text: one line per restore point, newest first per VM.
pub fn render(decisions: &[Decision], dry_run: bool) -> String {
    let mut out = String::new();
    let mut vm = "";
    for d in decisions {
        if d.vm != vm {
            vm = &d.vm;
            out += &format!("{vm}:\n");
        }
        out += &format!(
            "  {:<12} {:<8} {:<22} {}\n",
            if d.keep {
                "keep"
            } else if dry_run {
                "would remove"
            } else {
                "remove"
            },
            d.id.get(..8).unwrap_or(&d.id),
            d.name,
            d.reasons.join(", ")
        );
    }
    let removed = decisions.iter().filter(|d| !d.keep).count();
    out += &format!(
        "{} kept, {removed} {}\n",
        decisions.len() - removed,
        if dry_run {
            "would be removed (dry run)"
        } else {
            "removed; run `vmback gc` to reclaim space"
        }
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::manifest::{Manifest, VmIdentity};

    fn snap(time: &str) -> Snapshot {
        Snapshot {
            id: format!("{:0>64}", time.replace(['-', ':', 'T', 'Z'], "")),
            manifest: Manifest {
                version: 1,
                vm: VmIdentity {
                    name: "vm".into(),
                    uuid: None,
                },
                host: None,
                datastores: vec![],
                tags: vec![],
                time: time.into(),
                end_time: time.into(),
                name: time.into(),
                parent: None,
                proxy: None,
                chunk_size: 1 << 20,
                disks: vec![],
                warnings: vec![],
                program: "test".into(),
            },
        }
    }

    /// A synthetic year: a restore point every day at 03:00 from 2025-11-22 to
    /// 2026-11-21, and hourly ones on the last day from 04:00 to 10:00.
    fn year() -> Vec<Snapshot> {
        let mut out = Vec::new();
        let mut day = jiff::civil::date(2025, 11, 22);
        while day <= jiff::civil::date(2026, 11, 21) {
            out.push(snap(&format!("{day}T03:00:00Z")));
            day = day.tomorrow().unwrap();
        }
        for h in 4..=10 {
            out.push(snap(&format!("2026-11-21T{h:02}:00:00Z")));
        }
        out
    }

    fn kept(policy: Policy, allow_empty: bool) -> Vec<String> {
        let mut k: Vec<String> = plan(&year(), &policy, allow_empty)
            .unwrap()
            .into_iter()
            .filter(|d| d.keep)
            .map(|d| d.time)
            .collect();
        k.sort();
        k
    }

    #[test]
    fn each_policy_over_a_year() {
        let p = |f: fn(&mut Policy)| {
            let mut x = Policy::default();
            f(&mut x);
            x
        };
        let table: Vec<(Policy, Vec<&str>)> = vec![
            (
                p(|x| x.last = 3),
                vec![
                    "2026-11-21T08:00:00Z",
                    "2026-11-21T09:00:00Z",
                    "2026-11-21T10:00:00Z",
                ],
            ),
            (
                p(|x| x.hourly = 4),
                vec![
                    "2026-11-21T07:00:00Z",
                    "2026-11-21T08:00:00Z",
                    "2026-11-21T09:00:00Z",
                    "2026-11-21T10:00:00Z",
                ],
            ),
            (
                p(|x| x.daily = 3),
                vec![
                    "2026-11-19T03:00:00Z",
                    "2026-11-20T03:00:00Z",
                    "2026-11-21T10:00:00Z",
                ],
            ),
            // 2026-11-21 is a Saturday: ISO week 47 runs Nov 16-22, week 46 Nov 9-15.
            (
                p(|x| x.weekly = 2),
                vec!["2026-11-15T03:00:00Z", "2026-11-21T10:00:00Z"],
            ),
            (
                p(|x| x.monthly = 3),
                vec![
                    "2026-09-30T03:00:00Z",
                    "2026-10-31T03:00:00Z",
                    "2026-11-21T10:00:00Z",
                ],
            ),
            (
                p(|x| x.yearly = 5),
                vec!["2025-12-31T03:00:00Z", "2026-11-21T10:00:00Z"],
            ),
            // Rules overlap: the union, each restore point once.
            (
                p(|x| {
                    x.last = 1;
                    x.daily = 2;
                    x.weekly = 2;
                }),
                vec![
                    "2026-11-15T03:00:00Z",
                    "2026-11-20T03:00:00Z",
                    "2026-11-21T10:00:00Z",
                ],
            ),
            // Never the last one by accident.
            (Policy::default(), vec!["2026-11-21T10:00:00Z"]),
        ];
        for (policy, want) in table {
            assert_eq!(kept(policy, false), want, "{policy:?}");
        }
        assert_eq!(kept(Policy::default(), true), Vec::<String>::new());
        // Monthly 12 + daily 7 over the year: 7 days of November plus 11 earlier months.
        let k = kept(
            p(|x| {
                x.daily = 7;
                x.monthly = 12;
            }),
            false,
        );
        assert_eq!(k.len(), 7 + 11, "{k:?}");
        assert_eq!(k[0], "2025-12-31T03:00:00Z");
    }

    #[test]
    fn reasons_are_listed() {
        let d = plan(
            &year(),
            &Policy {
                last: 1,
                daily: 1,
                ..Policy::default()
            },
            false,
        )
        .unwrap();
        let newest = d.iter().find(|d| d.time == "2026-11-21T10:00:00Z").unwrap();
        assert_eq!(newest.reasons, vec!["last 1", "daily 2026-11-21"]);
    }
}
