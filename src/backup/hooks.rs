//! Consistency hooks: a command run before the capture (freeze the guest, take the
//! hypervisor snapshot) and one after it (thaw, drop the snapshot). The post hook
//! always runs, also when the pre hook or the capture failed or a signal stopped
//! the capture (see `interrupt`), so a guest is never left frozen.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rustix::process::{kill_process_group, Pid, Signal};

use crate::error::{Error, Result};

/// Longest a hook may run before it is killed (a hung freeze must not hang the host).
pub const DEFAULT_HOOK_TIMEOUT: Duration = Duration::from_secs(600);

/// Which hook: before or after the capture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Before the capture (freeze, snapshot); a stop signal abandons it.
    Pre,
    /// After the capture (thaw, drop the snapshot); always runs to its end (or its
    /// timeout), also when a stop signal arrived: it is what unfreezes the guest.
    Post,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::Pre => "pre",
            Phase::Post => "post",
        }
    }
}

/// Runs `cmd` with `sh -c`, its output going to our stderr (stdout stays clean for
/// `--json`), with `env` added, in `dir` (None: our working directory). An exit
/// status other than 0, a signal, or the timeout is an error naming the phase.
///
/// The hook runs in its own process group, so that a timeout (or a stop signal,
/// for the pre hook) kills everything it started, not only the shell; and so that
/// Ctrl-C on the terminal does not reach a post hook that is thawing the guest.
pub fn run_hook(
    phase: Phase,
    cmd: &str,
    env: &[(String, String)],
    dir: Option<&Path>,
    timeout: Duration,
) -> Result<()> {
    let hook_err = |reason: String| Error::Hook {
        phase: phase.name().to_string(),
        command: cmd.to_string(),
        reason,
    };
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(cmd)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(std::io::stderr())
        .process_group(0);
    if let Some(dir) = dir {
        command.current_dir(dir);
    }
    let mut child = command
        .spawn()
        .map_err(|e| hook_err(format!("cannot start: {e}")))?;
    let kill = |child: &mut Child| {
        let _ = kill_process_group(Pid::from_child(child), Signal::KILL);
        let _ = child.kill();
        let _ = child.wait();
    };
    let started = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return Ok(()),
            Ok(Some(status)) => return Err(hook_err(format!("failed ({status})"))),
            Ok(None) if started.elapsed() > timeout => {
                kill(&mut child);
                return Err(hook_err(format!(
                    "still running after {}s; killed",
                    timeout.as_secs()
                )));
            }
            Ok(None) => match crate::interrupt::requested() {
                Some(signal) if phase == Phase::Pre => {
                    kill(&mut child);
                    return Err(Error::Interrupted { signal });
                }
                _ => std::thread::sleep(Duration::from_millis(20)),
            },
            Err(e) => return Err(hook_err(format!("cannot wait for it: {e}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_env_and_timeout() {
        let env = vec![("VMBACK_PHASE".to_string(), "pre".to_string())];
        run_hook(
            Phase::Pre,
            "test \"$VMBACK_PHASE\" = pre",
            &env,
            None,
            DEFAULT_HOOK_TIMEOUT,
        )
        .unwrap();
        let e = run_hook(Phase::Pre, "exit 3", &env, None, DEFAULT_HOOK_TIMEOUT).unwrap_err();
        assert!(e.to_string().contains("exit status: 3"), "{e}");
        let e = run_hook(
            Phase::Post,
            "sleep 5",
            &env,
            None,
            Duration::from_millis(100),
        )
        .unwrap_err();
        assert!(e.to_string().contains("killed"), "{e}");
    }

    #[test]
    fn a_timeout_kills_what_the_hook_started_too() {
        let dir = tempfile::tempdir().unwrap();
        // The shell's child outlives a kill of the shell alone, and would touch `late`.
        let cmd = "(sleep 1; touch late) & wait";
        let e = run_hook(
            Phase::Pre,
            cmd,
            &[],
            Some(dir.path()),
            Duration::from_millis(100),
        );
        assert!(e.unwrap_err().to_string().contains("killed"));
        std::thread::sleep(Duration::from_millis(1500));
        assert!(
            !dir.path().join("late").exists(),
            "the hook's child survived"
        );
    }
}
