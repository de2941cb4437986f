//! Stop, failure and the learner's position (the actors' pacing) shared by every process of a run.
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::Duration;

use redis::Value;

use super::super::RunControl;
use super::{lock, text, Link, RunKeys, NOTIFICATIONS_KEPT};
use crate::error::{Error, Result};

/// Stop, failure and pacing shared through Redis by the learner and every actor process.
pub struct RedisControl {
    link: Mutex<Link>,
    keys: RunKeys,
    max_lag: u64,
    per_step: f64,
    /// Seen stopped (it never un-stops).
    stopped: std::sync::atomic::AtomicBool,
    /// The learner's side: its last `(step, needed)`, to write again after a Redis restart.
    position: Mutex<(u64, u64)>,
    /// The connection a paced actor blocks on (made on first use, so that blocking never holds
    /// up the others' calls on `link`).
    waiter: Mutex<Option<Link>>,
}

/// `XADD` of a notification to the run's `steps` stream into `p`.
fn notify(p: &mut redis::Pipeline, keys: &RunKeys, what: &str) {
    p.cmd("XADD")
        .arg(keys.steps())
        .arg("MAXLEN")
        .arg("~")
        .arg(NOTIFICATIONS_KEPT)
        .arg("*")
        .arg("e")
        .arg(what)
        .ignore();
}

impl RedisControl {
    pub fn new(link: Link, keys: RunKeys, max_lag: u64, per_step: f64) -> Self {
        RedisControl {
            link: Mutex::new(link),
            keys,
            max_lag,
            per_step,
            stopped: Default::default(),
            position: Mutex::new((0, 0)),
            waiter: Mutex::new(None),
        }
    }

    /// The learner's start: a fresh run state at `step`, `inserted` arrivals so far, `needed`
    /// for the next step.
    pub fn start_learner(&self, step: u64, inserted: u64, needed: u64) -> Result<()> {
        self.write_position(step, needed, Some(inserted), true, "start")
    }

    /// Writes the learner's position again into a Redis that restarted empty. The claims actors
    /// had in flight are lost with it: admission starts again from what the step needs, and the
    /// learner still drops anything that arrives too stale.
    pub fn restore_learner(&self) -> Result<()> {
        let (step, needed) = *lock(&self.position);
        self.write_position(step, needed, Some(needed), false, "restore")
    }

    /// The learner's side, in one round trip: its position `(step, needed)` (also kept here),
    /// the claim counter set to `claimed` when given, the stop flag and failure cleared when
    /// `fresh` (a new learner), and a `what` notification for paced actors.
    fn write_position(
        &self,
        step: u64,
        needed: u64,
        claimed: Option<u64>,
        fresh: bool,
        what: &str,
    ) -> Result<()> {
        *lock(&self.position) = (step, needed);
        let k = &self.keys;
        lock(&self.link).run(|c| {
            let mut p = redis::pipe();
            if fresh {
                p.cmd("DEL").arg(k.stop()).arg(k.failure()).ignore();
            }
            p.cmd("HSET")
                .arg(k.learner())
                .arg("step")
                .arg(step)
                .arg("needed")
                .arg(needed)
                .ignore();
            if let Some(n) = claimed {
                p.cmd("SET").arg(k.claimed()).arg(n).ignore();
            }
            notify(&mut p, k, what);
            p.query::<()>(c)
        })
    }

    fn learner_position(&self) -> Result<(u64, u64)> {
        let learner = self.keys.learner();
        let (step, needed): (Option<u64>, Option<u64>) = lock(&self.link).run(|c| {
            redis::cmd("HMGET")
                .arg(&learner)
                .arg("step")
                .arg("needed")
                .query(c)
        })?;
        Ok((step.unwrap_or(0), needed.unwrap_or(0)))
    }
}

impl RunControl for RedisControl {
    fn stop(&self) {
        self.stopped.store(true, Ordering::Relaxed);
        let stop = self.keys.stop();
        if let Err(e) = lock(&self.link).run(|c| {
            let mut p = redis::pipe();
            p.cmd("SET").arg(&stop).arg(1).ignore();
            notify(&mut p, &self.keys, "stop");
            p.query::<()>(c)
        }) {
            eprintln!("{e}");
        }
    }

    fn stopped(&self) -> bool {
        if self.stopped.load(Ordering::Relaxed) {
            return true;
        }
        let stop = self.keys.stop();
        let now = lock(&self.link)
            .run(|c| redis::cmd("EXISTS").arg(&stop).query::<bool>(c))
            .unwrap_or(true);
        if now {
            self.stopped.store(true, Ordering::Relaxed);
        }
        now
    }

    fn fail(&self, error: Error) {
        let failure = self.keys.failure();
        let message = error.to_string();
        let _ = lock(&self.link).run(|c| {
            redis::cmd("SET")
                .arg(&failure)
                .arg(&message)
                .arg("NX")
                .query::<()>(c)
        });
        self.stop();
    }

    fn take_failure(&self) -> Option<Error> {
        let failure = self.keys.failure();
        let message: Option<String> = lock(&self.link)
            .run(|c| redis::cmd("GETDEL").arg(&failure).query(c))
            .ok()
            .flatten();
        message.map(Error::Corrupt)
    }

    fn learner_advanced(&self, step: u64, needed: u64) {
        if let Err(e) = self.write_position(step, needed, None, false, "step") {
            eprintln!("{e}");
        }
    }

    fn try_claim(&self, version: u64, n: u64) -> bool {
        if self.max_lag == 0 {
            return true;
        }
        let Ok((step, needed)) = self.learner_position() else {
            return false;
        };
        let limit =
            super::super::admission_limit(needed, step, self.per_step, version, self.max_lag);
        let claimed = self.keys.claimed();
        let mut link = lock(&self.link);
        let Ok(after) = link.run(|c| redis::cmd("INCRBY").arg(&claimed).arg(n).query::<u64>(c))
        else {
            return false;
        };
        let before = after - n;
        if after <= limit || before < needed {
            return true;
        }
        let _ = link.run(|c| redis::cmd("DECRBY").arg(&claimed).arg(n).query::<()>(c));
        false
    }

    /// Blocks on the run's `steps` stream (`XREAD BLOCK`) until the learner steps or stops,
    /// or `timeout` passes: no polling.
    fn wait_for_learner(&self, timeout: Duration) {
        if self.stopped.load(Ordering::Relaxed) {
            return;
        }
        let mut waiter = lock(&self.waiter);
        if waiter.is_none() {
            *waiter = lock(&self.link).another().ok();
        }
        let Some(link) = waiter.as_mut() else {
            std::thread::sleep(timeout.min(Duration::from_millis(10)));
            return;
        };
        let steps = self.keys.steps();
        let ms = timeout.as_millis().max(1) as u64;
        let waited = link.run(|c| {
            // The newest notification, then wait for one after it.
            let last: Value = redis::cmd("XREVRANGE")
                .arg(&steps)
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(1)
                .query(c)?;
            let id = match &last {
                Value::Array(entries) => match entries.first() {
                    Some(Value::Array(entry)) => entry.first().map(text),
                    _ => None,
                },
                _ => None,
            }
            .unwrap_or_else(|| "0-0".into());
            redis::cmd("XREAD")
                .arg("COUNT")
                .arg(1)
                .arg("BLOCK")
                .arg(ms)
                .arg("STREAMS")
                .arg(&steps)
                .arg(&id)
                .query::<Value>(c)
        });
        if waited.is_err() {
            std::thread::sleep(timeout.min(Duration::from_millis(10)));
        }
    }
}
