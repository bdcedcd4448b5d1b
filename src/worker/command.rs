//! Running a `command` task: an argv (never a shell) with `{{name}}` placeholders filled from
//! the task's arguments, the arguments as JSON on stdin and in `CELERIAC_*` environment
//! variables, in its own process group, with a timeout that kills the whole group and
//! stdout/stderr captured up to a size bound.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

/// How much of each of stdout and stderr is kept (the tail; the head is dropped).
pub const DEFAULT_OUTPUT_LIMIT: usize = 64 * 1024;

/// After SIGTERM to the process group on timeout or cancellation, how long the group gets
/// before SIGKILL.
pub const KILL_GRACE: Duration = Duration::from_secs(2);

/// Why a command could not be prepared or started. Never transient: retrying the same
/// message will fail the same way, so the worker dead-letters it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("argument `{0}` is used by the command template but missing from the task's args")]
    MissingArgument(String),
    #[error("unterminated placeholder in command template `{0}`")]
    Unterminated(String),
    #[error("command template is empty")]
    Empty,
    #[error("cannot start `{program}`: {reason}")]
    Spawn { program: String, reason: String },
}

/// Fills `{{name}}` placeholders (inner whitespace allowed) in one argv element.
/// Strings are inserted as they are, numbers and booleans in their JSON form, `null` as the
/// empty string, lists and objects as compact JSON.
pub fn render_arg(template: &str, args: &Value) -> Result<String, CommandError> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .ok_or_else(|| CommandError::Unterminated(template.to_string()))?;
        let name = after[..end].trim();
        let value = args
            .as_object()
            .and_then(|m| m.get(name))
            .ok_or_else(|| CommandError::MissingArgument(name.to_string()))?;
        match value {
            Value::String(s) => out.push_str(s),
            Value::Null => {}
            Value::Bool(_) | Value::Number(_) => out.push_str(&value.to_string()),
            Value::Array(_) | Value::Object(_) => out.push_str(&value.to_string()),
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Renders a whole argv template.
pub fn render_argv(template: &[String], args: &Value) -> Result<Vec<String>, CommandError> {
    if template.is_empty() {
        return Err(CommandError::Empty);
    }
    template.iter().map(|t| render_arg(t, args)).collect()
}

/// What to run and with what.
#[derive(Debug, Clone)]
pub struct CommandSpec {
    pub argv: Vec<String>,
    /// Written to the child's stdin as one JSON document, then stdin is closed.
    pub stdin_json: Value,
    /// Extra environment (the `CELERIAC_*` variables).
    pub env: BTreeMap<String, String>,
    pub timeout: Option<Duration>,
    pub output_limit: usize,
}

/// Captured output: the last `limit` bytes, and how many bytes there were in all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Captured {
    pub text: String,
    pub total_bytes: u64,
}

impl Captured {
    pub fn truncated(&self) -> bool {
        self.total_bytes > self.text.len() as u64
    }
}

/// How a command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Termination {
    /// Exited on its own with this code.
    Exited(i32),
    /// Killed by a signal it did not ask for (not by us).
    Signaled(i32),
    /// Ran past its timeout; the process group was killed.
    TimedOut,
    /// The worker was told to stop; the process group was killed.
    Cancelled,
}

#[derive(Debug, Clone)]
pub struct CommandOutcome {
    pub termination: Termination,
    pub stdout: Captured,
    pub stderr: Captured,
    pub duration: Duration,
}

impl CommandOutcome {
    pub fn succeeded(&self) -> bool {
        self.termination == Termination::Exited(0)
    }
}

/// Runs the command to completion, timeout or cancellation.
pub async fn run(
    spec: &CommandSpec,
    cancel: &CancellationToken,
) -> Result<CommandOutcome, CommandError> {
    let program = spec.argv.first().ok_or(CommandError::Empty)?;
    let mut cmd = Command::new(program);
    cmd.args(&spec.argv[1..])
        .envs(&spec.env)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Own process group, so a timeout can kill everything the task started.
        .process_group(0)
        .kill_on_drop(true);
    let started = Instant::now();
    let mut child = cmd.spawn().map_err(|e| CommandError::Spawn {
        program: program.clone(),
        reason: e.to_string(),
    })?;
    let pgid = child.id().map(|p| p as libc::pid_t);

    let stdin = child.stdin.take();
    let payload = serde_json::to_vec(&spec.stdin_json).unwrap_or_default();
    let writer = tokio::spawn(async move {
        if let Some(mut stdin) = stdin {
            // A command that never reads stdin closes the pipe: that is fine.
            let _ = stdin.write_all(&payload).await;
            let _ = stdin.shutdown().await;
        }
    });
    let out = tokio::spawn(capture(child.stdout.take(), spec.output_limit));
    let err = tokio::spawn(capture(child.stderr.take(), spec.output_limit));

    let deadline = spec.timeout.map(|t| tokio::time::Instant::now() + t);
    let timed_out = async {
        match deadline {
            Some(d) => tokio::time::sleep_until(d).await,
            None => std::future::pending().await,
        }
    };
    let termination = tokio::select! {
        status = child.wait() => status_termination(status),
        _ = timed_out => {
            kill_group(pgid, &mut child).await;
            Termination::TimedOut
        }
        _ = cancel.cancelled() => {
            kill_group(pgid, &mut child).await;
            Termination::Cancelled
        }
    };
    let _ = writer.await;
    // Readers finish when every holder of the pipes has exited. A background grandchild that
    // keeps the pipe open must not hang the worker: bound the wait.
    let stdout = bounded_join(out).await;
    let stderr = bounded_join(err).await;
    Ok(CommandOutcome {
        termination,
        stdout,
        stderr,
        duration: started.elapsed(),
    })
}

fn status_termination(status: std::io::Result<std::process::ExitStatus>) -> Termination {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Ok(s) => match (s.code(), s.signal()) {
            (Some(code), _) => Termination::Exited(code),
            (None, Some(sig)) => Termination::Signaled(sig),
            (None, None) => Termination::Exited(-1),
        },
        Err(_) => Termination::Exited(-1),
    }
}

/// SIGTERM to the group, then SIGKILL after [`KILL_GRACE`] if the leader is still there.
async fn kill_group(pgid: Option<libc::pid_t>, child: &mut tokio::process::Child) {
    if let Some(pgid) = pgid {
        // SAFETY: kill(2) with a negative pid signals the process group we created.
        unsafe { libc::kill(-pgid, libc::SIGTERM) };
        if tokio::time::timeout(KILL_GRACE, child.wait())
            .await
            .is_err()
        {
            // SAFETY: as above.
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
            let _ = child.wait().await;
        } else {
            // The leader left; make sure nothing it started lingers.
            // SAFETY: as above.
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
        }
    } else {
        let _ = child.kill().await;
    }
}

async fn bounded_join(h: tokio::task::JoinHandle<Captured>) -> Captured {
    match tokio::time::timeout(Duration::from_secs(5), h).await {
        Ok(Ok(c)) => c,
        _ => Captured::default(),
    }
}

async fn capture<R: AsyncRead + Unpin>(reader: Option<R>, limit: usize) -> Captured {
    let Some(mut reader) = reader else {
        return Captured::default();
    };
    let mut keep: Vec<u8> = Vec::new();
    let mut total: u64 = 0;
    let mut buf = [0u8; 8192];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                total += n as u64;
                keep.extend_from_slice(&buf[..n]);
                if keep.len() > limit.saturating_mul(2).max(16 * 1024) {
                    let cut = keep.len() - limit;
                    keep.drain(..cut);
                }
            }
        }
    }
    if keep.len() > limit {
        let cut = keep.len() - limit;
        keep.drain(..cut);
    }
    Captured {
        text: String::from_utf8_lossy(&keep).into_owned(),
        total_bytes: total,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(argv: &[&str]) -> CommandSpec {
        CommandSpec {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            stdin_json: json!({"args": {"x": 1}}),
            env: BTreeMap::from([("CELERIAC_TASK".to_string(), "t".to_string())]),
            timeout: Some(Duration::from_secs(10)),
            output_limit: DEFAULT_OUTPUT_LIMIT,
        }
    }

    #[test]
    fn placeholders_are_filled_per_argv_element() {
        let args =
            json!({"days": 7, "dir": "/tmp/a b", "flag": true, "none": null, "list": [1, 2]});
        let argv: Vec<String> = [
            "find",
            "{{dir}}",
            "-mtime",
            "+{{ days }}",
            "{{flag}}{{none}}",
            "{{list}}",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(
            render_argv(&argv, &args).unwrap(),
            vec!["find", "/tmp/a b", "-mtime", "+7", "true", "[1,2]"]
        );
    }

    #[test]
    fn missing_placeholder_argument_is_an_error() {
        let err = render_arg("--days={{days}}", &json!({})).unwrap_err();
        assert_eq!(err, CommandError::MissingArgument("days".into()));
        assert!(matches!(
            render_arg("{{oops", &json!({})),
            Err(CommandError::Unterminated(_))
        ));
    }

    #[test]
    fn shell_metacharacters_are_not_interpreted() {
        let args = json!({"x": "$(touch /tmp/celeriac-pwned); `id`"});
        assert_eq!(
            render_arg("{{x}}", &args).unwrap(),
            "$(touch /tmp/celeriac-pwned); `id`"
        );
    }

    #[tokio::test]
    async fn runs_argv_and_captures_stdout_stdin_and_env() {
        let s = spec(&[
            "sh",
            "-c",
            "cat; echo; echo \"task=$CELERIAC_TASK\"; echo err >&2",
        ]);
        let out = run(&s, &CancellationToken::new()).await.unwrap();
        assert!(out.succeeded(), "{out:?}");
        assert_eq!(out.stdout.text, "{\"args\":{\"x\":1}}\ntask=t\n");
        assert_eq!(out.stderr.text, "err\n");
    }

    #[tokio::test]
    async fn nonzero_exit_is_reported() {
        let out = run(&spec(&["sh", "-c", "exit 3"]), &CancellationToken::new())
            .await
            .unwrap();
        assert_eq!(out.termination, Termination::Exited(3));
    }

    #[tokio::test]
    async fn timeout_kills_the_whole_process_group() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("survived");
        let script = format!("(sleep 3; touch {}) & sleep 30", marker.display());
        let mut s = spec(&["sh", "-c", &script]);
        s.timeout = Some(Duration::from_millis(300));
        let t = Instant::now();
        let out = run(&s, &CancellationToken::new()).await.unwrap();
        assert_eq!(out.termination, Termination::TimedOut);
        assert!(
            t.elapsed() < Duration::from_secs(8),
            "took {:?}",
            t.elapsed()
        );
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert!(!marker.exists(), "a grandchild outlived the timeout");
    }

    #[tokio::test]
    async fn cancellation_kills_the_command() {
        let cancel = CancellationToken::new();
        let c2 = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            c2.cancel();
        });
        let out = run(&spec(&["sleep", "30"]), &cancel).await.unwrap();
        assert_eq!(out.termination, Termination::Cancelled);
    }

    #[tokio::test]
    async fn output_is_bounded_to_the_tail() {
        let mut s = spec(&[
            "sh",
            "-c",
            "i=0; while [ $i -lt 5000 ]; do echo line$i; i=$((i+1)); done",
        ]);
        s.output_limit = 100;
        let out = run(&s, &CancellationToken::new()).await.unwrap();
        assert!(out.stdout.truncated());
        assert_eq!(out.stdout.text.len(), 100);
        assert!(out.stdout.text.ends_with("line4999\n"));
    }

    #[tokio::test]
    async fn missing_program_is_a_spawn_error() {
        let err = run(
            &spec(&["/nonexistent/celeriac-test-binary"]),
            &CancellationToken::new(),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, CommandError::Spawn { .. }), "{err:?}");
    }
}
