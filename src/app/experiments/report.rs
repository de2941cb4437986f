//! Reading a sweep: what it was asked to do (`sweep.json`: the grid, seeds and overrides), where
//! its runs live, what each finished run's metrics say, and the reports written from them
//! (`summary.csv`, `table.txt`). The sweep writes these; the plots read them.
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};
use crate::store::metrics::{read_jsonl, tags};

/// One `--grid key=v1,v2,…` axis.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Axis {
    pub key: String,
    pub values: Vec<String>,
}

impl std::str::FromStr for Axis {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = |why: &str| Error::input(format!("--grid {s}: {why} (expected KEY=V1,V2,…)"));
        let (key, list) = s.split_once('=').ok_or_else(|| bad("no '='"))?;
        let key = key.trim();
        if key.is_empty() || key == "seed" {
            return Err(bad("needs a config key other than seed (use --seeds)"));
        }
        let values: Vec<String> = list.split(',').map(|v| v.trim().to_string()).collect();
        if values.iter().any(|v| v.is_empty()) {
            return Err(bad("empty value"));
        }
        if values.iter().any(|v| v.contains('/') || v.contains("__")) {
            return Err(bad("values may not contain '/' or '__'"));
        }
        Ok(Axis {
            key: key.to_string(),
            values,
        })
    }
}

/// What `asymre sweep` was asked to do; stored as `sweep.json` so a restart can check it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub grid: Vec<Axis>,
    pub seeds: Vec<u64>,
    /// `--set` overrides applied to every point.
    pub overrides: Vec<String>,
    pub serial: bool,
}

/// One run of the sweep: grid values and a seed.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub values: Vec<(String, String)>,
    pub seed: u64,
}

impl Point {
    /// The run directory's name: `key=value__…__seed=N`.
    pub fn name(&self) -> String {
        let mut parts: Vec<String> = self
            .values
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        parts.push(format!("seed={}", self.seed));
        parts.join("__")
    }

    /// The `--set` overrides that make this point.
    pub fn overrides(&self) -> Vec<String> {
        let mut o: Vec<String> = self
            .values
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        o.push(format!("seed={}", self.seed));
        o
    }
}

impl Manifest {
    /// Every grid combination × every seed, in grid order (the last axis varies fastest).
    pub fn points(&self) -> Vec<Point> {
        let mut combos: Vec<Vec<(String, String)>> = vec![Vec::new()];
        for axis in &self.grid {
            combos = combos
                .into_iter()
                .flat_map(|c| {
                    axis.values.iter().map(move |v| {
                        let mut c = c.clone();
                        c.push((axis.key.clone(), v.clone()));
                        c
                    })
                })
                .collect();
        }
        combos
            .into_iter()
            .flat_map(|values| {
                self.seeds.iter().map(move |&seed| Point {
                    values: values.clone(),
                    seed,
                })
            })
            .collect()
    }
}

pub fn base_config_path(out: &Path) -> PathBuf {
    out.join("base.toml")
}

/// The run directories live under `<sweep>/runs/`.
pub fn run_dir(out: &Path, point: &Point) -> PathBuf {
    out.join("runs").join(point.name())
}

/// Reads `sweep.json` and `base.toml` of a sweep directory.
pub fn open(out: &Path) -> Result<(Manifest, String)> {
    let path = out.join("sweep.json");
    let text = std::fs::read_to_string(&path).map_err(|_| {
        Error::input(format!(
            "{}: not a sweep directory (no sweep.json)",
            out.display()
        ))
    })?;
    let manifest: Manifest = serde_json::from_str(&text)
        .map_err(|e| Error::Corrupt(format!("{}: {e}", path.display())))?;
    let base = std::fs::read_to_string(base_config_path(out)).at(base_config_path(out))?;
    Ok((manifest, base))
}

/// What a finished run's metrics say, for the sweep tables.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRow {
    pub point: Point,
    pub final_reward: f64,
    pub best_reward: f64,
    /// Tool use: held-out greedy completion at the end and at its best evaluation.
    pub final_completion: Option<f64>,
    pub best_completion: Option<f64>,
    /// Tool use: greedy completion on train-split items at the end (recall of what was taught).
    pub final_train_completion: Option<f64>,
    pub final_entropy: f64,
    /// Bandit: arms with π > 1e-3 at the end, and the theory's limit from the last round's μ.
    pub support: Option<f64>,
    pub predicted_support: Option<f64>,
    pub predicted_reward: Option<f64>,
    pub collapsed: bool,
    pub wall_time: f64,
}

fn moving_average(values: &[f64], window: usize) -> Vec<f64> {
    let w = window.max(1);
    (0..values.len())
        .map(|i| {
            let lo = (i + 1).saturating_sub(w);
            values[lo..=i].iter().sum::<f64>() / (i + 1 - lo) as f64
        })
        .collect()
}

/// Reads one finished run directory into a [`RunRow`].
pub fn read_run(dir: &Path, point: Point) -> Result<RunRow> {
    let (cfg, _) = crate::run::open_run_dir(dir)?;
    let summary_path = dir.join("summary.json");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&summary_path).at(&summary_path)?)
            .map_err(|e| Error::Corrupt(format!("{}: {e}", summary_path.display())))?;
    let rows = read_jsonl(&dir.join("metrics.jsonl"))?;
    let series = |key: &str| -> Vec<f64> {
        rows.iter()
            .filter_map(|r| r.get(key)?.as_f64())
            .filter(|v| v.is_finite())
            .collect()
    };
    let num = |key: &str| summary.get(key).and_then(serde_json::Value::as_f64);
    // A bandit run logs E_π[r]; sequence tasks log their batches' reward.
    let bandit = rows.iter().any(|r| r.contains_key(tags::EXPECTED_REWARD));
    let reward_key = if bandit {
        tags::EXPECTED_REWARD
    } else {
        tags::BATCH_REWARD
    };
    let window = cfg.collapse.window;
    let smoothed = moving_average(&series(reward_key), window);
    // A run without RL steps (the warm start only) reports its final train evaluation.
    let final_reward = smoothed
        .last()
        .copied()
        .or_else(|| {
            summary
                .pointer("/final_train/reward")
                .and_then(serde_json::Value::as_f64)
        })
        .ok_or_else(|| {
            Error::Corrupt(format!(
                "{}: no {reward_key} in metrics.jsonl",
                dir.display()
            ))
        })?;
    let best_reward = smoothed.iter().cloned().fold(final_reward, f64::max);
    let entropy = series(tags::ENTROPY);
    let final_entropy = if bandit {
        num("final_entropy").unwrap_or(f64::NAN)
    } else {
        // NaN when the run took no RL step (nothing was sampled).
        let tail = &entropy[entropy.len().saturating_sub(window)..];
        tail.iter().sum::<f64>() / tail.len() as f64
    };
    let heldout = series(tags::HELDOUT_COMPLETION);
    let final_completion = summary
        .pointer("/final_heldout/completion")
        .and_then(serde_json::Value::as_f64);
    let final_train_completion = summary
        .pointer("/final_train/completion")
        .and_then(serde_json::Value::as_f64);
    let best_completion =
        (!heldout.is_empty()).then(|| heldout.iter().cloned().fold(0.0, f64::max));
    let reference = if bandit {
        num("best_arm_reward")
            .unwrap_or(best_reward)
            .max(best_reward)
    } else {
        best_reward
    };
    let collapsed = final_entropy <= cfg.collapse.entropy
        && final_reward <= reference - cfg.collapse.reward_drop;
    Ok(RunRow {
        point,
        final_reward,
        best_reward,
        final_completion,
        best_completion,
        final_train_completion,
        final_entropy,
        support: num("final_support_size"),
        predicted_support: num("predicted_limit_support"),
        predicted_reward: num("predicted_limit_reward"),
        collapsed,
        wall_time: num("wall_time").unwrap_or(f64::NAN),
    })
}

/// Every finished run of a sweep, in grid order.
pub fn read_rows(out: &Path) -> Result<(Manifest, Vec<RunRow>)> {
    let (manifest, _) = open(out)?;
    let mut rows = Vec::new();
    for p in manifest.points() {
        let dir = run_dir(out, &p);
        if dir.join("summary.json").exists() {
            rows.push(read_run(&dir, p)?);
        }
    }
    Ok((manifest, rows))
}

fn opt(v: Option<f64>) -> String {
    v.map_or(String::new(), |x| format!("{x}"))
}

/// Mean and (population) standard deviation.
pub fn mean_std(xs: &[f64]) -> (f64, f64) {
    let n = xs.len().max(1) as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
    (mean, var.sqrt())
}

/// One grid point's `(key, value)` pairs and its runs (one per seed).
pub type Group<'a> = (Vec<(String, String)>, Vec<&'a RunRow>);

/// Runs grouped by their grid values (seeds pooled), in grid order.
pub fn groups(rows: &[RunRow]) -> Vec<Group<'_>> {
    let mut out: Vec<Group<'_>> = Vec::new();
    for r in rows {
        match out.iter_mut().find(|(v, _)| *v == r.point.values) {
            Some((_, g)) => g.push(r),
            None => out.push((r.point.values.clone(), vec![r])),
        }
    }
    out
}

/// Writes `summary.csv` and `table.txt`; returns the number of runs and the table.
pub fn write_reports(out: &Path) -> Result<(usize, String)> {
    let (manifest, rows) = read_rows(out)?;
    let keys: Vec<&str> = manifest.grid.iter().map(|a| a.key.as_str()).collect();
    let mut csv = String::new();
    for k in &keys {
        let _ = write!(csv, "{k},");
    }
    csv.push_str(
        "seed,final_reward,best_reward,final_completion,best_completion,final_train_completion,final_entropy,support,predicted_support,predicted_reward,collapsed,wall_time\n",
    );
    for r in &rows {
        for (_, v) in &r.point.values {
            let _ = write!(csv, "{v},");
        }
        let _ = writeln!(
            csv,
            "{},{},{},{},{},{},{},{},{},{},{},{}",
            r.point.seed,
            r.final_reward,
            r.best_reward,
            opt(r.final_completion),
            opt(r.best_completion),
            opt(r.final_train_completion),
            r.final_entropy,
            opt(r.support),
            opt(r.predicted_support),
            opt(r.predicted_reward),
            r.collapsed,
            r.wall_time
        );
    }
    crate::store::checkpoint::write_atomic(&out.join("summary.csv"), csv.as_bytes())?;

    let tool = rows.iter().any(|r| r.final_completion.is_some());
    let bandit = rows.iter().any(|r| r.support.is_some());
    let mut header: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
    header.extend(["seeds".into(), "final reward".into(), "best reward".into()]);
    if tool {
        header.push("held-out completion".into());
        header.push("train completion".into());
    }
    if bandit {
        header.push("support".into());
    }
    header.extend(["entropy".into(), "collapsed".into(), "wall s".into()]);
    let pm = |xs: Vec<f64>, d: usize| {
        let (m, s) = mean_std(&xs);
        // + 0.0 turns −0 into 0.
        format!("{:.d$} ± {:.d$}", m + 0.0, s + 0.0)
    };
    let mut lines = vec![header];
    for (values, g) in groups(&rows) {
        let mut line: Vec<String> = values.iter().map(|(_, v)| v.clone()).collect();
        line.push(g.len().to_string());
        line.push(pm(g.iter().map(|r| r.final_reward).collect(), 3));
        line.push(pm(g.iter().map(|r| r.best_reward).collect(), 3));
        if tool {
            line.push(pm(g.iter().filter_map(|r| r.final_completion).collect(), 3));
            line.push(pm(
                g.iter().filter_map(|r| r.final_train_completion).collect(),
                3,
            ));
        }
        if bandit {
            line.push(pm(g.iter().filter_map(|r| r.support).collect(), 1));
        }
        line.push(pm(g.iter().map(|r| r.final_entropy).collect(), 3));
        line.push(format!(
            "{}/{}",
            g.iter().filter(|r| r.collapsed).count(),
            g.len()
        ));
        line.push(format!(
            "{:.0}",
            mean_std(&g.iter().map(|r| r.wall_time).collect::<Vec<_>>()).0
        ));
        lines.push(line);
    }
    let (widths, padded) = crate::app::experiments::table::pad_columns(&lines);
    let mut table = String::new();
    for (i, cells) in padded.iter().enumerate() {
        let _ = writeln!(table, "{}", cells.join("  ").trim_end());
        if i == 0 {
            let _ = writeln!(
                table,
                "{}",
                widths
                    .iter()
                    .map(|w| "-".repeat(*w))
                    .collect::<Vec<_>>()
                    .join("  ")
            );
        }
    }
    crate::store::checkpoint::write_atomic(&out.join("table.txt"), table.as_bytes())?;
    Ok((rows.len(), table))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_axes_parse_and_reject_bad_input() {
        let a: Axis = "loss.baseline.delta_v=-0.1, 0 ,0.1".parse().unwrap();
        assert_eq!(a.key, "loss.baseline.delta_v");
        assert_eq!(a.values, ["-0.1", "0", "0.1"]);
        for bad in ["novalue", "=1,2", "k=1,,2", "seed=1,2", "k=a/b"] {
            assert!(bad.parse::<Axis>().is_err(), "{bad}");
        }
    }

    #[test]
    fn points_are_the_product_times_seeds() {
        let m = Manifest {
            grid: vec![
                "a=1,2".parse().unwrap(),
                "loss.kind=asymre,grpo,reinforce".parse().unwrap(),
            ],
            seeds: vec![7, 8],
            overrides: Vec::new(),
            serial: true,
        };
        let points = m.points();
        assert_eq!(points.len(), 12);
        assert_eq!(points[0].name(), "a=1__loss.kind=asymre__seed=7");
        assert_eq!(points[1].name(), "a=1__loss.kind=asymre__seed=8");
        assert_eq!(points[11].name(), "a=2__loss.kind=reinforce__seed=8");
        let names: std::collections::HashSet<String> = points.iter().map(Point::name).collect();
        assert_eq!(names.len(), 12);
    }

    #[test]
    fn moving_average_and_mean_std() {
        assert_eq!(
            moving_average(&[1.0, 3.0, 5.0, 7.0], 2),
            [1.0, 2.0, 4.0, 6.0]
        );
        let (m, s) = mean_std(&[1.0, 3.0]);
        assert_eq!((m, s), (2.0, 1.0));
    }
}
