//! Commands whose argument handling is more than a few lines.

use std::io::{stdout, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use vmback::backup::cbt::Tracking;
use vmback::backup::ratelimit::RateLimiter;
use vmback::backup::{BackupOptions, BackupReport, SourceSpec};
use vmback::browse::DiskView;
use vmback::cli::BackupArgs;
use vmback::get::GetOptions;
use vmback::inspect::human;
use vmback::location::{only_for_repositories, resolve_repo, Pick, RepoPlace};
use vmback::repo::manifest::VmIdentity;
use vmback::Error;

/// `vmback backup`.
pub fn backup(args: BackupArgs) -> anyhow::Result<ExitCode> {
    let BackupArgs {
        repo,
        sources,
        vm,
        uuid,
        host,
        datastores,
        tags,
        dirty_bitmaps,
        changed_extents,
        full,
        pre_hook,
        post_hook,
        hook_timeout,
        limit_read,
        json,
    } = args;
    let mut tracking = vec![Tracking::Auto; sources.len()];
    for (value, flag) in dirty_bitmaps
        .iter()
        .map(|v| (v, "--dirty-bitmap"))
        .chain(changed_extents.iter().map(|v| (v, "--changed-extents")))
    {
        let (disk, arg) = per_disk(value, flag, sources.len())?;
        if tracking[disk] != Tracking::Auto {
            return Err(
                Error::Usage(format!("disk{disk}: more than one change-tracking option")).into(),
            );
        }
        tracking[disk] = if flag == "--dirty-bitmap" {
            Tracking::DirtyBitmap(arg.to_string())
        } else {
            Tracking::ChangedExtents(PathBuf::from(arg))
        };
    }
    if full {
        if tracking.iter().any(|t| *t != Tracking::Auto) {
            return Err(Error::Usage(
                "--full reads everything; drop the change-tracking options".into(),
            )
            .into());
        }
        tracking.fill(Tracking::FullRead);
    }
    if limit_read == Some(0) {
        return Err(Error::Usage("--limit-read must be more than 0".into()).into());
    }
    let opts = BackupOptions {
        vm: VmIdentity { name: vm, uuid },
        host,
        datastores,
        tags,
        sources: sources
            .into_iter()
            .zip(tracking)
            .map(|(spec, tracking)| SourceSpec { spec, tracking })
            .collect(),
        pre_hook,
        post_hook,
        hook_timeout,
        hook_dir: None,
        limiter: limit_read.map(|r| Arc::new(RateLimiter::new(r))),
        full_reason: None,
        extra_env: Vec::new(),
        pool: None,
        progress: !json,
    };
    let repo = vmback::repo::open_shared(&repo)?;
    let report = vmback::backup::backup(&repo, &opts)?;
    if json {
        writeln!(stdout(), "{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        print_summary(&report);
    }
    Ok(ExitCode::SUCCESS)
}

/// Splits `diskN=VALUE`; a bare VALUE is allowed when there is one source.
fn per_disk<'a>(value: &'a str, flag: &str, sources: usize) -> anyhow::Result<(usize, &'a str)> {
    if let Some((disk, rest)) = value.split_once('=') {
        if let Some(n) = disk
            .strip_prefix("disk")
            .and_then(|n| n.parse::<usize>().ok())
        {
            if n >= sources {
                return Err(Error::Usage(format!(
                    "{flag} {value}: there are only {sources} sources (disk0..disk{})",
                    sources - 1
                ))
                .into());
            }
            return Ok((n, rest));
        }
    }
    if sources == 1 {
        Ok((0, value))
    } else {
        Err(Error::Usage(format!(
            "{flag} {value}: several sources; say which disk, e.g. {flag} disk1={value}"
        ))
        .into())
    }
}

/// The one-line summary (per disk, then totals) on stderr.
fn print_summary(r: &BackupReport) {
    for w in &r.warnings {
        eprintln!("vmback: warning: {w}");
    }
    for d in &r.disks {
        eprintln!(
            "  {} {}: {}, read {}, new {} (stored {}) [{}{}]",
            d.name,
            d.source,
            human(d.virtual_size),
            human(d.stats.bytes_read),
            human(d.stats.bytes_new),
            human(d.stats.bytes_stored),
            d.method,
            d.detail
                .as_deref()
                .map(|x| format!(": {x}"))
                .unwrap_or_default()
        );
    }
    let t = &r.totals;
    let secs = t.duration_secs.max(1e-6);
    let dedup = if t.bytes_stored > 0 {
        format!("{:.1}x", t.bytes_scanned as f64 / t.bytes_stored as f64)
    } else {
        "-".into()
    };
    eprintln!(
        "restore point {} ({}/{}): read {}, new {} stored {}, data/stored {}, {}/s, {:.1}s",
        r.short_id,
        r.vm,
        r.name,
        human(t.bytes_read),
        human(t.bytes_new),
        human(t.bytes_stored),
        dedup,
        human((t.bytes_read as f64 / secs) as u64),
        t.duration_secs
    );
    println!("{}", r.snapshot);
}

/// `vmback ls` on an image or a repository.
pub fn ls(
    source: &Path,
    path: Option<&str>,
    pick: Pick,
    long: bool,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let out = &mut stdout().lock();
    let (view, inner) = if vmback::repo::is_repository(source) {
        let repo = vmback::repo::open_shared(source)?;
        match resolve_repo(&repo, path, pick)? {
            RepoPlace::Snapshots(vm) => {
                let list: Vec<_> = repo
                    .snapshots()?
                    .into_iter()
                    .filter(|s| vm.as_deref().is_none_or(|v| s.manifest.vm.name == v))
                    .collect();
                if json {
                    writeln!(
                        out,
                        "{}",
                        serde_json::to_string_pretty(&vmback::snapshots::rows(&list))?
                    )?;
                } else {
                    write!(out, "{}", vmback::snapshots::render(&list))?;
                }
                return Ok(ExitCode::SUCCESS);
            }
            RepoPlace::Disks(snap) => {
                if json {
                    writeln!(
                        out,
                        "{}",
                        serde_json::to_string_pretty(&snap.manifest.disks)?
                    )?;
                } else {
                    for d in &snap.manifest.disks {
                        writeln!(
                            out,
                            "{:<6} {:>10}  {:<6} {}",
                            d.name,
                            human(d.virtual_size),
                            d.format,
                            d.source
                        )?;
                    }
                }
                return Ok(ExitCode::SUCCESS);
            }
            RepoPlace::Inside { view, inner } => (view, inner),
        }
    } else {
        only_for_repositories(source, pick)?;
        let disk = Arc::new(vmback::image::open(source)?);
        let view = DiskView::new(disk, &source.display().to_string())?;
        (view, path.unwrap_or("").to_string())
    };
    if inner.trim_matches('/').is_empty() {
        vmback::ls::list_volumes(&view, json, out)?;
        return Ok(ExitCode::SUCCESS);
    }
    let failed = vmback::ls::list_path(&view, &inner, long, json, out)?;
    for f in &failed {
        eprintln!("vmback: cannot read {f}");
    }
    Ok(if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// `vmback get` from an image, or from restore points (paths grouped by disk).
pub fn get(
    source: &Path,
    paths: &[String],
    pick: Pick,
    target: &Path,
    opts: &GetOptions,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let mut groups: Vec<(DiskView, Vec<String>)> = Vec::new();
    if vmback::repo::is_repository(source) {
        let repo = vmback::repo::open_shared(source)?;
        let mut keyed: Vec<(String, DiskView, Vec<String>)> = Vec::new();
        for p in paths {
            let RepoPlace::Inside { view, inner } = resolve_repo(&repo, Some(p), pick)? else {
                return Err(Error::Usage(format!(
                    "{p}: name what to get inside a disk: <vm>/<restore point>/<disk>/<volume>/<path>"
                ))
                .into());
            };
            let key = view.name().to_string();
            match keyed.iter_mut().find(|(k, _, _)| *k == key) {
                Some((_, _, list)) => list.push(inner),
                None => keyed.push((key, view, vec![inner])),
            }
        }
        groups.extend(keyed.into_iter().map(|(_, v, l)| (v, l)));
    } else {
        only_for_repositories(source, pick)?;
        let disk = Arc::new(vmback::image::open(source)?);
        let view = DiskView::new(disk, &source.display().to_string())?;
        groups.push((view, paths.to_vec()));
    }
    get_groups(&groups, target, opts, json)
}

/// Runs `get` for each disk's paths and prints the reports.
fn get_groups(
    groups: &[(DiskView, Vec<String>)],
    target: &Path,
    opts: &GetOptions,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let mut failed = false;
    for (view, list) in groups {
        let report = vmback::get::get(view, list, target, opts)?;
        failed |= report.skipped > 0;
        if json {
            writeln!(stdout(), "{}", serde_json::to_string_pretty(&report)?)?;
            continue;
        }
        for e in &report.errors {
            eprintln!("vmback: {e}");
        }
        eprintln!(
            "restored {} files, {} directories, {} symlinks, {} hard links ({}) into {}{}",
            report.files,
            report.dirs,
            report.symlinks,
            report.hardlinks,
            human(report.bytes),
            target.display(),
            if report.skipped > 0 {
                format!("; {} entries failed (listed above)", report.skipped)
            } else {
                String::new()
            }
        );
    }
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// `vmback restore REPO SNAPSHOT PATH... --target`: files and trees, or whole disks.
pub fn restore(
    repo: &Path,
    snapshot: &str,
    pick: Pick,
    paths: &[String],
    target: &Path,
    opts: &GetOptions,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let repo = vmback::repo::open_shared(repo)?;
    let (snap, paths) = restore_point_and_paths(&repo, snapshot, pick, paths)?;
    let paths = &paths[..];
    // While restoring, gc keeps this restore point's data even if it is forgotten.
    let indexes = snap
        .manifest
        .disks
        .iter()
        .map(|d| d.index.clone())
        .collect();
    let _lock = vmback::repo::lock::shared(&repo, "restore", indexes)?;
    let whole: Vec<&String> = paths
        .iter()
        .filter(|p| !p.trim_matches('/').contains('/'))
        .collect();
    if !whole.is_empty() {
        let [disk] = whole.as_slice() else {
            return Err(Error::Usage(format!(
                "restore one whole disk per command (asked for {})",
                whole
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
            .into());
        };
        if paths.len() > 1 {
            return Err(Error::Usage(
                "a whole disk goes to --target as an image file; restore files in a separate command".into(),
            )
            .into());
        }
        let disk = repo.open_disk(&snap, disk.trim_matches('/'), 64 << 20)?;
        let stats = vmback::export::export(
            &disk,
            target,
            &vmback::export::ExportOptions {
                format: vmback::export::ExportFormat::Raw,
                subformat: None,
                align: false,
                force: opts.overwrite,
            },
        )?;
        if json {
            writeln!(stdout(), "{}", serde_json::to_string_pretty(&stats)?)?;
        } else {
            eprintln!(
                "restored {} ({} of data) from {} to {} in {:.1}s",
                disk.name(),
                human(stats.data_bytes),
                snap.short_id(),
                target.display(),
                stats.duration.as_secs_f64()
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mut groups: Vec<(DiskView, Vec<String>)> = Vec::new();
    for p in paths {
        let p = p.trim_matches('/');
        let (disk, inner) = p.split_once('/').unwrap_or((p, ""));
        match groups
            .iter_mut()
            .find(|(v, _)| v.name().ends_with(&format!("/{disk}")))
        {
            Some((_, list)) => list.push(inner.to_string()),
            None => {
                let rpd = repo.open_disk(&snap, disk, vmback::repo::reader::DEFAULT_CACHE_BYTES)?;
                let name = rpd.name().to_string();
                groups.push((
                    DiskView::new(Arc::new(rpd), &name)?,
                    vec![inner.to_string()],
                ));
            }
        }
    }
    get_groups(&groups, target, opts, json)
}

/// The restore point of `vmback restore` and what to restore from it. Without
/// `--at`, SNAPSHOT names the restore point; with `--at` it picks it, and SNAPSHOT is
/// the VM when it names one (else it is the first path).
fn restore_point_and_paths(
    repo: &vmback::repo::Repository,
    snapshot: &str,
    pick: Pick,
    paths: &[String],
) -> anyhow::Result<(vmback::repo::manifest::Snapshot, Vec<String>)> {
    let Some(at) = pick.at else {
        let (snap, rest) = repo.resolve_path(snapshot, pick.vm)?;
        if !rest.is_empty() {
            return Err(Error::Usage(format!(
                "{snapshot}: name the restore point alone (`<vm>/<restore point>`, an id or `latest`); paths inside it go after it, e.g. disk0/p1/etc"
            ))
            .into());
        }
        return Ok((snap, paths.to_vec()));
    };
    let first = snapshot.trim_matches('/');
    let vms = repo.vm_names()?;
    if let Some((vm, _)) = first.split_once('/').filter(|(vm, _)| vms.contains(*vm)) {
        return Err(Error::Usage(format!(
            "{first}: --at picks the restore point; name the VM alone ({vm}), or leave it out with --vm"
        ))
        .into());
    }
    let names_vm = pick.vm.is_none_or(|v| v == first) && vms.contains(first);
    let (vm, paths) = if names_vm {
        (Some(first), paths.to_vec())
    } else {
        let mut all = vec![snapshot.to_string()];
        all.extend_from_slice(paths);
        (pick.vm, all)
    };
    if paths.is_empty() {
        return Err(Error::Usage(format!(
            "name what to restore from {first}'s restore point: <disk>/<volume>/<path>, or <disk>"
        ))
        .into());
    }
    Ok((repo.find_at(at, vm)?, paths))
}

/// `vmback forget`.
pub fn forget(
    repo: &Path,
    explicit: &[String],
    vm: Option<&str>,
    policy: &vmback::forget::Policy,
    allow_empty: bool,
    dry_run: bool,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let repo = vmback::repo::open_shared(repo)?;
    if policy.is_empty() && explicit.is_empty() && !allow_empty {
        return Err(Error::Usage(
            "give a policy (--keep-last, --keep-daily, ...) or restore point ids to remove (or --allow-empty to remove all)".into(),
        )
        .into());
    }
    let all: Vec<_> = repo
        .snapshots()?
        .into_iter()
        .filter(|s| vm.is_none_or(|v| s.manifest.vm.name == v))
        .collect();
    let mut decisions = if policy.is_empty() && !allow_empty {
        all.iter()
            .map(|s| vmback::forget::Decision {
                id: s.id.clone(),
                vm: s.manifest.vm.name.clone(),
                name: s.manifest.name.clone(),
                time: s.manifest.time.clone(),
                keep: true,
                reasons: vec!["not named".into()],
            })
            .collect()
    } else {
        vmback::forget::plan(&all, policy, allow_empty)?
    };
    for spec in explicit {
        let snap = repo.find_snapshot(spec, vm)?;
        if let Some(d) = decisions.iter_mut().find(|d| d.id == snap.id) {
            d.keep = false;
            d.reasons = vec!["named on the command line".into()];
        }
    }
    if !dry_run {
        vmback::forget::apply(&repo, &decisions)?;
    }
    if json {
        writeln!(stdout(), "{}", serde_json::to_string_pretty(&decisions)?)?;
    } else {
        write!(stdout(), "{}", vmback::forget::render(&decisions, dry_run))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `vmback run JOBFILE`.
pub fn run_job(file: &Path, dry_run: bool, json: bool) -> anyhow::Result<ExitCode> {
    let job = vmback::job::load_job(file)?;
    if dry_run {
        let plan = vmback::job::plan_job(&job)?;
        if json {
            writeln!(stdout(), "{}", serde_json::to_string_pretty(&plan)?)?;
        } else {
            write!(stdout(), "{}", vmback::job::render_plan(&plan))?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let report = vmback::job::run_job(&job, !json)?;
    if json {
        writeln!(stdout(), "{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        write!(stdout(), "{}", vmback::job::render_report(&report))?;
    }
    Ok(match vmback::interrupt::requested() {
        Some(s) => ExitCode::from(vmback::interrupt::exit_status(s)),
        None if report.ok() => ExitCode::SUCCESS,
        None => ExitCode::from(1),
    })
}
