//! The run's weights in Redis (chunked, versioned, the newest few kept) or in a shared directory.
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::super::codec::{decode_snapshot, encode_snapshot};
use super::super::WeightBoard;
use super::{lock, Link, RunKeys, NOTIFICATIONS_KEPT};
use crate::error::{Error, Result};
use crate::policy::WeightSnapshot;

/// The weights, chunked under versioned keys.
pub struct RedisBoard {
    link: Mutex<Link>,
    keys: RunKeys,
    chunk_bytes: usize,
    keep: usize,
    /// Versions this board published, oldest first (the learner's side deletes from it).
    published: Mutex<VecDeque<(u64, usize)>>,
    /// The last snapshot read (actors' side), so an unchanged version is not read again.
    cache: Mutex<Option<Arc<WeightSnapshot>>>,
    /// Weights as files in this shared directory instead of Redis values.
    dir: Option<std::path::PathBuf>,
    /// The newest snapshot this board published (the learner's side), to publish again into a
    /// Redis that restarted empty.
    last: Mutex<Option<WeightSnapshot>>,
}

impl RedisBoard {
    pub fn new(link: Link, keys: RunKeys, chunk_bytes: usize, keep: usize) -> Self {
        RedisBoard {
            link: Mutex::new(link),
            keys,
            chunk_bytes: chunk_bytes.max(1),
            keep: keep.max(1),
            published: Mutex::new(VecDeque::new()),
            cache: Mutex::new(None),
            dir: None,
            last: Mutex::new(None),
        }
    }

    /// Weights as one file per version in `dir` (a filesystem every host mounts); Redis carries
    /// only the version number.
    pub fn in_dir(mut self, dir: Option<std::path::PathBuf>) -> Self {
        self.dir = dir;
        self
    }

    /// Writes version `v` into the shared directory: a temporary file, then a rename.
    fn write_file(&self, dir: &std::path::Path, v: u64, body: &[u8]) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let path = dir.join(self.keys.weights_file(v));
        let tmp = dir.join(format!(".{}.tmp", self.keys.weights_file(v)));
        std::fs::write(&tmp, body).map_err(|e| Error::io(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))
    }

    /// Writes `snapshot` and deletes the versions past `keep`.
    pub fn try_publish(&self, snapshot: &WeightSnapshot) -> Result<()> {
        let body = encode_snapshot(snapshot);
        let v = snapshot.version;
        let chunks: Vec<&[u8]> = match &self.dir {
            Some(dir) => {
                self.write_file(dir, v, &body)?;
                Vec::new()
            }
            None => body.chunks(self.chunk_bytes).collect(),
        };
        let mut link = lock(&self.link);
        for (i, chunk) in chunks.iter().enumerate() {
            let key = self.keys.chunk(v, i);
            link.run(|c| redis::cmd("SET").arg(&key).arg(*chunk).query::<()>(c))?;
        }
        let (count_key, latest, versions) = (
            self.keys.chunks(v),
            self.keys.latest(),
            self.keys.versions(),
        );
        link.run(|c| {
            redis::pipe()
                .cmd("SET")
                .arg(&count_key)
                .arg(chunks.len())
                .ignore()
                .cmd("SET")
                .arg(&latest)
                .arg(v)
                .ignore()
                .cmd("XADD")
                .arg(&versions)
                .arg("MAXLEN")
                .arg("~")
                .arg(NOTIFICATIONS_KEPT)
                .arg("*")
                .arg("v")
                .arg(v)
                .ignore()
                .query::<()>(c)
        })?;
        let mut published = lock(&self.published);
        published.retain(|&(old, _)| old != v);
        published.push_back((v, chunks.len()));
        while published.len() > self.keep {
            let (old, n) = published.pop_front().expect("longer than keep");
            if let Some(dir) = &self.dir {
                let _ = std::fs::remove_file(dir.join(self.keys.weights_file(old)));
            }
            let mut doomed: Vec<String> = (0..n).map(|i| self.keys.chunk(old, i)).collect();
            doomed.push(self.keys.chunks(old));
            link.run(|c| redis::cmd("DEL").arg(&doomed).query::<()>(c))?;
        }
        Ok(())
    }

    /// The newest complete version's number, if any was published.
    pub fn try_version(&self) -> Result<Option<u64>> {
        let latest = self.keys.latest();
        lock(&self.link).run(|c| redis::cmd("GET").arg(&latest).query::<Option<u64>>(c))
    }

    /// The newest snapshot (read again only when its version changed).
    pub fn try_latest(&self) -> Result<Option<Arc<WeightSnapshot>>> {
        for _ in 0..10 {
            let Some(v) = self.try_version()? else {
                return Ok(None);
            };
            if let Some(snap) = lock(&self.cache).as_ref().filter(|s| s.version == v) {
                return Ok(Some(snap.clone()));
            }
            if let Some(dir) = &self.dir {
                let Ok(body) = std::fs::read(dir.join(self.keys.weights_file(v))) else {
                    continue; // deleted meanwhile: read the newer one
                };
                let snap = decode_snapshot(&body)
                    .map_err(|e| Error::Corrupt(format!("weights version {v}: {e}")))?;
                let snap = Arc::new(snap);
                *lock(&self.cache) = Some(snap.clone());
                return Ok(Some(snap));
            }
            let count_key = self.keys.chunks(v);
            let n: Option<usize> =
                lock(&self.link).run(|c| redis::cmd("GET").arg(&count_key).query(c))?;
            let Some(n) = n else { continue }; // deleted meanwhile: read the newer one
            let keys: Vec<String> = (0..n).map(|i| self.keys.chunk(v, i)).collect();
            let parts: Vec<Option<Vec<u8>>> = lock(&self.link).run(|c| {
                let mut p = redis::pipe();
                for k in &keys {
                    p.cmd("GET").arg(k);
                }
                p.query(c)
            })?;
            let Some(parts) = parts.into_iter().collect::<Option<Vec<_>>>() else {
                continue;
            };
            let snap = decode_snapshot(&parts.concat())
                .map_err(|e| Error::Corrupt(format!("weights version {v}: {e}")))?;
            let snap = Arc::new(snap);
            *lock(&self.cache) = Some(snap.clone());
            return Ok(Some(snap));
        }
        Err(Error::Corrupt(
            "the weights kept changing while being read".into(),
        ))
    }

    /// Publishes the newest snapshot again (after a Redis restart lost it). The shared
    /// directory's file, if any, is written again too.
    pub fn republish(&self) -> Result<()> {
        let last = lock(&self.last);
        let Some(snapshot) = last.as_ref() else {
            return Ok(());
        };
        self.try_publish(snapshot)
    }
}

impl WeightBoard for RedisBoard {
    fn publish(&self, snapshot: WeightSnapshot) {
        if let Err(e) = self.try_publish(&snapshot) {
            eprintln!("publishing weights version {}: {e}", snapshot.version);
        }
        *lock(&self.last) = Some(snapshot);
    }

    fn version(&self) -> u64 {
        self.try_version().ok().flatten().unwrap_or(0)
    }

    fn latest(&self) -> Arc<WeightSnapshot> {
        loop {
            match self.try_latest() {
                Ok(Some(s)) => return s,
                Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                Err(e) => {
                    eprintln!("reading weights: {e}");
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
    }
}
