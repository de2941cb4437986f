//! PNG plots of runs' metrics, drawn with plotters (pure Rust; the font is read at run time from
//! the system's TrueType fonts). A run's or several runs' curves ([`plot_curves`]), and a
//! sweep's figures ([`plot_sweeps`]: final values against the swept value, and every run's
//! curves). Lines are named by what differs between them, coloured by the swept value and
//! styled by seed ([`style`]); one legend serves the whole figure ([`figure`]).
mod figure;
pub mod style;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::prelude::*;

use crate::app::experiments::report::{self, Manifest, RunRow};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::store::metrics::{read_jsonl, tags};
use figure::{colour, draw_figure, line, mesh, moving_average, plot_error, window_for, Entry};
use style::{styles, styles_without, Style};

/// A metrics row.
type Row = serde_json::Map<String, serde_json::Value>;

/// One line of a plot: how it is drawn and named, and its metric rows.
pub struct Series {
    pub style: Style,
    pub rows: Vec<Row>,
}

impl Series {
    fn points(&self, key: &str) -> Vec<(f64, f64)> {
        self.rows
            .iter()
            .filter_map(|r| Some((r.get(tags::STEP)?.as_f64()?, r.get(key)?.as_f64()?)))
            .filter(|(_, y)| y.is_finite())
            .collect()
    }
}

/// The last part of a directory's path, to name a run.
fn dir_name(d: &Path) -> String {
    d.file_name()
        .map_or_else(|| d.display().to_string(), |n| n.to_string_lossy().into())
}

/// Reads the runs' metrics and names them by what differs between their configs.
pub fn load_runs(dirs: &[PathBuf]) -> Result<Vec<Series>> {
    let mut configs = Vec::new();
    let mut rows = Vec::new();
    for dir in dirs {
        let (cfg, _) = crate::run::open_run_dir(dir)?;
        let r = read_jsonl(&dir.join("metrics.jsonl"))?;
        if r.is_empty() {
            return Err(Error::input(format!(
                "{}: metrics.jsonl has no rows",
                dir.display()
            )));
        }
        configs.push(cfg);
        rows.push(r);
    }
    let names: Vec<String> = dirs.iter().map(|d| dir_name(d)).collect();
    Ok(styles(&configs, &names)
        .into_iter()
        .zip(rows)
        .map(|(style, rows)| Series { style, rows })
        .collect())
}

fn ensure_font() -> Result<()> {
    static FONT: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    FONT.get_or_init(|| {
        let candidates = [
            "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
            "/usr/share/fonts/TTF/DejaVuSans.ttf",
            "/usr/share/fonts/dejavu/DejaVuSans.ttf",
            "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
        ];
        let path = candidates
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .or_else(|| find_ttf(Path::new("/usr/share/fonts")));
        let path =
            path.ok_or("no TrueType font under /usr/share/fonts (install fonts-dejavu-core)")?;
        let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
            .map_err(|_| format!("{}: not a usable font", path.display()))
    })
    .clone()
    .map_err(Error::input)
}

fn find_ttf(dir: &Path) -> Option<PathBuf> {
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let p = entry.path();
        if p.is_dir() {
            if let Some(found) = find_ttf(&p) {
                return Some(found);
            }
        } else if p.extension().is_some_and(|e| e == "ttf") {
            return Some(p);
        }
    }
    None
}

/// One panel of a figure.
#[derive(Debug, Clone, Copy)]
pub struct Panel {
    /// The metric key.
    pub key: &'static str,
    /// The y-axis label.
    pub label: &'static str,
    /// Decimals on the y-axis labels.
    pub decimals: usize,
    /// A noisy metric (a batch's mean): drawn as a moving average over its faint raw values.
    pub smooth: bool,
}

/// The bandit figure: reward, support, entropy (exact figures, not smoothed).
pub const BANDIT_PANELS: &[Panel] = &[
    Panel {
        key: tags::EXPECTED_REWARD,
        label: "E_π[r]",
        decimals: 2,
        smooth: false,
    },
    Panel {
        key: tags::SUPPORT_SIZE,
        label: "support size (π > 1e-3)",
        decimals: 0,
        smooth: false,
    },
    Panel {
        key: tags::ENTROPY,
        label: "entropy H(π) (nats)",
        decimals: 1,
        smooth: false,
    },
];

/// The tool-use figure: train reward, held-out completion, tool F1, entropy, policy lag.
pub const TOOL_PANELS: &[Panel] = &[
    Panel {
        key: tags::BATCH_REWARD,
        label: "train reward (batch mean)",
        decimals: 2,
        smooth: true,
    },
    Panel {
        key: tags::HELDOUT_COMPLETION,
        label: "held-out completion (greedy)",
        decimals: 2,
        smooth: false,
    },
    Panel {
        key: tags::TOOL_F1,
        label: "train tool F1",
        decimals: 2,
        smooth: true,
    },
    Panel {
        key: tags::ENTROPY,
        label: "entropy per token (nats)",
        decimals: 2,
        smooth: true,
    },
    Panel {
        key: tags::POLICY_LAG_MEAN,
        label: "policy lag (steps)",
        decimals: 1,
        smooth: true,
    },
];

/// The panels that suit what the runs logged: the bandit's when they logged E_π[r], the
/// sequence tasks' otherwise.
pub fn panels_for(series: &[Series]) -> &'static [Panel] {
    let bandit = series
        .iter()
        .any(|s| s.rows.iter().any(|r| r.contains_key(tags::EXPECTED_REWARD)));
    if bandit {
        BANDIT_PANELS
    } else {
        TOOL_PANELS
    }
}

/// The legend of lines with `styles`: a colour entry per name, then (when seeds differ and
/// names do too) a grey entry per seed's line style.
fn legend(styles: &[&Style]) -> Vec<Entry> {
    let mut entries: Vec<Entry> = Vec::new();
    let named = styles.iter().any(|s| !s.name.is_empty());
    for s in styles {
        let text = if named { s.name.clone() } else { s.label() };
        if !entries.iter().any(|e| e.text == text) {
            entries.push(Entry {
                text,
                colour: colour(s.colour),
                dash: if named { 0 } else { s.dash },
                marker: false,
            });
        }
    }
    if named {
        let mut seeds: Vec<(u64, usize)> = styles
            .iter()
            .filter_map(|s| Some((s.seed?, s.dash)))
            .collect();
        seeds.sort_unstable();
        seeds.dedup();
        for (seed, dash) in seeds {
            entries.push(Entry {
                text: format!("seed {seed}"),
                colour: RGBColor(90, 90, 90).to_rgba(),
                dash,
                marker: false,
            });
        }
    }
    entries
}

/// Draws one panel per metric, one line per series, into a PNG with one legend. Noisy metrics
/// are drawn as moving averages over their faint raw values; the caption gives the window.
pub fn plot_curves(series: &[Series], panels: &[Panel], title: &str, out: &Path) -> Result<()> {
    let err = plot_error(out);
    let longest = series.iter().map(|s| s.rows.len()).max().unwrap_or(0);
    let window = window_for(longest);
    let smoothed = window > 1 && panels.iter().any(|p| p.smooth);
    let caption = if smoothed {
        format!("Bold lines: moving average over {window} logged rows, raw values faint behind.")
    } else {
        String::new()
    };
    let entries = legend(&series.iter().map(|s| &s.style).collect::<Vec<_>>());
    draw_figure(out, panels.len(), title, &entries, &caption, |area, k| {
        let panel = &panels[k];
        let lines: Vec<(&Style, Vec<(f64, f64)>)> = series
            .iter()
            .map(|s| (&s.style, s.points(panel.key)))
            .filter(|(_, p)| !p.is_empty())
            .collect();
        let Some((x0, x1, y0, y1)) = bounds(lines.iter().flat_map(|(_, p)| p.iter().copied()))
        else {
            return Ok(());
        };
        let pad = y_pad(y0, y1, 0.05);
        let mut chart = ChartBuilder::on(area)
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d(x0..x1, (y0 - pad)..(y1 + pad))
            .map_err(|e| err(e.to_string()))?;
        mesh(&mut chart, "learner step", panel.label, 0, panel.decimals)
            .map_err(|e| err(e.to_string()))?;
        let smooth = panel.smooth && window > 1;
        if smooth {
            for (style, points) in &lines {
                let faint = colour(style.colour).mix(0.22);
                line(&mut chart, points, faint, 0, 1).map_err(|e| err(e.to_string()))?;
            }
        }
        for (style, points) in &lines {
            let drawn = if smooth {
                moving_average(points, window)
            } else {
                points.clone()
            };
            line(&mut chart, &drawn, colour(style.colour), style.dash, 2)
                .map_err(|e| err(e.to_string()))?;
        }
        Ok(())
    })
}

/// The margin above and below a y range: `share` of its height, or, for a flat line, half a unit
/// (a tenth of the value when that is larger) so that the axis labels stay distinct.
fn y_pad(y0: f64, y1: f64, share: f64) -> f64 {
    if y1 - y0 > 1e-9 * y0.abs().max(1.0) {
        (y1 - y0) * share
    } else {
        (y0.abs() * 0.1).max(0.5)
    }
}

/// The x and y range of `points` (x widened to one unit when it has none); `None` when empty.
fn bounds(points: impl Iterator<Item = (f64, f64)>) -> Option<(f64, f64, f64, f64)> {
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for (x, y) in points {
        (x0, x1) = (x0.min(x), x1.max(x));
        (y0, y1) = (y0.min(y), y1.max(y));
    }
    if x0 > x1 {
        return None;
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    Some((x0, x1, y0, y1))
}

/// One line of a sweep's summary figure: points (x, mean, std) or, for a group with no x value,
/// one (mean, std) drawn flat across the figure.
struct SweepLine {
    label: String,
    points: Vec<(f64, f64, f64)>,
    flat: Option<(f64, f64)>,
    /// The theory's prediction, drawn dashed, if any.
    theory: Vec<(f64, f64)>,
}

/// The swept numeric axis shared by the sweeps: the first axis with two or more values that all
/// parse as numbers.
fn numeric_axis(manifests: &[crate::app::experiments::report::Manifest]) -> Option<String> {
    manifests.iter().flat_map(|m| &m.grid).find_map(|a| {
        (a.values.len() >= 2 && a.values.iter().all(|v| v.parse::<f64>().is_ok()))
            .then(|| a.key.clone())
    })
}

/// The runs of one grid point (seeds pooled), with their config read once.
struct Group {
    values: Vec<(String, String)>,
    rows: Vec<RunRow>,
    cfg: Config,
}

/// A label for a group of runs: the names of what differs between the groups, without the
/// swept axis `x` (that is the figure's x).
fn group_labels(groups: &[Group], x: Option<&str>) -> Vec<String> {
    let configs: Vec<Config> = groups
        .iter()
        .map(|g| Config {
            seed: 0,
            ..g.cfg.clone()
        })
        .collect();
    let names: Vec<String> = groups
        .iter()
        .map(|g| format!("{:?}", g.cfg.loss.kind).to_lowercase())
        .collect();
    let ignore: Vec<&str> = x.into_iter().collect();
    styles_without(&configs, &names, &ignore)
        .into_iter()
        .zip(names)
        .map(|(s, fallback)| if s.name.is_empty() { fallback } else { s.name })
        .collect()
}

/// Writes a sweep's figures into `out`: `final.png` (final reward, held-out completion or
/// support, entropy against the swept value, one line per other grid value, error bars over
/// seeds, the theory dashed) and `curves.png` (every run's curves, coloured by the swept value,
/// styled by seed). Several sweeps (e.g. AsymRE over δV and the comparison losses) share the
/// figures.
/// `title` heads both figures (the sweep's directory name by default).
pub fn plot_sweeps(dirs: &[PathBuf], out: &Path, title: Option<&str>) -> Result<Vec<PathBuf>> {
    let title = title.map_or_else(|| dir_name(&dirs[0]), str::to_string);
    let mut manifests = Vec::new();
    let mut groups = Vec::new();
    let mut runs: Vec<PathBuf> = Vec::new();
    for dir in dirs {
        let (m, rows) = report::read_rows(dir)?;
        if rows.is_empty() {
            return Err(Error::input(format!(
                "{}: no finished runs yet",
                dir.display()
            )));
        }
        manifests.push(m);
        for (values, group) in report::groups(&rows) {
            let dirs: Vec<PathBuf> = group
                .iter()
                .map(|r| report::run_dir(dir, &r.point))
                .collect();
            runs.extend(dirs.iter().cloned());
            let cfg = crate::run::open_run_dir(&dirs[0])?.0;
            groups.push(Group {
                values,
                rows: group.into_iter().cloned().collect(),
                cfg,
            });
        }
    }
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let final_png = out.join("final.png");
    plot_final(
        &groups,
        &manifests,
        &format!("{title}: final values"),
        &final_png,
    )?;
    let bandit = groups[0].rows.iter().any(|r| r.support.is_some());
    let curve_panels: Vec<Panel> = if bandit {
        BANDIT_PANELS.to_vec()
    } else {
        vec![TOOL_PANELS[0], TOOL_PANELS[1], TOOL_PANELS[3]]
    };
    let curves_png = out.join("curves.png");
    plot_curves(
        &load_runs(&runs)?,
        &curve_panels,
        &format!("{title}: every run (colour: the swept value, line style: the seed)"),
        &curves_png,
    )?;
    Ok(vec![final_png, curves_png])
}

/// A final value of a run, and the theory's prediction of it (bandit), if any.
type Pick = fn(&RunRow) -> Option<f64>;

/// The panels of a sweep's `final.png`: (title, the run's value, the theory's).
fn final_metrics(bandit: bool) -> Vec<(&'static str, Pick, Option<Pick>)> {
    let mut metrics: Vec<(&str, Pick, Option<Pick>)> = vec![(
        if bandit {
            "final E_π[r]"
        } else {
            "final train reward"
        },
        |r| Some(r.final_reward),
        Some(|r| r.predicted_reward),
    )];
    if bandit {
        metrics.push((
            "final support size",
            |r| r.support,
            Some(|r| r.predicted_support),
        ));
    } else {
        metrics.push(("final held-out completion", |r| r.final_completion, None));
        metrics.push(("final train completion", |r| r.final_train_completion, None));
    }
    metrics.push(("final entropy (nats)", |r| Some(r.final_entropy), None));
    metrics
}

/// One panel's lines: a line per group label, a point (mean ± std over seeds) per swept value.
fn sweep_lines(
    groups: &[Group],
    labels: &[String],
    x_key: Option<&str>,
    pick: Pick,
    theory: Option<Pick>,
) -> Vec<SweepLine> {
    let mut lines: Vec<SweepLine> = Vec::new();
    for (g, name) in groups.iter().zip(labels) {
        let ys: Vec<f64> = g
            .rows
            .iter()
            .filter_map(pick)
            .filter(|y| y.is_finite())
            .collect();
        if ys.is_empty() {
            continue;
        }
        let (m, s) = report::mean_std(&ys);
        let x = x_key
            .and_then(|k| g.values.iter().find(|(kk, _)| kk == k))
            .and_then(|(_, v)| v.parse::<f64>().ok());
        let i = match lines.iter().position(|l| l.label == *name) {
            Some(i) => i,
            None => {
                lines.push(SweepLine {
                    label: name.clone(),
                    points: Vec::new(),
                    flat: None,
                    theory: Vec::new(),
                });
                lines.len() - 1
            }
        };
        let line = &mut lines[i];
        match x {
            Some(x) => {
                line.points.push((x, m, s));
                if let Some(t) = theory {
                    let ts: Vec<f64> = g.rows.iter().filter_map(t).collect();
                    if ts.len() == g.rows.len() {
                        line.theory.push((x, report::mean_std(&ts).0));
                    }
                }
            }
            None => line.flat = Some((m, s)),
        }
    }
    for l in &mut lines {
        l.points.sort_by(|a, b| a.0.total_cmp(&b.0));
        l.theory.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    lines
}

/// `final.png`: the final values against the swept value.
fn plot_final(groups: &[Group], manifests: &[Manifest], title: &str, out: &Path) -> Result<()> {
    let x_key = numeric_axis(manifests);
    let bandit = groups[0].rows.iter().any(|r| r.support.is_some());
    let labels = group_labels(groups, x_key.as_deref());
    let panels: Vec<(&str, Vec<SweepLine>)> = final_metrics(bandit)
        .into_iter()
        .map(|(title, pick, theory)| {
            (
                title,
                sweep_lines(groups, &labels, x_key.as_deref(), pick, theory),
            )
        })
        .filter(|(_, lines)| !lines.is_empty())
        .collect();
    let x_label = x_key.as_deref().map_or("run".to_string(), |k| match k {
        "loss.baseline.delta_v" => "δV (the baseline's offset from the mean reward)".into(),
        "loss.baseline.v" => "V".into(),
        other => other.to_string(),
    });
    let mut entries: Vec<Entry> = Vec::new();
    let mut theory = false;
    for (_, lines) in &panels {
        for (i, l) in lines.iter().enumerate() {
            let text = match (l.points.is_empty(), l.flat) {
                (true, Some(_)) => format!("{} (no {})", l.label, first_word(&x_label)),
                _ => l.label.clone(),
            };
            if !entries.iter().any(|e| e.text == text) {
                entries.push(Entry {
                    text,
                    colour: colour(i),
                    dash: usize::from(l.points.is_empty()),
                    marker: !l.points.is_empty(),
                });
            }
            theory |= !l.theory.is_empty();
        }
    }
    if theory {
        entries.push(Entry {
            text: "theory (limit from the last μ)".into(),
            colour: BLACK.to_rgba(),
            dash: 1,
            marker: false,
        });
    }
    let caption = "Points: mean over seeds, bars: ± one standard deviation.";
    draw_figure(out, panels.len(), title, &entries, caption, |area, k| {
        draw_sweep_panel(area, panels[k].0, &panels[k].1, &x_label, out)
    })
}

/// The first word of an axis label (`δV`).
fn first_word(label: &str) -> &str {
    label.split_whitespace().next().unwrap_or(label)
}

/// One panel of `final.png`.
fn draw_sweep_panel(
    area: &figure::Area,
    label: &str,
    lines: &[SweepLine],
    x_label: &str,
    out: &Path,
) -> Result<()> {
    let err = plot_error(out);
    let xs = lines.iter().flat_map(|l| l.points.iter().map(|p| p.0));
    let (mut x0, mut x1) = xs.fold((f64::MAX, f64::MIN), |(a, b), x| (a.min(x), b.max(x)));
    if x0 > x1 {
        // No numeric axis: the groups stand side by side at 0, 1, ….
        (x0, x1) = (-0.5, lines.len() as f64 - 0.5);
    } else if x1 <= x0 {
        (x0, x1) = (x0 - 1.0, x1 + 1.0);
    }
    let flat_only = lines.iter().all(|l| l.points.is_empty());
    let ys = lines.iter().flat_map(|l| {
        l.points
            .iter()
            .flat_map(|p| [p.1 - p.2, p.1 + p.2])
            .chain(l.flat.into_iter().flat_map(|(m, s)| [m - s, m + s]))
            .chain(l.theory.iter().map(|t| t.1))
    });
    let (mut y0, mut y1) = ys.fold((f64::MAX, f64::MIN), |(a, b), y| (a.min(y), b.max(y)));
    if y0 > y1 {
        return Ok(());
    }
    let pad = y_pad(y0, y1, 0.08);
    (y0, y1) = (y0 - pad, y1 + pad);
    let xpad = (x1 - x0) * 0.04;
    let mut chart = ChartBuilder::on(area)
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d((x0 - xpad)..(x1 + xpad), y0..y1)
        .map_err(|e| err(e.to_string()))?;
    let y_decimals = if y1 - y0 >= 10.0 { 0 } else { 2 };
    let whole = lines
        .iter()
        .flat_map(|l| l.points.iter())
        .all(|p| p.0.fract() == 0.0);
    let x_decimals = if whole { 0 } else { 2 };
    mesh(&mut chart, x_label, label, x_decimals, y_decimals).map_err(|e| err(e.to_string()))?;
    for (i, l) in lines.iter().enumerate() {
        let c = colour(i);
        let mut points = l.points.clone();
        if flat_only {
            if let Some((m, s)) = l.flat {
                points.push((i as f64, m, s));
            }
        }
        if points.is_empty() {
            if let Some((m, _)) = l.flat {
                // A loss without the swept knob: a dashed level across the figure.
                line(&mut chart, &[(x0, m), (x1, m)], c, 1, 2).map_err(|e| err(e.to_string()))?;
            }
        } else {
            let means: Vec<(f64, f64)> = points.iter().map(|p| (p.0, p.1)).collect();
            line(&mut chart, &means, c, 0, 2).map_err(|e| err(e.to_string()))?;
            let w = (x1 - x0) * 0.008;
            for &(x, m, s) in &points {
                let bar = [
                    vec![(x, m - s), (x, m + s)],
                    vec![(x - w, m - s), (x + w, m - s)],
                    vec![(x - w, m + s), (x + w, m + s)],
                ];
                chart
                    .draw_series(bar.map(|b| PathElement::new(b, c.stroke_width(1))))
                    .map_err(|e| err(e.to_string()))?;
                chart
                    .draw_series([Circle::new((x, m), 3, c.filled())])
                    .map_err(|e| err(e.to_string()))?;
            }
        }
        if !l.theory.is_empty() {
            line(&mut chart, &l.theory, BLACK.to_rgba(), 1, 1).map_err(|e| err(e.to_string()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::y_pad;

    #[test]
    fn a_flat_line_gets_a_visible_range_and_a_sloped_one_a_share_of_its_own() {
        assert_eq!(y_pad(0.0, 0.0, 0.05), 0.5);
        assert_eq!(y_pad(20.0, 20.0, 0.05), 2.0);
        assert!((y_pad(0.2, 0.4, 0.05) - 0.01).abs() < 1e-12);
    }
}
