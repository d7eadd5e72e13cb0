//! Starting the external programs the driver needs (`zfs`, `zpool`, `blkid`, `mkfs.*`,
//! filesystem growers), one way for all of them.
//!
//! Arguments go to the program as a vector (never through a shell), with `LC_ALL=C` so that
//! messages and numbers are in the form the parsers expect. Each child runs in its own process
//! group; if the future awaiting it is dropped (an RPC cancelled by the CO) or its deadline
//! passes, the whole group is killed, so wrappers that fork (a command prefix such as `chroot`
//! or a shell) leave no orphans behind either: under kubelet retries those pile up.

use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::process::Command;

/// How commands are started: an optional prefix (e.g. `nsenter --target 1 --mount --` to reach
/// the host's own zfs userland) and a deadline per command.
#[derive(Clone, Debug)]
pub struct ProcessRunner {
    prefix: Vec<String>,
    timeout: Duration,
}

/// A command that ran to its end, successfully or not.
#[derive(Debug)]
pub struct Finished {
    pub command: String,
    /// `None` when killed by a signal.
    pub exit_code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Finished {
    pub fn success(&self) -> bool {
        self.exit_code == Some(0)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("could not run `{command}`: {reason}")]
    Spawn { command: String, reason: String },
    #[error("`{command}` did not finish within {after:?} and was killed")]
    TimedOut { command: String, after: Duration },
}

/// Kills the child's process group unless the command ran to completion.
struct GroupKillGuard {
    pgid: Option<Pid>,
}

impl Drop for GroupKillGuard {
    fn drop(&mut self) {
        if let Some(pgid) = self.pgid {
            // The group may already be gone; there is nothing useful to do about an error.
            let _ = killpg(pgid, Signal::SIGKILL);
        }
    }
}

impl ProcessRunner {
    pub fn new(prefix: Vec<String>, timeout: Duration) -> Self {
        Self { prefix, timeout }
    }

    /// The command behind the prefix, with `LC_ALL=C`, standard error piped, in its own
    /// process group; and its command line for messages.
    fn command(&self, program: &str, args: &[String], stdin: bool, stdout: bool) -> (Command, String) {
        let command_line = std::iter::once(program).chain(args.iter().map(String::as_str)).collect::<Vec<_>>().join(" ");
        let (exe, rest): (&str, Vec<&str>) = match self.prefix.split_first() {
            Some((first, prefix_args)) => {
                let mut rest: Vec<&str> = prefix_args.iter().map(String::as_str).collect();
                rest.push(program);
                (first.as_str(), rest)
            }
            None => (program, Vec::new()),
        };
        let mut command = Command::new(exe);
        command
            .args(rest)
            .args(args)
            .env("LC_ALL", "C")
            .stdin(if stdin { Stdio::piped() } else { Stdio::null() })
            .stdout(if stdout { Stdio::piped() } else { Stdio::null() })
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        (command, command_line)
    }

    /// Runs `program args…` to its end (or kills it at the deadline or when dropped).
    pub async fn run(&self, program: &str, args: &[String]) -> Result<Finished, ProcessError> {
        self.run_with_input(program, args, None).await
    }

    /// Like `run`, with `input` written to the program's standard input.
    pub async fn run_with_input(&self, program: &str, args: &[String], input: Option<&[u8]>) -> Result<Finished, ProcessError> {
        let (mut command, command_line) = self.command(program, args, input.is_some(), true);
        tracing::debug!(command = %command_line, "running");
        let mut child = command.spawn().map_err(|e| ProcessError::Spawn {
            command: command_line.clone(),
            reason: e.to_string(),
        })?;
        let mut guard = GroupKillGuard {
            pgid: child.id().map(|id| Pid::from_raw(id as i32)),
        };
        if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
            use tokio::io::AsyncWriteExt;
            // Small inputs (a script): written whole, then closed so the program sees EOF.
            stdin.write_all(input).await.map_err(|e| ProcessError::Spawn {
                command: command_line.clone(),
                reason: format!("writing its input: {e}"),
            })?;
        }
        let output = tokio::time::timeout(self.timeout, child.wait_with_output())
            .await
            .map_err(|_| ProcessError::TimedOut {
                command: command_line.clone(),
                after: self.timeout,
            })?
            .map_err(|e| ProcessError::Spawn {
                command: command_line.clone(),
                reason: e.to_string(),
            })?;
        guard.pgid = None;
        Ok(Finished {
            command: command_line,
            exit_code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        })
    }
}

/// A command started for streaming (`zfs send` into `zfs receive`): its standard input or
/// output is the caller's to read or write; standard error is collected in the background.
/// Dropped before `finish`, it kills its process group.
pub struct Streaming {
    pub child: tokio::process::Child,
    command: String,
    stderr: tokio::task::JoinHandle<String>,
    guard: GroupKillGuard,
}

impl Streaming {
    /// Waits for the command to end (no deadline: a transfer takes as long as its data).
    pub async fn finish(mut self) -> Result<Finished, ProcessError> {
        let status = self.child.wait().await.map_err(|e| ProcessError::Spawn {
            command: self.command.clone(),
            reason: e.to_string(),
        })?;
        self.guard.pgid = None;
        let stderr = (&mut self.stderr).await.unwrap_or_default();
        Ok(Finished { command: self.command.clone(), exit_code: status.code(), stdout: String::new(), stderr: stderr.trim().to_string() })
    }
}

impl ProcessRunner {
    /// Starts `program args…` (behind the prefix, `LC_ALL=C`, own process group) with its
    /// standard input and/or output piped for the caller.
    pub fn spawn_streaming(&self, program: &str, args: &[String], stdin: bool, stdout: bool) -> Result<Streaming, ProcessError> {
        let (mut command, command_line) = self.command(program, args, stdin, stdout);
        tracing::debug!(command = %command_line, "starting");
        let mut child = command.spawn().map_err(|e| ProcessError::Spawn { command: command_line.clone(), reason: e.to_string() })?;
        let guard = GroupKillGuard { pgid: child.id().map(|id| Pid::from_raw(id as i32)) };
        let mut stderr_pipe = child.stderr.take();
        let stderr = tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            let mut text = String::new();
            if let Some(pipe) = stderr_pipe.as_mut() {
                let _ = pipe.read_to_string(&mut text).await;
            }
            text
        });
        Ok(Streaming { child, command: command_line, stderr, guard })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runner(prefix: &[&str], timeout: Duration) -> ProcessRunner {
        ProcessRunner::new(prefix.iter().map(|s| s.to_string()).collect(), timeout)
    }

    #[tokio::test]
    async fn output_and_exit_code_come_back() {
        let done = runner(&[], Duration::from_secs(10))
            .run("sh", &["-c".into(), "echo out; echo err >&2; exit 3".into()])
            .await
            .unwrap();
        assert_eq!(done.stdout, "out\n");
        assert_eq!(done.stderr, "err");
        assert_eq!(done.exit_code, Some(3));
        assert!(!done.success());
    }

    #[tokio::test]
    async fn prefix_runs_before_the_program() {
        let done = runner(&["env", "X=1"], Duration::from_secs(10))
            .run("sh", &["-c".into(), "echo $X $LC_ALL".into()])
            .await
            .unwrap();
        assert_eq!(done.stdout, "1 C\n");
    }

    #[tokio::test]
    async fn input_reaches_the_program() {
        let done = runner(&[], Duration::from_secs(10))
            .run_with_input("cat", &[], Some(b"script\n"))
            .await
            .unwrap();
        assert_eq!(done.stdout, "script\n");
    }

    #[tokio::test]
    async fn missing_program_is_a_spawn_error() {
        let err = runner(&[], Duration::from_secs(10)).run("/nonexistent/zfs", &[]).await.unwrap_err();
        assert!(matches!(err, ProcessError::Spawn { .. }));
    }

    #[tokio::test]
    async fn deadline_kills_the_whole_process_group() {
        // A sleep duration unique to this test process marks the grandchild.
        let marker = format!("29.{}", std::process::id());
        // The shell forks `sleep` as its own child: killing only the shell would orphan it.
        let script = format!("sleep {marker} & wait");
        let err = runner(&[], Duration::from_millis(300))
            .run("sh", &["-c".into(), script, "sleep-marker".into()])
            .await
            .unwrap_err();
        assert!(matches!(err, ProcessError::TimedOut { .. }));
        assert!(wait_until_gone(&marker).await, "a process with {marker} survived");
    }

    /// True once no live (non-zombie) process has `marker` in its command line.
    pub(crate) async fn wait_until_gone(marker: &str) -> bool {
        for _ in 0..50 {
            if !any_process_with(marker) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    fn any_process_with(marker: &str) -> bool {
        let Ok(entries) = std::fs::read_dir("/proc") else { return false };
        entries.flatten().any(|e| {
            let dir = e.path();
            let cmdline = std::fs::read(dir.join("cmdline")).unwrap_or_default();
            let stat = std::fs::read_to_string(dir.join("stat")).unwrap_or_default();
            let zombie = stat.rsplit(')').next().is_some_and(|s| s.trim_start().starts_with('Z'));
            !zombie && String::from_utf8_lossy(&cmdline).contains(marker)
        })
    }
}
