//! What tells the lines of a figure apart: a label naming only what differs between the runs
//! (`δV −0.1, seed 0`), a colour per value of what was swept, a line style per seed.
use std::collections::BTreeMap;

use crate::config::{Config, LossKind};

/// How one run (or one group of runs) is drawn and named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Style {
    /// What differs from the other lines, without the seed: `δV −0.1`, `grpo`.
    pub name: String,
    /// The run's seed, when seeds differ between the lines.
    pub seed: Option<u64>,
    /// Index of the colour: one per distinct `name`.
    pub colour: usize,
    /// Index of the line style: one per distinct seed (0: solid).
    pub dash: usize,
}

impl Style {
    /// The legend's text for the line: its name and its seed.
    pub fn label(&self) -> String {
        match (self.name.is_empty(), self.seed) {
            (false, Some(s)) => format!("{}, seed {s}", self.name),
            (true, Some(s)) => format!("seed {s}"),
            (_, None) => self.name.clone(),
        }
    }
}

/// Every key of a config as text (`loss.baseline.delta_v` → `-0.1`).
pub fn flatten(cfg: &Config) -> BTreeMap<String, String> {
    let value = toml::Value::try_from(cfg).unwrap_or(toml::Value::Table(Default::default()));
    let mut out = BTreeMap::new();
    fn walk(prefix: &str, v: &toml::Value, out: &mut BTreeMap<String, String>) {
        match v {
            toml::Value::Table(t) => {
                for (k, v) in t {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&key, v, out);
                }
            }
            toml::Value::String(s) => {
                out.insert(prefix.to_string(), s.clone());
            }
            other => {
                out.insert(prefix.to_string(), other.to_string());
            }
        }
    }
    walk("", &value, &mut out);
    out
}

/// Keys that only matter for some losses: the baseline's, for the losses that use one.
fn relevant(key: &str, cfg: &Config) -> bool {
    let baseline = key.starts_with("loss.baseline.");
    !baseline
        || matches!(
            cfg.loss.kind,
            LossKind::Asymre | LossKind::IsReinforce | LossKind::Topr
        )
}

/// A key as a reader names it.
fn key_name(key: &str) -> &str {
    match key {
        "loss.baseline.delta_v" => "δV",
        "loss.baseline.v" => "V",
        "loss.kind" | "loss.baseline.kind" => "",
        "env.task" => "task",
        "env.kind" => "",
        "replay.max_policy_lag" => "lag ≤",
        "learner.sync_interval" => "sync",
        _ => key.rsplit('.').next().unwrap_or(key),
    }
}

/// A value as a figure shows it: numbers with a true minus sign (and a plus for δV and V).
fn value_text(key: &str, value: &str) -> String {
    let signed = matches!(key, "loss.baseline.delta_v" | "loss.baseline.v");
    let value = value.strip_suffix(".0").unwrap_or(value);
    match value.parse::<f64>() {
        Ok(x) if signed && x > 0.0 => format!("+{value}"),
        Ok(x) if x < 0.0 => format!("−{}", value.trim_start_matches('-')),
        Ok(0.0) => "0".into(),
        _ => value.to_string(),
    }
}

/// The styles of runs whose configs are `configs`: names from the keys that differ between
/// them (seed apart), colours by name, line styles by seed. `fallback` names a run when nothing
/// differs (one run: its directory's name).
pub fn styles(configs: &[Config], fallback: &[String]) -> Vec<Style> {
    styles_without(configs, fallback, &[])
}

/// [`styles`] with the keys `ignore` left out of the names (a figure's x axis).
pub fn styles_without(configs: &[Config], fallback: &[String], ignore: &[&str]) -> Vec<Style> {
    let flat: Vec<BTreeMap<String, String>> = configs.iter().map(flatten).collect();
    let mut keys: Vec<&String> = match flat.first() {
        Some(first) => first
            .keys()
            .filter(|k| *k != "seed" && !ignore.contains(&k.as_str()))
            .filter(|k| flat.iter().any(|f| f.get(*k) != first.get(*k)))
            .collect(),
        None => Vec::new(),
    };
    // The loss first: "grpo", "asymre, δV −0.1".
    keys.sort_by_key(|k| *k != "loss.kind");
    let seeds_differ = configs.windows(2).any(|w| w[0].seed != w[1].seed);
    let mut names: Vec<String> = Vec::new();
    let mut seeds: Vec<u64> = Vec::new();
    // Runs whose configs are the same (repeats) are told apart by their directories.
    let same = |i: usize| {
        (0..flat.len()).any(|j| j != i && flat[j] == flat[i] && fallback.get(j) != fallback.get(i))
    };
    configs
        .iter()
        .zip(&flat)
        .enumerate()
        .map(|(i, (cfg, f))| {
            let parts: Vec<String> = keys
                .iter()
                .filter(|k| relevant(k, cfg))
                .filter_map(|k| {
                    let v = value_text(k, f.get(*k)?);
                    Some(match key_name(k) {
                        "" => v,
                        name => format!("{name} {v}"),
                    })
                })
                .collect();
            let mut name = parts.join(", ");
            if (name.is_empty() && !seeds_differ) || same(i) {
                let dir = fallback.get(i).cloned().unwrap_or_default();
                name = [name, dir]
                    .into_iter()
                    .filter(|p| !p.is_empty())
                    .collect::<Vec<_>>()
                    .join(", ");
            }
            let colour = names.iter().position(|n| *n == name).unwrap_or_else(|| {
                names.push(name.clone());
                names.len() - 1
            });
            let seed = seeds_differ.then_some(cfg.seed);
            let dash = seed.map_or(0, |s| {
                seeds.iter().position(|&t| t == s).unwrap_or_else(|| {
                    seeds.push(s);
                    seeds.len() - 1
                })
            });
            // With only seeds apart, the colours follow the seeds.
            let colour = if keys.is_empty() && seeds_differ {
                dash
            } else {
                colour
            };
            Style {
                name,
                seed,
                colour,
                dash,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(sets: &[&str]) -> Config {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        crate::config::from_toml_str("", &sets).unwrap()
    }

    /// Labels name only what differs: the swept δV with a true minus sign, and the seed; a loss
    /// without a baseline is not labelled with one. Colours follow δV, line styles the seed.
    #[test]
    fn labels_name_only_what_differs() {
        let runs = [
            cfg(&["loss.baseline.delta_v=-0.1", "seed=0"]),
            cfg(&["loss.baseline.delta_v=-0.1", "seed=1"]),
            cfg(&["loss.baseline.delta_v=0.1", "seed=0"]),
            cfg(&["loss.kind=\"grpo\"", "seed=1"]),
        ];
        let s = styles(&runs, &[]);
        let labels: Vec<String> = s.iter().map(Style::label).collect();
        assert_eq!(
            labels,
            [
                "asymre, δV −0.1, seed 0",
                "asymre, δV −0.1, seed 1",
                "asymre, δV +0.1, seed 0",
                "grpo, seed 1"
            ]
        );
        assert_eq!(s.iter().map(|s| s.colour).collect::<Vec<_>>(), [0, 0, 1, 2]);
        assert_eq!(s.iter().map(|s| s.dash).collect::<Vec<_>>(), [0, 1, 0, 1]);
        // One run: its directory's name; seeds alone: the seed, coloured by seed.
        let one = styles(&[cfg(&[])], &["calc".into()]);
        assert_eq!(one[0].label(), "calc");
        let seeds = styles(&[cfg(&["seed=3"]), cfg(&["seed=4"])], &[]);
        assert_eq!(seeds[1].label(), "seed 4");
        assert_eq!((seeds[1].colour, seeds[1].dash), (1, 1));
        // The same config twice: the directories tell them apart.
        let repeats = styles(&[cfg(&[]), cfg(&[])], &["a".into(), "b".into()]);
        assert_eq!(
            (repeats[0].label(), repeats[1].label()),
            ("a".into(), "b".into())
        );
        assert_ne!(repeats[0].colour, repeats[1].colour);
    }
}
