//! Compact binary messages for transports that leave the process (SPEC §4.3): an actor's batch
//! of trajectories, and weight snapshots cut into chunks. Little-endian, length-prefixed, with a
//! magic word and a format version in front; anything short, long or unknown is an error naming
//! what is wrong, never a panic, so a learner can count and skip a message that does not decode.
//!
//! ```text
//! batch:  "ASYB" u16 version | u32 actor | u32 n | n × trajectory
//! trajectory: prompt (u32 session, u32 actor, u32 restart, u64 message, u32 slot)
//!             u32 len, len × u32 actions | f32 reward, f32 log μ, f32 group mean, f32 group std
//!             u8 has V^μ [f32 V^μ] | u64 policy version
//!             u32 mask bits, ⌈bits/8⌉ bytes | u32 k, k × f32 token log μ
//!             u8 has stats [f64 × 5 (reward, completion, precision, recall, F1), u32 format
//!             errors, u32 calls, u32 length]
//! snapshot: "ASYW" u16 version | u64 version | u32 n | n × (u16 name length, name,
//!           u8 rank, rank × u64 dims, u64 values, values × f32)
//! ```
use crate::env::tool_use::reward::Score;
use crate::ids::{PromptId, SourceId};
use crate::policy::{NamedTensor, WeightSnapshot};
use crate::trajectory::{ActorBatch, EpisodeStats, Trajectory};

const BATCH_MAGIC: &[u8; 4] = b"ASYB";
const SNAPSHOT_MAGIC: &[u8; 4] = b"ASYW";
const FORMAT: u16 = 1;

/// Why a message did not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DecodeError(pub String);

type Decoded<T> = std::result::Result<T, DecodeError>;

/// A reader over a message's bytes.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Decoded<&'a [u8]> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len());
        let Some(end) = end else {
            return Err(DecodeError(format!(
                "truncated at byte {} reading {what}",
                self.at
            )));
        };
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Decoded<[u8; N]> {
        Ok(self.take(N, what)?.try_into().expect("took N bytes"))
    }

    fn u8(&mut self, what: &str) -> Decoded<u8> {
        Ok(self.array::<1>(what)?[0])
    }
    fn u16(&mut self, what: &str) -> Decoded<u16> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }
    fn u32(&mut self, what: &str) -> Decoded<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }
    fn u64(&mut self, what: &str) -> Decoded<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }
    fn f32(&mut self, what: &str) -> Decoded<f32> {
        Ok(f32::from_le_bytes(self.array(what)?))
    }
    fn f64(&mut self, what: &str) -> Decoded<f64> {
        Ok(f64::from_le_bytes(self.array(what)?))
    }

    /// `n` little-endian 4-byte values, in one bounds check.
    fn words<T>(&mut self, n: usize, what: &str, read: fn([u8; 4]) -> T) -> Decoded<Vec<T>> {
        let raw = self.take(n.saturating_mul(4), what)?;
        Ok(raw
            .chunks_exact(4)
            .map(|b| read(b.try_into().expect("4 bytes")))
            .collect())
    }

    fn flag(&mut self, what: &str) -> Decoded<bool> {
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(DecodeError(format!("{what}: flag byte {b}"))),
        }
    }

    /// A count of items of at least `item_bytes` each, checked against what is left, so a
    /// corrupt count cannot make the reader allocate more than the message holds.
    fn count(&mut self, item_bytes: usize, what: &str) -> Decoded<usize> {
        let n = self.u32(what)? as usize;
        let left = self.bytes.len() - self.at;
        if n.saturating_mul(item_bytes.max(1)) > left {
            return Err(DecodeError(format!(
                "{what}: {n} items do not fit in the {left} bytes left"
            )));
        }
        Ok(n)
    }

    fn header(&mut self, magic: &[u8; 4], what: &str) -> Decoded<()> {
        if self.take(4, "the magic word")? != magic {
            return Err(DecodeError(format!("not {what} (wrong magic word)")));
        }
        match self.u16("the format version")? {
            FORMAT => Ok(()),
            v => Err(DecodeError(format!(
                "{what} in format {v}; this build reads format {FORMAT}"
            ))),
        }
    }

    fn end(&self) -> Decoded<()> {
        match self.bytes.len() - self.at {
            0 => Ok(()),
            n => Err(DecodeError(format!(
                "{n} bytes after the end of the message"
            ))),
        }
    }
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}
fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}
fn put_f32(out: &mut Vec<u8>, v: f32) {
    out.extend_from_slice(&v.to_le_bytes());
}
fn put_f64(out: &mut Vec<u8>, v: f64) {
    out.extend_from_slice(&v.to_le_bytes());
}
fn put_len(out: &mut Vec<u8>, n: usize) {
    put_u32(
        out,
        u32::try_from(n).expect("a message field over 4 G items"),
    );
}

/// An actor's batch as bytes.
pub fn encode_batch(batch: &ActorBatch) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + batch.trajectories.len() * 64);
    out.extend_from_slice(BATCH_MAGIC);
    out.extend_from_slice(&FORMAT.to_le_bytes());
    put_len(&mut out, batch.actor);
    put_len(&mut out, batch.trajectories.len());
    for t in &batch.trajectories {
        let p = &t.prompt;
        put_u32(&mut out, p.source.session);
        put_u32(&mut out, p.source.actor);
        put_u32(&mut out, p.source.restart);
        put_u64(&mut out, p.message);
        put_u32(&mut out, p.slot);
        put_len(&mut out, t.actions.len());
        for &a in t.actions.iter() {
            put_u32(&mut out, a);
        }
        for v in [t.reward, t.behaviour_logp, t.group_mean, t.group_std] {
            put_f32(&mut out, v);
        }
        match t.behaviour_value {
            Some(v) => {
                out.push(1);
                put_f32(&mut out, v);
            }
            None => out.push(0),
        }
        put_u64(&mut out, t.policy_version);
        put_len(&mut out, t.policy_mask.len());
        for chunk in t.policy_mask.chunks(8) {
            out.push(
                chunk
                    .iter()
                    .enumerate()
                    .fold(0u8, |b, (i, &m)| b | (m as u8) << i),
            );
        }
        put_len(&mut out, t.behaviour_token_logp.len());
        for &v in &t.behaviour_token_logp {
            put_f32(&mut out, v);
        }
        match &t.stats {
            Some(s) => {
                out.push(1);
                let sc = &s.score;
                for v in [sc.reward, sc.completion, sc.precision, sc.recall, sc.f1] {
                    put_f64(&mut out, v);
                }
                put_u32(&mut out, sc.format_errors);
                put_len(&mut out, sc.calls);
                put_u32(&mut out, s.length);
            }
            None => out.push(0),
        }
    }
    out
}

/// Reads a batch written by [`encode_batch`].
pub fn decode_batch(bytes: &[u8]) -> Decoded<ActorBatch> {
    let mut r = Reader { bytes, at: 0 };
    r.header(BATCH_MAGIC, "a batch of trajectories")?;
    let actor = r.u32("the actor id")? as usize;
    let n = r.count(40, "the trajectory count")?;
    let mut trajectories = Vec::with_capacity(n);
    for _ in 0..n {
        let source = SourceId::new(
            r.u32("the session")?,
            r.u32("the source actor")?,
            r.u32("the restart")?,
        );
        let prompt = PromptId {
            source,
            message: r.u64("the message number")?,
            slot: r.u32("the slot")?,
        };
        let len = r.count(4, "the action count")?;
        let actions = r.words(len, "the actions", u32::from_le_bytes)?;
        let reward = r.f32("the reward")?;
        let behaviour_logp = r.f32("log μ")?;
        let group_mean = r.f32("the group mean")?;
        let group_std = r.f32("the group std")?;
        let behaviour_value = match r.flag("the V^μ flag")? {
            true => Some(r.f32("V^μ")?),
            false => None,
        };
        let policy_version = r.u64("the policy version")?;
        let bits = r.u32("the mask length")? as usize;
        let bytes = r.take(bits.div_ceil(8), "the mask")?;
        let policy_mask = (0..bits)
            .map(|i| bytes[i / 8] >> (i % 8) & 1 == 1)
            .collect();
        let k = r.count(4, "the token log μ count")?;
        let behaviour_token_logp = r.words(k, "the token log μ", f32::from_le_bytes)?;
        let stats = match r.flag("the stats flag")? {
            true => {
                let score = Score {
                    reward: r.f64("the score's reward")?,
                    completion: r.f64("the completion")?,
                    precision: r.f64("the precision")?,
                    recall: r.f64("the recall")?,
                    f1: r.f64("the F1")?,
                    format_errors: r.u32("the format errors")?,
                    calls: r.u32("the calls")? as usize,
                };
                let length = r.u32("the length")?;
                Some(Box::new(EpisodeStats { score, length }))
            }
            false => None,
        };
        trajectories.push(Trajectory {
            prompt,
            actions: actions.into(),
            reward,
            behaviour_logp,
            group_mean,
            behaviour_value,
            policy_version,
            policy_mask,
            behaviour_token_logp,
            group_std,
            stats,
        });
    }
    r.end()?;
    Ok(ActorBatch {
        actor,
        trajectories,
    })
}

/// A weight snapshot as bytes.
pub fn encode_snapshot(snap: &WeightSnapshot) -> Vec<u8> {
    let values: usize = snap.tensors.iter().map(|t| t.data.len()).sum();
    let mut out = Vec::with_capacity(16 + values * 4 + snap.tensors.len() * 64);
    out.extend_from_slice(SNAPSHOT_MAGIC);
    out.extend_from_slice(&FORMAT.to_le_bytes());
    put_u64(&mut out, snap.version);
    put_len(&mut out, snap.tensors.len());
    for t in snap.tensors.iter() {
        let name = t.name.as_bytes();
        out.extend_from_slice(
            &u16::try_from(name.len())
                .expect("a tensor name over 64 KiB")
                .to_le_bytes(),
        );
        out.extend_from_slice(name);
        out.push(u8::try_from(t.shape.len()).expect("a tensor of rank over 255"));
        for &d in &t.shape {
            put_u64(&mut out, d as u64);
        }
        put_u64(&mut out, t.data.len() as u64);
        for &v in &t.data {
            put_f32(&mut out, v);
        }
    }
    out
}

/// Reads a snapshot written by [`encode_snapshot`].
pub fn decode_snapshot(bytes: &[u8]) -> Decoded<WeightSnapshot> {
    let mut r = Reader { bytes, at: 0 };
    r.header(SNAPSHOT_MAGIC, "a weight snapshot")?;
    let version = r.u64("the version")?;
    let n = r.count(12, "the tensor count")?;
    let mut tensors = Vec::with_capacity(n);
    for _ in 0..n {
        let len = r.u16("a name length")? as usize;
        let name = std::str::from_utf8(r.take(len, "a tensor name")?)
            .map_err(|_| DecodeError("a tensor name is not UTF-8".into()))?
            .to_string();
        let rank = r.u8("a rank")? as usize;
        let shape = (0..rank)
            .map(|_| r.u64("a dimension").map(|d| d as usize))
            .collect::<Decoded<Vec<usize>>>()?;
        let count = r.u64("a value count")? as usize;
        if shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)) != Some(count) {
            return Err(DecodeError(format!(
                "{name}: {count} values for shape {shape:?}"
            )));
        }
        let data = r.words(count, "a tensor's values", f32::from_le_bytes)?;
        tensors.push(NamedTensor { name, shape, data });
    }
    r.end()?;
    Ok(WeightSnapshot {
        version,
        tensors: tensors.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn trajectory(len: usize, seed: u32, stats: bool) -> Trajectory {
        let mut t = Trajectory::synthetic(
            SourceId::new(seed, seed.wrapping_mul(7), 3).prompt(seed as u64 * 11, seed % 5),
            (0..len as u32).map(|i| i * 31 + seed).collect(),
            len / 3,
            -0.25 - seed as f32,
            seed as f32 * 0.5 - 1.0,
        );
        t.policy_version = 1 << 40 | seed as u64;
        t.group_mean = 0.125;
        t.behaviour_value = seed.is_multiple_of(2).then_some(0.75);
        if stats {
            t.stats = Some(Box::new(EpisodeStats {
                score: Score {
                    reward: 1.5,
                    completion: 1.0,
                    precision: 0.5,
                    recall: 0.25,
                    f1: 1.0 / 3.0,
                    format_errors: 2,
                    calls: 3,
                },
                length: len as u32,
            }));
        }
        t
    }

    proptest! {
        /// Any batch reads back equal, bit for bit, including every mask length.
        #[test]
        fn batches_round_trip(lens in proptest::collection::vec(0usize..40, 0..6), actor in 0usize..1000) {
            let batch = ActorBatch {
                actor,
                trajectories: lens
                    .iter()
                    .enumerate()
                    .map(|(i, &len)| trajectory(len, i as u32, i % 2 == 1))
                    .collect(),
            };
            let back = decode_batch(&encode_batch(&batch)).unwrap();
            prop_assert_eq!(back.actor, batch.actor);
            prop_assert_eq!(back.trajectories, batch.trajectories);
        }

        /// Bytes from a Redis stream anyone can write to: random ones, and random ones after a
        /// real header, decode to an error or a batch, never a panic or a huge allocation.
        #[test]
        fn prop_random_messages_never_panic(
            tail in proptest::collection::vec(any::<u8>(), 0..300),
            real_header in any::<bool>(),
        ) {
            let mut bytes = if real_header {
                encode_batch(&ActorBatch { actor: 1, trajectories: vec![trajectory(3, 0, true)] })[..10].to_vec()
            } else {
                Vec::new()
            };
            bytes.extend(&tail);
            let _ = decode_batch(&bytes);
            let _ = decode_snapshot(&bytes);
        }
    }

    #[test]
    fn a_bandit_sample_is_small() {
        let mut t = trajectory(1, 2, false);
        t.policy_mask.clear();
        t.behaviour_token_logp.clear();
        let bytes = encode_batch(&ActorBatch {
            actor: 0,
            trajectories: vec![t; 100],
        });
        assert!(bytes.len() <= 10 + 100 * 72, "{} bytes", bytes.len());
    }

    #[test]
    fn damaged_messages_are_errors_not_panics() {
        let batch = ActorBatch {
            actor: 4,
            trajectories: vec![trajectory(9, 1, true), trajectory(3, 2, false)],
        };
        let bytes = encode_batch(&batch);
        // Every truncation, and every single-byte change, either errors or decodes; never panics.
        for cut in 0..bytes.len() {
            assert!(decode_batch(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0xa5;
            let _ = decode_batch(&b);
        }
        let mut long = bytes.clone();
        long.push(0);
        assert!(decode_batch(&long).unwrap_err().0.contains("after the end"));
        assert!(decode_batch(b"ASYW\x01\x00")
            .unwrap_err()
            .0
            .contains("magic"));
        let mut future = bytes.clone();
        future[4] = 9;
        assert!(decode_batch(&future).unwrap_err().0.contains("format 9"));
        // A huge count is refused before anything is allocated.
        let mut huge = bytes[..10].to_vec();
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode_batch(&huge).unwrap_err().0.contains("do not fit"));
    }

    #[test]
    fn snapshots_round_trip_and_check_their_shapes() {
        let snap = WeightSnapshot {
            version: 12,
            tensors: vec![
                NamedTensor {
                    name: "blocks.0.q".into(),
                    shape: vec![2, 3],
                    data: vec![1.0, -2.0, 3.5, f32::MIN_POSITIVE, 0.0, -0.0],
                },
                NamedTensor {
                    name: "scalar".into(),
                    shape: vec![],
                    data: vec![7.0],
                },
            ]
            .into(),
        };
        let bytes = encode_snapshot(&snap);
        let back = decode_snapshot(&bytes).unwrap();
        assert_eq!(back.version, 12);
        assert_eq!(back.tensors.len(), 2);
        for (a, b) in back.tensors.iter().zip(snap.tensors.iter()) {
            assert_eq!((&a.name, &a.shape), (&b.name, &b.shape));
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&a.data), bits(&b.data));
        }
        for cut in 0..bytes.len() {
            assert!(decode_snapshot(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        // A shape that does not match its values.
        let mut bad = bytes.clone();
        let dim = 4 + 2 + 8 + 4 + 2 + "blocks.0.q".len() + 1;
        bad[dim] = 5;
        assert!(decode_snapshot(&bad)
            .unwrap_err()
            .0
            .contains("values for shape"));
    }
}
