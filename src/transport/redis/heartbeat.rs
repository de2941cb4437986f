//! Actor processes' heartbeats: a key per actor that expires unless refreshed, so the learner
//! sees who joined, who left and who was lost.
use std::time::Duration;

use super::{Link, RunKeys};
use crate::error::Result;

/// How long a heartbeat lives: an actor process silent for this long is lost.
pub const HEARTBEAT_TTL: Duration = Duration::from_secs(10);

/// Refreshes the heartbeats of `ids` (named `names`) every second until `done`, then deletes
/// them: a clean leave.
pub fn heartbeat(
    link: &mut Link,
    keys: &RunKeys,
    actors: &[(usize, String)],
    done: &dyn Fn() -> bool,
) -> Result<()> {
    let ttl = HEARTBEAT_TTL.as_secs();
    while !done() {
        link.run(|c| {
            let mut p = redis::pipe();
            for (id, name) in actors {
                p.cmd("SET")
                    .arg(keys.alive(*id))
                    .arg(name)
                    .arg("EX")
                    .arg(ttl)
                    .ignore();
            }
            p.query::<()>(c)
        })?;
        sleep_unless(done, Duration::from_secs(1));
    }
    let doomed: Vec<String> = actors.iter().map(|(id, _)| keys.alive(*id)).collect();
    link.run(|c| redis::cmd("DEL").arg(&doomed).query::<()>(c))
}

/// Sleeps for `total` in tenths, waking early once `done`.
pub fn sleep_unless(done: &dyn Fn() -> bool, total: Duration) {
    for _ in 0..10 {
        if done() {
            return;
        }
        std::thread::sleep(total / 10);
    }
}

/// The actors whose heartbeat is alive: id → sender's name.
pub fn alive(link: &mut Link, keys: &RunKeys) -> Result<std::collections::BTreeMap<usize, String>> {
    let pattern = keys.alive_pattern();
    let found: Vec<String> = link.run(|c| {
        let mut out = Vec::new();
        let mut cursor = 0u64;
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query(c)?;
            out.extend(batch);
            if next == 0 {
                return Ok(out);
            }
            cursor = next;
        }
    })?;
    if found.is_empty() {
        return Ok(Default::default());
    }
    // Their names in one round trip (a key that expired since the scan reads as none).
    let names: Vec<Option<String>> = link.run(|c| redis::cmd("MGET").arg(&found).query(c))?;
    Ok(found
        .iter()
        .zip(names)
        .filter_map(|(key, name)| {
            let id = key.rsplit(':').next()?.parse().ok()?;
            Some((id, name?))
        })
        .collect())
}
