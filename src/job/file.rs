//! The job file (TOML): its raw shape as written, and positions in it.
//!
//! Every table refuses keys it does not know (`deny_unknown_fields`), so a typo
//! (`max_per_hots`) is an error and never a silently ignored limit. Values that
//! later checks look at are kept [`Spanned`], so an error there names the line and
//! column of the key's value, like a parse error does. The checked form is
//! [`super::validate::Job`]; nothing here touches the disk but reading the file.
//!
//! ```toml
//! repository = "/backup/repo"
//! [limits]
//! max_concurrent = 4
//! max_per_host = 2
//! max_per_datastore = 2
//! limit_read = "200MiB/s"
//! threads = 2
//! [defaults]
//! retries = 2
//! retry_backoff = "30s"
//! full_every = 7
//! keep = { last = 7, daily = 14, weekly = 8 }
//! [[vm]]
//! name = "web01"
//! host = "esx1"
//! datastores = ["ds1"]
//! [[vm.disk]]
//! source = "/vms/web01.qcow2"
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use crate::error::{Error, Result};

/// Largest job file read (thousands of VMs fit easily).
pub const MAX_JOB_FILE: u64 = 16 << 20;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawJob {
    pub repository: Spanned<String>,
    #[serde(default)]
    pub limits: RawLimits,
    #[serde(default)]
    pub defaults: RawSettings,
    #[serde(default, rename = "vm")]
    pub vms: Vec<RawVm>,
}

/// `[limits]`: how much of the hosts and datastores the job may use at once.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub max_concurrent: Option<Spanned<u64>>,
    pub max_per_host: Option<Spanned<u64>>,
    pub max_per_datastore: Option<Spanned<u64>>,
    /// Shared by all running backups of the job, e.g. `"200MiB/s"`.
    pub limit_read: Option<Spanned<String>>,
    /// Worker threads per backup.
    pub threads: Option<Spanned<u64>>,
}

/// `[defaults]`: settings for every VM; a VM may override each of them except
/// the job-wide `gc_after` / `gc_grace`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSettings {
    pub retries: Option<Spanned<u64>>,
    pub retry_backoff: Option<Spanned<String>>,
    pub full_every: Option<Spanned<u64>>,
    pub keep: Option<Spanned<RawKeep>>,
    pub pre_hook: Option<Spanned<String>>,
    pub post_hook: Option<Spanned<String>>,
    pub hook_timeout: Option<Spanned<String>>,
    pub gc_after: Option<bool>,
    pub gc_grace: Option<Spanned<String>>,
}

/// A retention policy (as `vmback forget --keep-*`).
#[derive(Debug, Default, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKeep {
    #[serde(default)]
    pub last: u32,
    #[serde(default)]
    pub hourly: u32,
    #[serde(default)]
    pub daily: u32,
    #[serde(default)]
    pub weekly: u32,
    #[serde(default)]
    pub monthly: u32,
    #[serde(default)]
    pub yearly: u32,
}

/// `[[vm]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawVm {
    pub name: Spanned<String>,
    pub uuid: Option<String>,
    pub host: Option<String>,
    #[serde(default)]
    pub datastores: Vec<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default, rename = "disk")]
    pub disks: Vec<RawDisk>,
    // Overrides of [defaults] (serde cannot flatten with deny_unknown_fields).
    pub retries: Option<Spanned<u64>>,
    pub retry_backoff: Option<Spanned<String>>,
    pub full_every: Option<Spanned<u64>>,
    pub keep: Option<Spanned<RawKeep>>,
    pub pre_hook: Option<Spanned<String>>,
    pub post_hook: Option<Spanned<String>>,
    pub hook_timeout: Option<Spanned<String>>,
}

/// `[[vm.disk]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDisk {
    pub source: Spanned<String>,
    pub tracking: Option<Spanned<String>>,
    pub dirty_bitmap: Option<Spanned<String>>,
    pub changed_extents: Option<Spanned<String>>,
}

/// The text of a job file, to turn byte offsets into lines for messages.
#[derive(Debug, Clone)]
pub struct Located {
    pub path: PathBuf,
    pub text: String,
}

impl Located {
    /// 1-based line and column of byte `offset`.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let upto = self.text.get(..offset.min(self.text.len())).unwrap_or("");
        let line = upto.matches('\n').count() + 1;
        let col = upto.len() - upto.rfind('\n').map_or(0, |i| i + 1) + 1;
        (line, col)
    }

    /// A usage error (exit code 2) at `offset`: `FILE:LINE:COL: KEY: MESSAGE`.
    pub fn error(&self, offset: usize, key: &str, message: impl std::fmt::Display) -> Error {
        let (line, col) = self.line_col(offset);
        Error::Usage(format!(
            "{}:{line}:{col}: {key}: {message}",
            self.path.display()
        ))
    }

    /// The error at a spanned value.
    pub fn at<T>(&self, v: &Spanned<T>, key: &str, message: impl std::fmt::Display) -> Error {
        self.error(v.span().start, key, message)
    }
}

/// Reads and parses `path` (no checks beyond the TOML shape; see `validate`).
pub fn read_job_file(path: &Path) -> Result<(RawJob, Located)> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, "open job file", e))?;
    if meta.len() > MAX_JOB_FILE {
        return Err(Error::Usage(format!(
            "{}: {} bytes, too large for a job file",
            path.display(),
            meta.len()
        )));
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, "read job file", e))?;
    let located = Located {
        path: path.to_path_buf(),
        text,
    };
    let raw = parse_job(&located)?;
    Ok((raw, located))
}

/// Parses the text of a job file; errors name the file, line, column and key.
pub fn parse_job(located: &Located) -> Result<RawJob> {
    toml::from_str(&located.text).map_err(|e| {
        let offset = e.span().map_or(0, |s| s.start);
        let key = key_at(&located.text, offset);
        located.error(offset, &key, e.message().trim_end())
    })
}

/// The key written at `offset` (a TOML error's span starts at the key or value it
/// is about): the bare or quoted word there, or the key of the `key = value` line.
fn key_at(text: &str, offset: usize) -> String {
    let line_start = text
        .get(..offset.min(text.len()))
        .and_then(|t| t.rfind('\n'))
        .map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next().unwrap_or("").trim();
    if line.starts_with('[') {
        return line.trim_matches(|c| c == '[' || c == ']').to_string();
    }
    let rest = text.get(offset..).unwrap_or("");
    let here: String = rest
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
        .collect();
    // A key is followed by `=`; anything else is a value, named by its line's key.
    if !here.is_empty() && rest[here.len()..].trim_start().starts_with('=') {
        return here;
    }
    match line.split_once('=') {
        Some((k, _)) => k.trim().to_string(),
        None if !here.is_empty() => here,
        None => "(file)".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn located(text: &str) -> Located {
        Located {
            path: PathBuf::from("job.toml"),
            text: text.to_string(),
        }
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let l = located("repository = \"/r\"\n[limits]\nmax_concurrent = 2\nmax_per_hots = 1\n");
        let e = parse_job(&l).unwrap_err().to_string();
        assert!(e.starts_with("job.toml:4:1: max_per_hots: "), "{e}");
        assert!(e.contains("unknown field `max_per_hots`"), "{e}");
    }

    #[test]
    fn wrong_type_names_the_key() {
        let l = located("repository = \"/r\"\n[defaults]\nretries = \"two\"\n");
        let e = parse_job(&l).unwrap_err().to_string();
        assert!(e.starts_with("job.toml:3:11: retries: "), "{e}");
    }

    #[test]
    fn the_example_job_file_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/example-job.toml");
        let l = Located {
            text: std::fs::read_to_string(&path).unwrap(),
            path,
        };
        let job = parse_job(&l).unwrap();
        assert_eq!(job.vms.len(), 3);
        assert_eq!(job.vms[1].disks.len(), 2);
    }

    #[test]
    fn line_col() {
        let l = located("a\nbc\n\nd");
        assert_eq!(l.line_col(0), (1, 1));
        assert_eq!(l.line_col(3), (2, 2));
        assert_eq!(l.line_col(6), (4, 1));
        assert_eq!(l.line_col(600), (4, 2));
    }
}
