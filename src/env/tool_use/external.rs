//! Tools as external programs (SPEC §3.4): a worker process speaking JSON lines on its stdin and
//! stdout, one request per call and one answer per request:
//!
//! ```text
//! → {"id": 7, "name": "area", "arguments": {"w": 3, "h": 4}}
//! ← {"id": 7, "result": 12}            or   {"id": 7, "error": "h must be positive"}
//! ```
//!
//! A worker may also keep state per episode in *sessions* (`scripts/pytools.py` serving classes):
//!
//! ```text
//! → {"id": 8, "session": "e3", "open": {"GorillaFileSystem": {…config…}}}   ← {"id": 8, "result": [tool names]}
//! → {"id": 9, "session": "e3", "name": "ls", "arguments": {}}               ← {"id": 9, "result": {…}}
//! → {"id": 10, "session": "e3", "close": true}                              ← {"id": 10, "result": true}
//! ```
//!
//! plus `same_state` (two sessions' public state compared), `parse` (a call in Python form read
//! to name and arguments) and `sessions` (how many are open). A restart loses the sessions of the
//! process that stopped: their later requests fail with a tool error without reaching the new
//! process, and are counted ([`ToolWorker::sessions_lost`]).
//!
//! The calls of one decoding step go out together and their answers may come back in any order.
//! Every answer is awaited at most `timeout` after the previous one (or after the requests went
//! out). A worker that exits, hangs past the timeout or prints something that is not an answer is
//! killed; the calls still pending get an error (a tool error for the episode, never a panic), and
//! the next call starts a fresh worker. The worker's stderr goes to a log file, so a crashing tool
//! leaves its traceback there.
use std::collections::HashSet;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub use super::reward::Graded;

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
    /// Sessions open in the running process.
    sessions: HashSet<String>,
    /// Sessions a restart lost and that were not closed since.
    lost: HashSet<String>,
    /// Sessions lost in restarts so far.
    pub sessions_lost: u64,
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
            sessions: HashSet::new(),
            lost: HashSet::new(),
            sessions_lost: 0,
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

    /// Kills the worker as a crash would (its sessions are lost; the next call starts a new
    /// one).
    pub fn kill(&mut self) {
        self.stop();
    }

    /// Kills the worker (if any), losing its sessions; the next call starts a new one.
    fn stop(&mut self) {
        if let Some(mut r) = self.running.take() {
            let _ = r.child.kill();
            let _ = r.child.wait();
        }
        self.sessions_lost += self.sessions.len() as u64;
        self.lost.extend(self.sessions.drain());
    }

    /// Runs `calls` (tool name, arguments object) and returns each one's result text (a JSON
    /// string result as it is, anything else as JSON text) or its error text, in order.
    pub fn call_batch(&mut self, calls: &[(&str, &Value)]) -> Vec<Result<String, String>> {
        let requests: Vec<Value> = calls
            .iter()
            .map(|(name, arguments)| json!({"name": name, "arguments": arguments}))
            .collect();
        self.request_batch(requests)
            .into_iter()
            .map(|r| r.map(text))
            .collect()
    }

    /// Runs `calls` (session, tool name, arguments object), each in its session, as
    /// [`Self::call_batch`] does.
    pub fn session_calls(&mut self, calls: &[(&str, &str, &Value)]) -> Vec<Result<String, String>> {
        let requests: Vec<Value> = calls
            .iter()
            .map(|(session, name, arguments)| {
                json!({"session": session, "name": name, "arguments": arguments})
            })
            .collect();
        self.request_batch(requests)
            .into_iter()
            .map(|r| r.map(text))
            .collect()
    }

    /// Starts `session` with `config` (`{CLASS: CONFIG, …}` for `scripts/pytools.py`); the
    /// names of the tools it offers.
    pub fn open_session(&mut self, session: &str, config: &Value) -> Result<Vec<String>, String> {
        self.lost.remove(session);
        let names = self.request(json!({"session": session, "open": config}))?;
        self.sessions.insert(session.to_string());
        Ok(names
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|n| n.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Starts several sessions in one exchange: each `(session, config, long_context)` (the
    /// flag asks BFCL's classes for their long-context scenarios). Each one's outcome, in order.
    pub fn open_batch(&mut self, opens: &[(String, Value, bool)]) -> Vec<Result<(), String>> {
        let requests = opens
            .iter()
            .map(|(session, config, long_context)| {
                self.lost.remove(session);
                json!({"session": session, "open": config, "long_context": long_context})
            })
            .collect();
        let answers = self.request_batch(requests);
        opens
            .iter()
            .zip(answers)
            .map(|((session, _, _), r)| {
                r.map(|_| {
                    self.sessions.insert(session.clone());
                })
            })
            .collect()
    }

    /// Ends several sessions in one exchange (those a restart lost are gone already).
    pub fn close_batch(&mut self, sessions: &[String]) -> Result<(), String> {
        let open: Vec<&String> = sessions
            .iter()
            .filter(|s| !self.lost.remove(s.as_str()))
            .collect();
        let requests = open
            .iter()
            .map(|s| json!({"session": s, "close": true}))
            .collect();
        let answers = self.request_batch(requests);
        for s in &open {
            self.sessions.remove(s.as_str());
        }
        answers
            .into_iter()
            .find_map(Result::err)
            .map_or(Ok(()), Err)
    }

    /// Ends `session`. A session a restart lost is already gone: closing it is not an error.
    pub fn close_session(&mut self, session: &str) -> Result<(), String> {
        if self.lost.remove(session) {
            return Ok(());
        }
        let closed = self.request(json!({"session": session, "close": true}));
        self.sessions.remove(session);
        closed.map(|_| ())
    }

    /// Ends every session this worker opened (those a restart lost are gone already).
    pub fn close_all(&mut self) -> Result<(), String> {
        self.lost.clear();
        let open: Vec<String> = self.sessions.iter().cloned().collect();
        open.iter().try_for_each(|s| self.close_session(s))
    }

    /// Whether `session`'s public state equals `other`'s (BFCL's state check: every public
    /// attribute of each of `other`'s instances).
    pub fn same_state(&mut self, session: &str, other: &str) -> Result<bool, String> {
        let v = self.request(json!({"session": session, "same_state": other}))?;
        v.as_bool()
            .ok_or_else(|| format!("the tool program answered {v} to a state comparison"))
    }

    /// The public state of `session`'s instances, as JSON.
    pub fn state(&mut self, session: &str) -> Result<Value, String> {
        self.request(json!({"session": session, "state": true}))
    }

    /// A call written in Python form (`sort('a.txt')`, positional arguments named by the
    /// method's signature) as its name and arguments object, read by `session`'s classes.
    pub fn parse_call(&mut self, session: &str, text: &str) -> Result<(String, Value), String> {
        let v = self.request(json!({"session": session, "parse": text}))?;
        match (v.get("name").and_then(Value::as_str), v.get("arguments")) {
            (Some(name), Some(args)) if args.is_object() => Ok((name.to_string(), args.clone())),
            _ => Err(format!("the tool program read {text:?} as {v}")),
        }
    }

    /// BFCL's multi-turn verdicts of conversations, each replayed on fresh instances by the
    /// worker (`grade` in `scripts/pytools.py`; [`crate::env::tool_use::bfcl::multi`] writes
    /// the requests), in one exchange.
    pub fn grade_batch(&mut self, specs: &[Value]) -> Vec<Result<Graded, String>> {
        let requests = specs.iter().map(|s| json!({ "grade": s })).collect();
        self.request_batch(requests)
            .into_iter()
            .map(|r| {
                r.and_then(|v| {
                    serde_json::from_value(v.clone())
                        .map_err(|_| format!("the tool program answered {v:.80} to a grade"))
                })
            })
            .collect()
    }

    /// How many sessions the running process holds (0 when none is running).
    pub fn open_sessions(&mut self) -> Result<u64, String> {
        if self.running.is_none() {
            return Ok(0);
        }
        let v = self.request(json!({"sessions": true}))?;
        v.as_u64()
            .ok_or_else(|| format!("the tool program answered {v} to a session count"))
    }

    /// One request, its result value or error text.
    fn request(&mut self, request: Value) -> Result<Value, String> {
        self.request_batch(vec![request])
            .pop()
            .unwrap_or_else(|| Err("no answer".into()))
    }

    /// Sends `requests` (JSON objects without their ids) in one exchange and returns each one's
    /// result value or error text, in order. A request naming a session that a restart lost
    /// fails without being sent.
    pub fn request_batch(&mut self, requests: Vec<Value>) -> Vec<Result<Value, String>> {
        let mut out: Vec<Option<Result<Value, String>>> = vec![None; requests.len()];
        let mut sent = Vec::with_capacity(requests.len());
        for (i, mut req) in requests.into_iter().enumerate() {
            let lost = req
                .get("session")
                .and_then(Value::as_str)
                .is_some_and(|s| self.lost.contains(s));
            if lost {
                out[i] = Some(Err(format!(
                    "the tool program restarted: session {} was lost",
                    req["session"]
                )));
                continue;
            }
            if let Some(obj) = req.as_object_mut() {
                obj.insert("id".into(), Value::from(self.next_id + sent.len() as u64));
            }
            sent.push((i, req));
        }
        if sent.is_empty() {
            return out.into_iter().map(answered).collect();
        }
        if self.running.is_none() {
            if let Err(e) = self.start() {
                for (i, _) in &sent {
                    out[*i] = Some(Err(e.clone()));
                }
                return out.into_iter().map(answered).collect();
            }
        }
        let first = self.next_id;
        self.next_id += sent.len() as u64;
        self.exchanges += 1;
        let lines: Vec<&Value> = sent.iter().map(|(_, r)| r).collect();
        let mut answers: Vec<Option<Result<Value, String>>> = vec![None; sent.len()];
        if let Err(why) = self.exchange(first, &lines, &mut answers) {
            self.stop();
            for slot in answers.iter_mut().filter(|s| s.is_none()) {
                *slot = Some(Err(why.clone()));
            }
        }
        for ((i, _), a) in sent.iter().zip(answers) {
            out[*i] = a;
        }
        out.into_iter().map(answered).collect()
    }

    /// Sends the requests (ids in place, from `first` on) and fills `out` from the answers; an
    /// error says why the worker must be stopped (the answers already in `out` stand).
    fn exchange(
        &mut self,
        first: u64,
        requests: &[&Value],
        out: &mut [Option<Result<Value, String>>],
    ) -> Result<(), String> {
        let timeout = self.timeout;
        let r = self
            .running
            .as_mut()
            .ok_or("the tool program is not running")?;
        let mut lines = String::new();
        for req in requests {
            lines.push_str(&req.to_string());
            lines.push('\n');
        }
        let Running {
            child,
            stdin,
            stdout,
            pending,
        } = r;
        std::thread::scope(|s| {
            // The requests go in from a thread of their own while the answers are read: a
            // worker answers as it reads, and a batch whose answers fill the pipe before all
            // its requests are written would otherwise wait on itself.
            let writer = s.spawn(move || {
                stdin
                    .write_all(lines.as_bytes())
                    .and_then(|()| stdin.flush())
            });
            let read = read_answers(child, stdout, pending, timeout, first, out);
            if read.is_err() {
                // A writer blocked on a worker that stopped reading ends with the worker.
                let _ = child.kill();
            }
            let wrote = writer
                .join()
                .unwrap_or_else(|_| Err(std::io::Error::other("the writer panicked")));
            match (read, wrote) {
                (Err(e), _) => Err(e),
                (Ok(()), Err(e)) => Err(exited(child, &e.to_string())),
                (Ok(()), Ok(())) => Ok(()),
            }
        })
    }
}

/// Reads answers into `out` (ids `first`…) until every slot is filled; an error says why the
/// worker must be stopped (the answers already in `out` stand).
fn read_answers(
    child: &mut Child,
    stdout: &mut ChildStdout,
    pending: &mut Vec<u8>,
    timeout: Duration,
    first: u64,
    out: &mut [Option<Result<Value, String>>],
) -> Result<(), String> {
    let mut left = out.len();
    while left > 0 {
        let line = read_line(child, stdout, pending, timeout)?;
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
            (Some(v), None) => Ok(v.clone()),
            (None, Some(e)) => Err(text(e.clone())),
            _ => Err("the tool's answer has neither \"result\" nor \"error\"".into()),
        });
        left -= 1;
    }
    Ok(())
}

/// A result or error value as the policy reads it: a JSON string as it is, anything else as
/// JSON text.
fn text(v: Value) -> String {
    match v {
        Value::String(s) => s,
        v => v.to_string(),
    }
}

/// An answer slot: what it holds, or "no answer" when it stayed empty.
fn answered(slot: Option<Result<Value, String>>) -> Result<Value, String> {
    slot.unwrap_or_else(|| Err("no answer".into()))
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
fn read_line(
    child: &mut Child,
    stdout: &mut ChildStdout,
    pending: &mut Vec<u8>,
    timeout: Duration,
) -> Result<String, String> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
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
            fd: stdout.as_raw_fd(),
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
        match stdout.read(&mut buf) {
            Ok(0) => {
                let _ = child.wait();
                return Err(exited(child, "it closed its output"));
            }
            Ok(n) => {
                // `pending` held no newline (a line would have been returned above): the line's
                // length is what it held plus what this read brings up to its first newline.
                let before = pending.len();
                let end = buf[..n].iter().position(|&b| b == b'\n').unwrap_or(n);
                pending.extend_from_slice(&buf[..n]);
                if before + end > MAX_LINE {
                    return Err(format!(
                        "the tool program wrote a line longer than {} MiB",
                        MAX_LINE >> 20
                    ));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(exited(child, &e.to_string())),
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
        // A batch far larger than a pipe's buffer both ways: the answers are read while the
        // requests are still being written.
        let big = json!({"text": "x".repeat(1000)});
        let calls: Vec<(&str, &Value)> = (0..3000).map(|_| ("echo", &big)).collect();
        let got = w.call_batch(&calls);
        assert_eq!(got.len(), 3000);
        assert!(got.iter().all(|g| g.as_ref().map(String::len) == Ok(1000)));
        assert_eq!(w.starts, 1, "one process for every call");
    }

    #[test]
    fn a_crash_a_hang_or_garbage_is_a_tool_error_and_the_worker_restarts() {
        let dir = tempfile::tempdir().unwrap();
        // Generous, so that a loaded machine's slow start or slow pipe is not taken for a hang;
        // the hang below runs under a short one.
        let mut w = worker(dir.path(), 30_000);
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
        let slow = json!({"s": 300});
        w.timeout = Duration::from_millis(1_500);
        let t0 = Instant::now();
        let got = w.call_batch(&[("slow", &slow)]);
        assert!(
            got[0].as_ref().unwrap_err().contains("within 1500 ms"),
            "{got:?}"
        );
        assert!(t0.elapsed() < Duration::from_secs(120));
        w.timeout = Duration::from_millis(30_000);
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

    /// A stateful tool class served by `scripts/pytools.py`: a folder of files per session.
    const FOLDER: &str = r#"
import os

class Folder:
    def __init__(self, owner: str = "nobody"):
        self.owner = owner
        self.files = {}

    def write(self, name: str, text: str = "") -> str:
        """Write a file.

        Args:
            name (str): the file's name.
            text (str): what it holds.
        """
        self.files[name] = text
        return "wrote " + name

    def ls(self) -> list:
        return sorted(self.files)

    def crash(self):
        os._exit(3)
"#;

    fn folder_worker(dir: &std::path::Path) -> ToolWorker {
        let module = dir.join("folder.py");
        std::fs::write(&module, FOLDER).unwrap();
        let server = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/pytools.py");
        let command = [server, &module.display().to_string(), "--class", "Folder"];
        let mut command: Vec<String> = command.iter().map(|s| s.to_string()).collect();
        command.insert(0, "python3".into());
        ToolWorker::new(
            command,
            Duration::from_secs(20),
            Some(dir.join("tools.log")),
        )
    }

    #[test]
    fn sessions_of_one_worker_keep_their_own_state() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = folder_worker(dir.path());
        let names = w
            .open_session("a", &json!({"Folder": {"owner": "ann"}}))
            .unwrap();
        assert_eq!(names, ["crash", "ls", "write"]);
        w.open_session("b", &json!({"Folder": {}})).unwrap();
        assert!(
            w.open_session("b", &json!({"Folder": {}})).is_err(),
            "opened twice"
        );
        let (note, none) = (json!({"name": "x.txt", "text": "hi"}), json!({}));
        // One batch, two episodes: a write in one is not seen by the other.
        let got = w.session_calls(&[
            ("a", "write", &note),
            ("b", "ls", &none),
            ("a", "ls", &none),
        ]);
        assert_eq!(
            got,
            vec![
                Ok("wrote x.txt".to_string()),
                Ok("[]".to_string()),
                Ok(r#"["x.txt"]"#.to_string())
            ]
        );
        assert!(!w.same_state("a", "b").unwrap());
        let (name, args) = w.parse_call("b", "write('x.txt', text='hi')").unwrap();
        assert_eq!(
            (name.as_str(), &args),
            ("write", &json!({"name": "x.txt", "text": "hi"}))
        );
        // The owners differ: the same files are not the same state yet.
        w.session_calls(&[("b", &name, &args)]);
        assert!(!w.same_state("a", "b").unwrap());
        w.open_session("c", &json!({"Folder": {"owner": "ann"}}))
            .unwrap();
        w.session_calls(&[("c", "write", &note)]);
        assert!(w.same_state("a", "c").unwrap());
        assert_eq!(
            w.state("c").unwrap()["Folder"]["files"],
            json!({"x.txt": "hi"})
        );
        // Unknown sessions and tools are tool errors.
        let got = w.session_calls(&[("zz", "ls", &none), ("a", "nope", &none)]);
        assert!(
            got[0].as_ref().unwrap_err().contains("no session"),
            "{got:?}"
        );
        assert!(
            got[1].as_ref().unwrap_err().contains("unknown tool"),
            "{got:?}"
        );
        assert_eq!(w.open_sessions().unwrap(), 3);
        w.close_all().unwrap();
        assert_eq!(w.open_sessions().unwrap(), 0);
        assert_eq!(w.starts, 1);
    }

    #[test]
    fn a_worker_killed_mid_episode_loses_its_sessions_as_tool_errors() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = folder_worker(dir.path());
        let none = json!({});
        w.open_session("a", &json!({"Folder": {}})).unwrap();
        w.open_session("b", &json!({"Folder": {}})).unwrap();
        let got = w.session_calls(&[("a", "crash", &none)]);
        assert!(got[0].as_ref().unwrap_err().contains("exited"), "{got:?}");
        assert_eq!(w.sessions_lost, 2);
        // Both episodes' later calls fail without reaching the new process; a new one works.
        let got = w.session_calls(&[("a", "ls", &none), ("b", "ls", &none)]);
        for g in &got {
            assert!(g.as_ref().unwrap_err().contains("was lost"), "{got:?}");
        }
        w.open_session("c", &json!({"Folder": {}})).unwrap();
        assert_eq!(
            w.session_calls(&[("c", "ls", &none)]),
            vec![Ok("[]".to_string())]
        );
        // Closing the lost ones is not an error, and nothing leaks.
        w.close_session("a").unwrap();
        w.close_session("b").unwrap();
        assert_eq!(w.open_sessions().unwrap(), 1);
        w.close_all().unwrap();
        assert_eq!(w.open_sessions().unwrap(), 0);
        assert_eq!(w.starts, 2);
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
