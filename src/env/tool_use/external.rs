//! Tools as external programs (SPEC §3.4): a worker process speaking JSON lines on its stdin and
//! stdout, one request per call and one answer per request:
//!
//! ```text
//! → {"id": 7, "name": "area", "arguments": {"w": 3, "h": 4}}
//! ← {"id": 7, "result": 12}            or   {"id": 7, "error": "h must be positive"}
//! ```
//!
//! The calls of one decoding step go out together and their answers may come back in any order.
//! Every answer is awaited at most `timeout` after the previous one (or after the requests went
//! out). A worker that exits, hangs past the timeout or prints something that is not an answer is
//! killed; the calls still pending get an error (a tool error for the episode, never a panic), and
//! the next call starts a fresh worker. The worker's stderr goes to a log file, so a crashing tool
//! leaves its traceback there.
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// A running worker process.
struct Running {
    child: Child,
    stdin: ChildStdin,
    stdout: ChildStdout,
    /// Bytes read past the last complete line.
    pending: Vec<u8>,
}

/// One external tool program, started on first use and restarted after a failure.
pub struct ToolWorker {
    command: Vec<String>,
    timeout: Duration,
    stderr_log: Option<PathBuf>,
    running: Option<Running>,
    next_id: u64,
    /// Workers started so far (the first start included).
    pub starts: u64,
    /// Batches of calls sent so far (one exchange each).
    pub exchanges: u64,
}

impl ToolWorker {
    /// A worker for `command` (program and arguments); its stderr is appended to `stderr_log`
    /// (discarded when `None`).
    pub fn new(command: Vec<String>, timeout: Duration, stderr_log: Option<PathBuf>) -> Self {
        ToolWorker {
            command,
            timeout,
            stderr_log,
            running: None,
            next_id: 0,
            starts: 0,
            exchanges: 0,
        }
    }

    fn start(&mut self) -> Result<(), String> {
        let (program, args) = self
            .command
            .split_first()
            .ok_or("the tool's command is empty")?;
        let stderr = match &self.stderr_log {
            Some(path) => std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map(Stdio::from)
                .map_err(|e| format!("cannot open {}: {e}", path.display()))?,
            None => Stdio::null(),
        };
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .map_err(|e| format!("cannot start the tool program {program:?}: {e}"))?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.kill();
            return Err("the tool program has no pipes".into());
        };
        self.starts += 1;
        self.running = Some(Running {
            child,
            stdin,
            stdout,
            pending: Vec::new(),
        });
        Ok(())
    }

    /// Kills the worker (if any); the next call starts a new one.
    fn stop(&mut self) {
        if let Some(mut r) = self.running.take() {
            let _ = r.child.kill();
            let _ = r.child.wait();
        }
    }

    /// Runs `calls` (tool name, arguments object) and returns each one's result text (a JSON
    /// string result as it is, anything else as JSON text) or its error text, in order.
    pub fn call_batch(&mut self, calls: &[(&str, &Value)]) -> Vec<Result<String, String>> {
        if calls.is_empty() {
            return Vec::new();
        }
        if self.running.is_none() {
            if let Err(e) = self.start() {
                return vec![Err(e); calls.len()];
            }
        }
        let first = self.next_id;
        self.next_id += calls.len() as u64;
        self.exchanges += 1;
        let mut out: Vec<Option<Result<String, String>>> = vec![None; calls.len()];
        match self.exchange(first, calls, &mut out) {
            Ok(()) => {}
            Err(why) => {
                self.stop();
                for slot in out.iter_mut().filter(|s| s.is_none()) {
                    *slot = Some(Err(why.clone()));
                }
            }
        }
        out.into_iter()
            .map(|r| r.unwrap_or_else(|| Err("no answer".into())))
            .collect()
    }

    /// Sends the requests and fills `out` from the answers; an error says why the worker must be
    /// stopped (the answers already in `out` stand).
    fn exchange(
        &mut self,
        first: u64,
        calls: &[(&str, &Value)],
        out: &mut [Option<Result<String, String>>],
    ) -> Result<(), String> {
        let timeout = self.timeout;
        let r = self
            .running
            .as_mut()
            .ok_or("the tool program is not running")?;
        let mut requests = String::new();
        for (i, (name, arguments)) in calls.iter().enumerate() {
            let line = json!({"id": first + i as u64, "name": name, "arguments": arguments});
            requests.push_str(&line.to_string());
            requests.push('\n');
        }
        r.stdin
            .write_all(requests.as_bytes())
            .and_then(|()| r.stdin.flush())
            .map_err(|e| exited(&mut r.child, &e.to_string()))?;
        let mut left = calls.len();
        while left > 0 {
            let line = read_line(r, timeout)?;
            let answer: Value = serde_json::from_str(&line).map_err(|_| {
                format!(
                    "the tool program wrote a line that is not JSON: {:.80}",
                    line
                )
            })?;
            let id = answer.get("id").and_then(Value::as_u64);
            let Some(slot) = id
                .and_then(|id| id.checked_sub(first))
                .and_then(|i| out.get_mut(i as usize))
            else {
                return Err(format!(
                    "the tool program answered an unknown id: {:.80}",
                    line
                ));
            };
            if slot.is_some() {
                return Err(format!(
                    "the tool program answered id {} twice",
                    id.unwrap_or(0)
                ));
            }
            *slot = Some(match (answer.get("result"), answer.get("error")) {
                (Some(Value::String(s)), None) => Ok(s.clone()),
                (Some(v), None) => Ok(v.to_string()),
                (None, Some(Value::String(e))) => Err(e.clone()),
                (None, Some(e)) => Err(e.to_string()),
                _ => Err("the tool's answer has neither \"result\" nor \"error\"".into()),
            });
            left -= 1;
        }
        Ok(())
    }
}

impl Drop for ToolWorker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Why a worker stopped: its exit status when it has one, else `what`.
fn exited(child: &mut Child, what: &str) -> String {
    match child.try_wait() {
        Ok(Some(status)) => format!("the tool program exited ({status})"),
        _ => format!("the tool program failed: {what}"),
    }
}

/// The longest answer line a worker may write: one longer (or output without a newline that
/// grows past it) is the worker's failure, so a tool that floods its output cannot take the
/// trainer's memory.
pub const MAX_LINE: usize = 16 << 20;

/// The next complete line from the worker's stdout, waiting at most `timeout`.
fn read_line(r: &mut Running, timeout: Duration) -> Result<String, String> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(end) = r.pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = r.pending.drain(..=end).collect();
            let text = String::from_utf8_lossy(&line[..end]).trim().to_string();
            if text.is_empty() {
                continue;
            }
            return Ok(text);
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(format!(
                "the tool program gave no answer within {} ms",
                timeout.as_millis()
            ));
        }
        let wait = (deadline - now).as_millis().min(i32::MAX as u128) as i32;
        let mut fds = libc::pollfd {
            fd: r.stdout.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd we own, for a file descriptor that stays open while `r` lives.
        let ready = unsafe { libc::poll(&mut fds, 1, wait.max(1)) };
        if ready < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(format!("waiting for the tool program: {e}"));
        }
        if ready == 0 {
            continue; // the deadline check above ends the wait
        }
        let mut buf = [0u8; 65536];
        // poll said readable: this read returns what is there (or 0 at the end) without blocking.
        match r.stdout.read(&mut buf) {
            Ok(0) => {
                let _ = r.child.wait();
                return Err(exited(&mut r.child, "it closed its output"));
            }
            Ok(n) => {
                // `pending` held no newline (a line would have been returned above): the line's
                // length is what it held plus what this read brings up to its first newline.
                let before = r.pending.len();
                let end = buf[..n].iter().position(|&b| b == b'\n').unwrap_or(n);
                r.pending.extend_from_slice(&buf[..n]);
                if before + end > MAX_LINE {
                    return Err(format!(
                        "the tool program wrote a line longer than {} MiB",
                        MAX_LINE >> 20
                    ));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(exited(&mut r.child, &e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Python tool program: `add` and `echo` answer, `fail` errors, `slow` sleeps, `die`
    /// exits, `garbage` prints a line that is not JSON, `hold` answers after the next call,
    /// `flood` writes without end and without a newline, `binary` writes bytes that are not text.
    const PROGRAM: &str = r#"
import json, sys, time
held = None
for line in sys.stdin:
    req = json.loads(line)
    name, args = req["name"], req["arguments"]
    if name == "add":
        ans = {"id": req["id"], "result": args["a"] + args["b"]}
    elif name == "echo":
        ans = {"id": req["id"], "result": args["text"]}
    elif name == "fail":
        ans = {"id": req["id"], "error": "no such thing"}
    elif name == "slow":
        time.sleep(args["s"]); ans = {"id": req["id"], "result": "late"}
    elif name == "die":
        print("dying", file=sys.stderr); sys.stderr.flush(); sys.exit(3)
    elif name == "garbage":
        print("hello"); sys.stdout.flush(); continue
    elif name == "hold":
        held = {"id": req["id"], "result": "held"}; continue
    elif name == "flood":
        chunk = "x" * (1 << 20)
        while True:
            sys.stdout.write(chunk); sys.stdout.flush()
    elif name == "binary":
        sys.stdout.buffer.write(bytes(range(256)) * 4 + b"\n"); sys.stdout.flush(); continue
    else:
        ans = {"id": req["id"], "error": "unknown tool " + name}
    print(json.dumps(ans)); sys.stdout.flush()
    if held:
        print(json.dumps(held)); sys.stdout.flush(); held = None
"#;

    fn worker(dir: &std::path::Path, timeout_ms: u64) -> ToolWorker {
        let script = dir.join("tool.py");
        std::fs::write(&script, PROGRAM).unwrap();
        ToolWorker::new(
            vec!["python3".into(), script.display().to_string()],
            Duration::from_millis(timeout_ms),
            Some(dir.join("tools.log")),
        )
    }

    #[test]
    fn a_batch_is_answered_in_order_with_results_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = worker(dir.path(), 20_000);
        let (a, e, f) = (json!({"a": 2, "b": 3}), json!({"text": "hi"}), json!({}));
        let got = w.call_batch(&[("add", &a), ("echo", &e), ("fail", &f), ("nope", &f)]);
        assert_eq!(
            got,
            vec![
                Ok("5".to_string()),
                Ok("hi".to_string()),
                Err("no such thing".to_string()),
                Err("unknown tool nope".to_string()),
            ]
        );
        assert_eq!(w.call_batch(&[("add", &a)]), vec![Ok("5".to_string())]);
        // Answers out of order go to their calls.
        assert_eq!(
            w.call_batch(&[("hold", &f), ("add", &a)]),
            vec![Ok("held".to_string()), Ok("5".to_string())]
        );
        assert_eq!(w.starts, 1, "one process for every call");
    }

    #[test]
    fn a_crash_a_hang_or_garbage_is_a_tool_error_and_the_worker_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = worker(dir.path(), 1_500);
        let (a, none) = (json!({"a": 1, "b": 1}), json!({}));
        // A crash: the pending calls fail, the answers before it stand, the stderr is logged.
        let got = w.call_batch(&[("add", &a), ("die", &none), ("add", &a)]);
        assert_eq!(got[0], Ok("2".to_string()));
        assert!(got[1].as_ref().unwrap_err().contains("exited"), "{got:?}");
        assert!(got[2].is_err());
        let log = std::fs::read_to_string(dir.path().join("tools.log")).unwrap();
        assert!(log.contains("dying"), "{log}");
        assert_eq!(w.call_batch(&[("add", &a)]), vec![Ok("2".to_string())]);
        assert_eq!(w.starts, 2);
        // A hang: the call times out and the next call gets a fresh worker.
        let slow = json!({"s": 30});
        let t0 = Instant::now();
        let got = w.call_batch(&[("slow", &slow)]);
        assert!(
            got[0].as_ref().unwrap_err().contains("within 1500 ms"),
            "{got:?}"
        );
        assert!(t0.elapsed() < Duration::from_secs(20));
        assert_eq!(w.call_batch(&[("add", &a)]), vec![Ok("2".to_string())]);
        assert_eq!(w.starts, 3);
        // Garbage on stdout.
        let got = w.call_batch(&[("garbage", &none)]);
        assert!(got[0].as_ref().unwrap_err().contains("not JSON"), "{got:?}");
        assert_eq!(w.call_batch(&[("add", &a)]), vec![Ok("2".to_string())]);
        assert_eq!(w.starts, 4);
        // Output without end (a gigabyte line in the making): cut at the cap, restarted.
        let got = w.call_batch(&[("flood", &none), ("add", &a)]);
        assert!(
            got[0].as_ref().unwrap_err().contains("longer than 16 MiB"),
            "{got:?}"
        );
        assert!(got[1].is_err());
        assert_eq!(w.call_batch(&[("add", &a)]), vec![Ok("2".to_string())]);
        assert_eq!(w.starts, 5);
        // Binary garbage.
        let got = w.call_batch(&[("binary", &none)]);
        assert!(got[0].as_ref().unwrap_err().contains("not JSON"), "{got:?}");
        assert_eq!(w.call_batch(&[("add", &a)]), vec![Ok("2".to_string())]);
        assert_eq!(w.starts, 6);
    }

    #[test]
    fn a_program_that_cannot_start_is_an_error_per_call() {
        let mut w = ToolWorker::new(
            vec!["/nonexistent/tool".into()],
            Duration::from_millis(100),
            None,
        );
        let v = json!({});
        let got = w.call_batch(&[("x", &v), ("y", &v)]);
        assert_eq!(got.len(), 2);
        assert!(
            got[0].as_ref().unwrap_err().contains("cannot start"),
            "{got:?}"
        );
    }
}
