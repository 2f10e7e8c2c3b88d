//! From the raw job file to a checked [`Job`]: every problem a user can fix in the
//! file is found here, before anything runs, and named by file, line and key.
//!
//! Checked: limits of 0, sizes and durations, duplicate VM names, VM names unusable
//! in paths, VMs without disks, source files and changed-extents files that do not
//! exist, unknown tracking kinds and tracking options that do not go together.
//! Relative paths (repository, sources, changed-extents files) are taken from the
//! job file's directory (hooks run there too: `job::run`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use super::file::{Located, RawJob, RawKeep, RawSettings, RawVm};
use crate::backup::cbt::Tracking;
use crate::backup::hooks::DEFAULT_HOOK_TIMEOUT;
use crate::backup::ratelimit::parse_size;
use crate::backup::SourceSpec;
use crate::cli::parse_duration;
use crate::error::Result;
use crate::forget::Policy;
use crate::repo::manifest::VmIdentity;

/// Backups running at once when the file does not say.
pub const DEFAULT_MAX_CONCURRENT: usize = 2;
/// Most retries per VM accepted (a typo like 1000 would keep a broken VM busy).
pub const MAX_RETRIES: u64 = 100;

/// A checked job.
#[derive(Debug, Clone)]
pub struct Job {
    /// The job file (for messages and `VMBACK_JOB`).
    pub file: PathBuf,
    pub repository: PathBuf,
    pub limits: Limits,
    pub gc_after: bool,
    pub gc_grace: Duration,
    pub vms: Vec<VmJob>,
}

/// Concurrency and rate limits of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_concurrent: usize,
    /// `None`: only `max_concurrent` applies.
    pub max_per_host: Option<usize>,
    pub max_per_datastore: Option<usize>,
    /// Bytes per second, shared by all running backups.
    pub limit_read: Option<u64>,
    /// Worker threads per backup (`None`: the running backups share the global pool).
    pub threads: Option<usize>,
}

/// One VM of the job with its settings (defaults applied).
#[derive(Debug, Clone)]
pub struct VmJob {
    pub vm: VmIdentity,
    pub host: Option<String>,
    pub datastores: Vec<String>,
    pub tags: Vec<String>,
    pub sources: Vec<SourceSpec>,
    pub retries: u32,
    pub retry_backoff: Duration,
    /// Every N-th backup since the last full is a full read.
    pub full_every: Option<u32>,
    pub keep: Policy,
    pub pre_hook: Option<String>,
    pub post_hook: Option<String>,
    pub hook_timeout: Duration,
}

/// Reads, parses and checks the job file at `path`.
pub fn load_job(path: &Path) -> Result<Job> {
    // Absolute, so that sources and the repository resolve to absolute paths too.
    let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let (raw, located) = super::file::read_job_file(&path)?;
    validate(raw, &located)
}

/// Checks a parsed job file.
pub fn validate(raw: RawJob, l: &Located) -> Result<Job> {
    let base = l.path.parent().map(Path::to_path_buf).unwrap_or_default();
    let resolve = |p: &str| -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            base.join(p)
        }
    };
    if raw.repository.get_ref().trim().is_empty() {
        return Err(l.at(&raw.repository, "repository", "must name a directory"));
    }
    let repository = resolve(raw.repository.get_ref());

    let limit = |v: &Option<Spanned<u64>>, key: &str| -> Result<Option<usize>> {
        match v {
            None => Ok(None),
            Some(s) if *s.get_ref() == 0 => Err(l.at(
                s,
                key,
                "must be at least 1 (leave it out for no limit of its own)",
            )),
            Some(s) => usize::try_from(*s.get_ref())
                .map(Some)
                .map_err(|_| l.at(s, key, "too large")),
        }
    };
    let lim = &raw.limits;
    let limits = Limits {
        max_concurrent: limit(&lim.max_concurrent, "limits.max_concurrent")?
            .unwrap_or(DEFAULT_MAX_CONCURRENT),
        max_per_host: limit(&lim.max_per_host, "limits.max_per_host")?,
        max_per_datastore: limit(&lim.max_per_datastore, "limits.max_per_datastore")?,
        limit_read: match &lim.limit_read {
            None => None,
            Some(s) => match parse_size(s.get_ref()) {
                Ok(0) => return Err(l.at(s, "limits.limit_read", "must be more than 0")),
                Ok(n) => Some(n),
                Err(e) => return Err(l.at(s, "limits.limit_read", e)),
            },
        },
        threads: limit(&lim.threads, "limits.threads")?,
    };

    let d = &raw.defaults;
    let gc_grace = match &d.gc_grace {
        Some(s) => parse_duration(s.get_ref()).map_err(|e| l.at(s, "defaults.gc_grace", e))?,
        None => Duration::from_secs(3600),
    };
    if raw.vms.is_empty() {
        return Err(l.error(l.text.len(), "vm", "the job has no [[vm]]"));
    }
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut vms = Vec::new();
    for (i, v) in raw.vms.iter().enumerate() {
        let name = v.name.get_ref();
        let key = format!("vm[{i}].name");
        if name.is_empty() || name.contains('/') || name.starts_with('.') {
            return Err(l.at(
                &v.name,
                &key,
                format!(
                    "{name:?} cannot be used in paths (no '/', not empty, not starting with '.')"
                ),
            ));
        }
        if let Some(first) = seen.insert(name.clone(), v.name.span().start) {
            return Err(l.at(
                &v.name,
                &key,
                format!(
                    "duplicate VM name {name:?} (first at line {}): restore points of one name form one history",
                    l.line_col(first).0
                ),
            ));
        }
        vms.push(vm_job(v, i, d, l, &resolve)?);
    }
    Ok(Job {
        file: l.path.clone(),
        repository,
        limits,
        gc_after: d.gc_after.unwrap_or(false),
        gc_grace,
        vms,
    })
}

/// One `[[vm]]` with the defaults applied.
fn vm_job(
    v: &RawVm,
    i: usize,
    d: &RawSettings,
    l: &Located,
    resolve: &dyn Fn(&str) -> PathBuf,
) -> Result<VmJob> {
    // A VM's own key wins; the error names where the value came from.
    fn pick<'a, T>(
        own: &'a Option<Spanned<T>>,
        default: &'a Option<Spanned<T>>,
        i: usize,
        key: &str,
    ) -> Option<(&'a Spanned<T>, String)> {
        match (own, default) {
            (Some(v), _) => Some((v, format!("vm[{i}].{key}"))),
            (None, Some(v)) => Some((v, format!("defaults.{key}"))),
            (None, None) => None,
        }
    }
    let duration = |own: &Option<Spanned<String>>,
                    default: &Option<Spanned<String>>,
                    key: &str,
                    fallback: Duration|
     -> Result<Duration> {
        match pick(own, default, i, key) {
            Some((s, k)) => parse_duration(s.get_ref()).map_err(|e| l.at(s, &k, e)),
            None => Ok(fallback),
        }
    };
    let retries = match pick(&v.retries, &d.retries, i, "retries") {
        Some((s, k)) if *s.get_ref() > MAX_RETRIES => {
            return Err(l.at(s, &k, format!("at most {MAX_RETRIES}")))
        }
        Some((s, _)) => *s.get_ref() as u32,
        None => 0,
    };
    let full_every = match pick(&v.full_every, &d.full_every, i, "full_every") {
        Some((s, k)) if *s.get_ref() == 0 => {
            return Err(l.at(
                s,
                &k,
                "must be at least 1 (1: every backup is a full; leave it out for fulls only when needed)",
            ))
        }
        Some((s, k)) => Some(u32::try_from(*s.get_ref()).map_err(|_| l.at(s, &k, "too large"))?),
        None => None,
    };
    let keep = pick(&v.keep, &d.keep, i, "keep")
        .map(|(s, _)| policy(s.get_ref()))
        .unwrap_or_default();
    let hook = |own: &Option<Spanned<String>>, default: &Option<Spanned<String>>| {
        own.as_ref()
            .or(default.as_ref())
            .map(|s| s.get_ref().clone())
            .filter(|s| !s.trim().is_empty())
    };

    if v.disks.is_empty() {
        return Err(l.at(
            &v.name,
            &format!("vm[{i}].disk"),
            format!("VM {:?} has no [[vm.disk]] with a source", v.name.get_ref()),
        ));
    }
    let mut sources = Vec::new();
    for (n, disk) in v.disks.iter().enumerate() {
        let key = |k: &str| format!("vm[{i}].disk[{n}].{k}");
        let spec = disk.source.get_ref();
        let is_uri = crate::backup::source::is_nbd_uri(spec);
        let spec = if is_uri {
            spec.clone()
        } else {
            let p = resolve(spec);
            if !p.exists() {
                return Err(l.at(
                    &disk.source,
                    &key("source"),
                    format!("{} does not exist", p.display()),
                ));
            }
            p.display().to_string()
        };
        let kind = disk
            .tracking
            .as_ref()
            .map_or("auto", |t| t.get_ref().as_str());
        let span_of_kind = disk
            .tracking
            .as_ref()
            .map_or(disk.source.span(), |t| t.span());
        let kind_err = |msg: String| l.error(span_of_kind.start, &key("tracking"), msg);
        let tracking = match kind {
            "auto" | "differencing" => Tracking::Auto,
            "full" => Tracking::FullRead,
            "dirty-bitmap" => match &disk.dirty_bitmap {
                Some(b) if !b.get_ref().is_empty() => Tracking::DirtyBitmap(b.get_ref().clone()),
                _ => {
                    return Err(kind_err(
                        "tracking = \"dirty-bitmap\" needs dirty_bitmap = \"NAME\"".into(),
                    ))
                }
            },
            "changed-extents" => match &disk.changed_extents {
                Some(f) => {
                    let p = resolve(f.get_ref());
                    if !p.is_file() {
                        return Err(l.at(
                            f,
                            &key("changed_extents"),
                            format!("{} does not exist", p.display()),
                        ));
                    }
                    Tracking::ChangedExtents(p)
                }
                None => {
                    return Err(kind_err(
                        "tracking = \"changed-extents\" needs changed_extents = \"FILE\"".into(),
                    ))
                }
            },
            other => {
                return Err(kind_err(format!(
                    "unknown tracking {other:?} (auto, dirty-bitmap, changed-extents, differencing, full)"
                )))
            }
        };
        if let (Some(b), false) = (&disk.dirty_bitmap, kind == "dirty-bitmap") {
            return Err(l.at(
                b,
                &key("dirty_bitmap"),
                "only with tracking = \"dirty-bitmap\"",
            ));
        }
        if let (Some(f), false) = (&disk.changed_extents, kind == "changed-extents") {
            return Err(l.at(
                f,
                &key("changed_extents"),
                "only with tracking = \"changed-extents\"",
            ));
        }
        sources.push(SourceSpec { spec, tracking });
    }
    Ok(VmJob {
        vm: VmIdentity {
            name: v.name.get_ref().clone(),
            uuid: v.uuid.clone().filter(|u| !u.is_empty()),
        },
        host: v.host.clone().filter(|h| !h.is_empty()),
        datastores: v.datastores.clone(),
        tags: v.tags.clone(),
        sources,
        retries,
        retry_backoff: duration(
            &v.retry_backoff,
            &d.retry_backoff,
            "retry_backoff",
            Duration::from_secs(30),
        )?,
        full_every,
        keep,
        pre_hook: hook(&v.pre_hook, &d.pre_hook),
        post_hook: hook(&v.post_hook, &d.post_hook),
        hook_timeout: duration(
            &v.hook_timeout,
            &d.hook_timeout,
            "hook_timeout",
            DEFAULT_HOOK_TIMEOUT,
        )?,
    })
}

fn policy(k: &RawKeep) -> Policy {
    Policy {
        last: k.last as usize,
        hourly: k.hourly as usize,
        daily: k.daily as usize,
        weekly: k.weekly as usize,
        monthly: k.monthly as usize,
        yearly: k.yearly as usize,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::file::parse_job;

    /// Validates `text` as a job file in a temp dir holding `a.raw`.
    fn check(text: &str) -> std::result::Result<Job, String> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.raw"), b"x").unwrap();
        let l = Located {
            path: dir.path().join("job.toml"),
            text: text.to_string(),
        };
        let raw = parse_job(&l).map_err(|e| e.to_string())?;
        validate(raw, &l).map_err(|e| {
            e.to_string()
                .replace(&dir.path().display().to_string(), "DIR")
        })
    }

    const VM: &str = "[[vm]]\nname = \"a\"\nhost = \"h\"\n[[vm.disk]]\nsource = \"a.raw\"\n";

    #[test]
    fn defaults_and_overrides() {
        let j = check(
            "repository = \"repo\"\n[limits]\nmax_per_host = 1\nlimit_read = \"10MiB/s\"\n[defaults]\nretries = 2\nretry_backoff = \"5s\"\nkeep = { last = 3 }\n[[vm]]\nname = \"a\"\nretries = 1\n[[vm.disk]]\nsource = \"a.raw\"\n"
        )
        .unwrap();
        assert!(j.repository.ends_with("repo") && j.repository.is_absolute());
        assert_eq!(j.limits.max_concurrent, DEFAULT_MAX_CONCURRENT);
        assert_eq!(j.limits.max_per_host, Some(1));
        assert_eq!(j.limits.limit_read, Some(10 << 20));
        let vm = &j.vms[0];
        assert_eq!(vm.retries, 1);
        assert_eq!(vm.retry_backoff, Duration::from_secs(5));
        assert_eq!(vm.keep.last, 3);
        assert!(vm.sources[0].spec.ends_with("/a.raw"));
        assert_eq!(vm.sources[0].tracking, Tracking::Auto);
    }

    #[test]
    fn rejections_name_line_and_key() {
        let cases: Vec<(String, &str)> = vec![
            (
                format!("repository = \"r\"\n[limits]\nmax_concurrent = 0\n{VM}"),
                "job.toml:3:18: limits.max_concurrent: must be at least 1",
            ),
            (
                format!("repository = \"r\"\n{VM}{VM}"),
                "job.toml:8:8: vm[1].name: duplicate VM name \"a\" (first at line 3)",
            ),
            (
                "repository = \"r\"\n[[vm]]\nname = \"b\"\n[[vm.disk]]\nsource = \"nope.raw\"\n"
                    .into(),
                "job.toml:5:10: vm[0].disk[0].source: DIR/nope.raw does not exist",
            ),
            (
                format!("repository = \"r\"\n{VM}tracking = \"cbt\"\n"),
                "job.toml:7:12: vm[0].disk[0].tracking: unknown tracking \"cbt\"",
            ),
            (
                format!("repository = \"r\"\n{VM}tracking = \"dirty-bitmap\"\n"),
                "vm[0].disk[0].tracking: tracking = \"dirty-bitmap\" needs dirty_bitmap",
            ),
            (
                format!("repository = \"r\"\n[limits]\nlimit_read = \"fast\"\n{VM}"),
                "job.toml:3:14: limits.limit_read: \"fast\": expected a number",
            ),
            (
                format!("repository = \"r\"\n[defaults]\nretry_backoff = \"3 weeks\"\n{VM}"),
                "job.toml:3:17: defaults.retry_backoff: ",
            ),
            (
                "repository = \"r\"\n[defaults]\nkeep = { lats = 3 }\n".into(),
                "job.toml:3:10: lats: unknown field `lats`",
            ),
            (
                "repository = \"r\"\n[[vm]]\nname = \"x/y\"\n".into(),
                "job.toml:3:8: vm[0].name: \"x/y\" cannot be used in paths",
            ),
            (
                "repository = \"r\"\n[[vm]]\nname = \"x\"\n".into(),
                "vm[0].disk: VM \"x\" has no [[vm.disk]]",
            ),
            ("repository = \"r\"\n".into(), "vm: the job has no [[vm]]"),
        ];
        for (text, want) in cases {
            let e = check(&text).unwrap_err();
            assert!(e.contains(want), "{text}\n=> {e}\nwant {want}");
            assert!(e.contains("job.toml:"), "{e}");
        }
    }
}
