//! The `vmback` binary: parse the command line, dispatch to the library, map errors
//! to exit codes (0 ok, 1 failure, 2 usage, 3 integrity problem found).

use std::io::{stdout, Write};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{CommandFactory, FromArgMatches};
use vmback::cli::{Cli, Command};
use vmback::export::ExportOptions;
use vmback::image;
use vmback::repo;

mod commands;
use vmback::inspect::{human, inspect, render};

fn main() -> ExitCode {
    // `-V` and `--version` both print the supported formats; the library's
    // `Cli::command()` (man pages, completions) keeps the one-line version.
    let version = vmback::version::long_version();
    let matches = Cli::command()
        .version(version.clone())
        .long_version(version)
        .get_matches();
    let args = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    match run(args) {
        Ok(code) => code,
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vmback: error: {e:#}");
            // The innermost cause usually knows the next step best, but any will do.
            let hint = e
                .chain()
                .filter_map(|c| c.downcast_ref::<vmback::Error>())
                .filter_map(|e| e.hint())
                .last();
            if let Some(hint) = hint {
                eprintln!("vmback: hint: {hint}");
            }
            let usage = e
                .downcast_ref::<vmback::Error>()
                .is_some_and(|e| matches!(e, vmback::Error::Usage(_)));
            let signal = e
                .chain()
                .find_map(|c| match c.downcast_ref::<vmback::Error>() {
                    Some(vmback::Error::Interrupted { signal }) => Some(*signal),
                    _ => None,
                });
            match signal {
                Some(s) => ExitCode::from(vmback::interrupt::exit_status(s)),
                None => ExitCode::from(if usage { 2 } else { 1 }),
            }
        }
    }
}

/// Runs the parsed command line.
/// `vmback ls ... | head` closes our stdout early: not an error.
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Commands that stop cleanly on SIGINT, SIGTERM and SIGHUP (see `interrupt`): a
/// backup still runs its post hook (a guest is never left frozen), an export, get or
/// restore removes the file it was writing (it would look complete).
fn stops_on_signals(command: &Command) -> bool {
    matches!(
        command,
        Command::Backup(_)
            | Command::Run { .. }
            | Command::Export { .. }
            | Command::Get { .. }
            | Command::Restore { .. }
    )
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    if stops_on_signals(&cli.command) {
        vmback::interrupt::watch().context("watching for SIGINT/SIGTERM/SIGHUP")?;
    }
    if let Some(n) = cli.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n.max(1))
            .build_global()
            .context("setting up worker threads")?;
    }
    match cli.command {
        Command::Inspect { image, json } => {
            let disk = Arc::new(image::open(&image)?);
            let report = inspect(&disk)?;
            if json {
                writeln!(stdout(), "{}", serde_json::to_string_pretty(&report)?)?;
            } else {
                write!(stdout(), "{}", render(&report))?;
            }
        }
        Command::Export {
            source,
            disk,
            vm,
            at,
            format,
            subformat,
            align,
            output,
            force,
            json,
        } => {
            let opts = ExportOptions {
                format,
                subformat,
                align,
                force,
            };
            let (stats, bytes_read) = if repo::is_repository(&source) {
                let Some(path) = disk else {
                    return Err(vmback::Error::Usage(format!(
                        "{} is a repository: name the disk, e.g. <vm>/latest/disk0",
                        source.display()
                    ))
                    .into());
                };
                let repo = repo::open_shared(&source)?;
                let (snap, rest) = repo.resolve_path_at(&path, vm.as_deref(), at)?;
                let [disk_name] = rest.as_slice() else {
                    return Err(vmback::Error::Usage(format!(
                        "{path}: expected <restore point>/<disk>, e.g. {}/{}/disk0",
                        snap.manifest.vm.name, snap.manifest.name
                    ))
                    .into());
                };
                let disk = repo.open_disk(&snap, disk_name, 64 << 20)?;
                let stats = vmback::export::export(&disk, &output, &opts)?;
                (stats, None)
            } else {
                vmback::location::only_for_repositories(&source, pick(&vm, at))?;
                if let Some(d) = disk {
                    return Err(vmback::Error::Usage(format!(
                        "{}: an image has one disk; {d:?} is only for repositories",
                        source.display()
                    ))
                    .into());
                }
                let disk = image::open(&source)?;
                for w in disk.warnings() {
                    eprintln!("vmback: warning: {w}");
                }
                let stats = vmback::export::export(&disk, &output, &opts)?;
                (stats, Some(disk.bytes_read()))
            };
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                    "export": stats, "source_bytes_read": bytes_read }))?
                );
            } else {
                eprintln!(
                    "exported {} ({} data, {} written{}) to {} in {:.2}s",
                    human(stats.virtual_size),
                    human(stats.data_bytes),
                    human(stats.written_bytes),
                    bytes_read
                        .map(|b| format!(", {} read from source files", human(b)))
                        .unwrap_or_default(),
                    stats.output.display(),
                    stats.duration.as_secs_f64()
                );
            }
        }
        Command::Init {
            repo,
            chunk_size,
            compression_level,
        } => {
            let chunk_size = u32::try_from(chunk_size).map_err(|_| {
                vmback::Error::Usage(format!("chunk size {chunk_size} is too large"))
            })?;
            use vmback::repo::config::{RepoConfig, ZstdSettings, DEFAULT_ZSTD};
            let zstd = compression_level.map_or(DEFAULT_ZSTD, ZstdSettings::level);
            let config = RepoConfig::new(chunk_size, zstd)?;
            let r = vmback::repo::Repository::init(&repo, config)?;
            eprintln!(
                "created repository {} (id {}, chunks of {}, {zstd})",
                r.location(),
                &r.config().id[..8],
                human(chunk_size as u64),
            );
        }
        Command::Backup(args) => return commands::backup(*args),
        Command::Run {
            jobfile,
            dry_run,
            json,
        } => return commands::run_job(&jobfile, dry_run, json),
        Command::Snapshots { repo, vm, json } => {
            let repo = repo::Repository::open(&repo)?;
            let list: Vec<_> = repo
                .snapshots()?
                .into_iter()
                .filter(|s| vm.as_deref().is_none_or(|v| s.manifest.vm.name == v))
                .collect();
            if json {
                writeln!(
                    stdout(),
                    "{}",
                    serde_json::to_string_pretty(&vmback::snapshots::rows(&list))?
                )?;
            } else {
                write!(stdout(), "{}", vmback::snapshots::render(&list))?;
            }
        }
        Command::Forget {
            repo,
            snapshots,
            vm,
            keep_last,
            keep_hourly,
            keep_daily,
            keep_weekly,
            keep_monthly,
            keep_yearly,
            allow_empty,
            dry_run,
            json,
        } => {
            let policy = vmback::forget::Policy {
                last: keep_last,
                hourly: keep_hourly,
                daily: keep_daily,
                weekly: keep_weekly,
                monthly: keep_monthly,
                yearly: keep_yearly,
            };
            return commands::forget(
                &repo,
                &snapshots,
                vm.as_deref(),
                &policy,
                allow_empty,
                dry_run,
                json,
            );
        }
        Command::Gc {
            repo,
            grace,
            dry_run,
            json,
        } => {
            let repo = repo::open_shared(&repo)?;
            let r = vmback::repo::gc::gc(&repo, grace, dry_run)?;
            if json {
                writeln!(stdout(), "{}", serde_json::to_string_pretty(&r)?)?;
            } else {
                for l in &r.stale_locks {
                    eprintln!(
                        "vmback: warning: stale lock ignored: {l} (remove with `vmback unlock`)"
                    );
                }
                eprintln!(
                    "{} {} chunks and {} indexes ({}) no restore point uses; kept {} younger than the grace period; {} restore points, {} chunks in use{}",
                    if dry_run { "would remove" } else { "removed" },
                    r.chunks_removed,
                    r.indexes_removed,
                    human(r.bytes_reclaimed),
                    r.kept_young,
                    r.restore_points,
                    r.referenced_chunks,
                    if r.running.is_empty() { String::new() } else { format!("; running: {}", r.running.join("; ")) }
                );
            }
        }
        Command::Unlock { repo, all } => {
            let repo = repo::open_shared(&repo)?;
            let mut removed = 0;
            for l in vmback::repo::lock::list(&repo)? {
                let what = vmback::repo::lock::describe(&l);
                if l.stale.is_some() || all {
                    if l.stale.is_none() {
                        eprintln!("vmback: warning: removing a LIVE lock: {what}");
                    }
                    repo.backend().delete(&l.key)?;
                    eprintln!("removed {what}");
                    removed += 1;
                } else {
                    eprintln!("kept (live) {what}");
                }
            }
            eprintln!("{removed} lock(s) removed");
        }
        Command::Verify {
            repo,
            snapshot,
            read_data,
            filesystems,
            vm,
            at,
            json,
        } => {
            let repo = repo::open_shared(&repo)?;
            let snap = match (&snapshot, at) {
                (None, None) => None,
                (s, at) => {
                    let spec = s.as_deref().unwrap_or_default();
                    let (snap, rest) = repo.resolve_path_at(spec, vm.as_deref(), at)?;
                    if !rest.is_empty() {
                        return Err(vmback::Error::Usage(format!(
                            "{spec}: name a restore point only (`<vm>/<restore point>`, an id, `latest`; with --at the VM)"
                        ))
                        .into());
                    }
                    Some(snap)
                }
            };
            let report =
                vmback::verify::verify(&repo, snap.as_ref(), read_data, filesystems, !json)?;
            if json {
                writeln!(stdout(), "{}", serde_json::to_string_pretty(&report)?)?;
            } else {
                write!(stdout(), "{}", vmback::verify::render(&report, read_data))?;
            }
            if !report.is_clean() {
                return Ok(ExitCode::from(3));
            }
        }
        Command::Ls {
            image,
            path,
            vm,
            at,
            long,
            json,
        } => return commands::ls(&image, path.as_deref(), pick(&vm, at), long, json),
        Command::Get {
            image,
            paths,
            vm,
            at,
            target,
            owner,
            overwrite,
            json,
        } => {
            let opts = vmback::get::GetOptions { owner, overwrite };
            return commands::get(&image, &paths, pick(&vm, at), &target, &opts, json);
        }
        Command::Restore {
            repo,
            snapshot,
            paths,
            target,
            vm,
            at,
            overwrite,
            owner,
            json,
        } => {
            let opts = vmback::get::GetOptions { owner, overwrite };
            return commands::restore(
                &repo,
                &snapshot,
                pick(&vm, at),
                &paths,
                &target,
                &opts,
                json,
            );
        }
        Command::Mount {
            source,
            mountpoint,
            vm,
            snapshot,
            at,
            cache_size,
            allow_other,
        } => {
            let opts = vmback::mount::MountOptions {
                vm,
                snapshot,
                at,
                cache_bytes: cache_size,
                allow_other,
                threads: cli.threads,
            };
            vmback::mount::mount(&source, &mountpoint, &opts)?;
        }
        Command::Umount { mountpoint, lazy } => vmback::mount::umount(&mountpoint, lazy)?,
        Command::Cat {
            image,
            path,
            vm,
            at,
        } => {
            let (view, inner) = vmback::location::open_view(&image, &path, pick(&vm, at))?;
            vmback::ls::cat(&view, &inner, &mut stdout().lock())?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `--vm` and `--at` as one [`vmback::location::Pick`].
fn pick(vm: &Option<String>, at: Option<jiff::Timestamp>) -> vmback::location::Pick<'_> {
    vmback::location::Pick {
        vm: vm.as_deref(),
        at,
    }
}
