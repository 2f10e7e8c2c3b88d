//! Consistency hooks: a command run before the capture (freeze the guest, take the
//! hypervisor snapshot) and one after it (thaw, drop the snapshot). The post hook
//! always runs, also when the pre hook or the capture failed or a signal stopped
//! the capture (see `interrupt`), so a guest is never left frozen.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// Longest a hook may run before it is killed (a hung freeze must not hang the host).
pub const DEFAULT_HOOK_TIMEOUT: Duration = Duration::from_secs(600);

/// Runs `cmd` with `sh -c`, its output going to our stderr (stdout stays clean for
/// `--json`), with `env` added, in `dir` (None: our working directory). An exit
/// status other than 0, a signal, or the timeout is an error naming the phase.
pub fn run_hook(
    phase: &str,
    cmd: &str,
    env: &[(String, String)],
    dir: Option<&Path>,
    timeout: Duration,
) -> Result<()> {
    let hook_err = |reason: String| Error::Hook {
        phase: phase.to_string(),
        command: cmd.to_string(),
        reason,
    };
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(cmd)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(std::io::stderr());
    if let Some(dir) = dir {
        command.current_dir(dir);
    }
    let mut child = command
        .spawn()
        .map_err(|e| hook_err(format!("cannot start: {e}")))?;
    let started = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return Ok(()),
            Ok(Some(status)) => return Err(hook_err(format!("failed ({status})"))),
            Ok(None) if started.elapsed() > timeout => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(hook_err(format!(
                    "still running after {}s; killed",
                    timeout.as_secs()
                )));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
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
            "pre",
            "test \"$VMBACK_PHASE\" = pre",
            &env,
            None,
            DEFAULT_HOOK_TIMEOUT,
        )
        .unwrap();
        let e = run_hook("pre", "exit 3", &env, None, DEFAULT_HOOK_TIMEOUT).unwrap_err();
        assert!(e.to_string().contains("exit status: 3"), "{e}");
        let e = run_hook("post", "sleep 5", &env, None, Duration::from_millis(100)).unwrap_err();
        assert!(e.to_string().contains("killed"), "{e}");
    }
}
