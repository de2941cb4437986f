//! PNG plots of runs' metrics, drawn with plotters (pure Rust; the font is read at run time from
//! the system's TrueType fonts).
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::prelude::*;

use crate::config::{BaselineKind, Config, LossKind};
use crate::error::{Error, Result};
use crate::store::metrics::{read_jsonl, tags};

/// One line of a plot: a label and its points per metric.
pub struct Series {
    pub label: String,
    pub rows: Vec<serde_json::Map<String, serde_json::Value>>,
}

impl Series {
    fn points(&self, key: &str) -> Vec<(f64, f64)> {
        self.rows
            .iter()
            .filter_map(|r| Some((r.get(tags::STEP)?.as_f64()?, r.get(key)?.as_f64()?)))
            .collect()
    }
}

/// A short label for a run: its loss and baseline.
pub fn run_label(cfg: &Config) -> String {
    let baseline = match cfg.loss.baseline.kind {
        BaselineKind::Absolute => format!("V = {}", cfg.loss.baseline.v),
        BaselineKind::Relative => format!("δV = {:+}", cfg.loss.baseline.delta_v),
    };
    match cfg.loss.kind {
        LossKind::Reinforce => "reinforce".into(),
        LossKind::Grpo => "grpo".into(),
        LossKind::Asymre => baseline,
        LossKind::IsReinforce => format!("is_reinforce {baseline}"),
        LossKind::Topr => format!("topr {baseline}"),
    }
}

/// Appends the run directory's name to every label that more than one run shares, so overlaid
/// runs of the same loss and baseline (other tasks, seeds, settings) stay apart in the legend.
fn disambiguate(labels: &mut [String], names: &[String]) {
    let shared: Vec<bool> = labels
        .iter()
        .map(|l| labels.iter().filter(|m| *m == l).count() > 1)
        .collect();
    for ((label, name), shared) in labels.iter_mut().zip(names).zip(shared) {
        if shared {
            *label = format!("{label} · {name}");
        }
    }
}

/// Reads the runs' metrics and labels.
pub fn load_runs(dirs: &[PathBuf]) -> Result<Vec<Series>> {
    let mut series = dirs
        .iter()
        .map(|dir| {
            let (cfg, _) = crate::run::open_run_dir(dir)?;
            let rows = read_jsonl(&dir.join("metrics.jsonl"))?;
            if rows.is_empty() {
                return Err(Error::input(format!(
                    "{}: metrics.jsonl has no rows",
                    dir.display()
                )));
            }
            Ok(Series {
                label: run_label(&cfg),
                rows,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let mut labels: Vec<String> = series.iter().map(|s| s.label.clone()).collect();
    let names: Vec<String> = dirs
        .iter()
        .map(|d| {
            d.file_name()
                .map_or_else(|| d.display().to_string(), |n| n.to_string_lossy().into())
        })
        .collect();
    disambiguate(&mut labels, &names);
    for (s, label) in series.iter_mut().zip(labels) {
        s.label = label;
    }
    Ok(series)
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

/// The i-th line colour: ten well-separated colours, then they repeat.
fn color(i: usize) -> RGBAColor {
    const TAB10: [(u8, u8, u8); 10] = [
        (31, 119, 180),
        (255, 127, 14),
        (44, 160, 44),
        (214, 39, 40),
        (148, 103, 189),
        (140, 86, 75),
        (227, 119, 194),
        (127, 127, 127),
        (188, 189, 34),
        (23, 190, 207),
    ];
    let (r, g, b) = TAB10[i % TAB10.len()];
    RGBColor(r, g, b).to_rgba()
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
    /// Where the legend goes: curves that rise want it low.
    pub legend_low: bool,
}

/// The bandit figure: reward, support, entropy.
pub const BANDIT_PANELS: &[Panel] = &[
    Panel {
        key: tags::EXPECTED_REWARD,
        label: "E_π[r]",
        decimals: 2,
        legend_low: true,
    },
    Panel {
        key: tags::SUPPORT_SIZE,
        label: "support size (π > 1e-3)",
        decimals: 0,
        legend_low: false,
    },
    Panel {
        key: tags::ENTROPY,
        label: "entropy H(π) (nats)",
        decimals: 1,
        legend_low: false,
    },
];

/// The tool-use figure: train reward, held-out completion, tool F1, entropy, policy lag.
pub const TOOL_PANELS: &[Panel] = &[
    Panel {
        key: tags::BATCH_REWARD,
        label: "train reward (batch mean)",
        decimals: 2,
        legend_low: true,
    },
    Panel {
        key: tags::HELDOUT_COMPLETION,
        label: "held-out completion (greedy)",
        decimals: 2,
        legend_low: true,
    },
    Panel {
        key: tags::TOOL_F1,
        label: "train tool F1",
        decimals: 2,
        legend_low: true,
    },
    Panel {
        key: tags::ENTROPY,
        label: "entropy per token (nats)",
        decimals: 2,
        legend_low: false,
    },
    Panel {
        key: tags::POLICY_LAG_MEAN,
        label: "policy lag (steps)",
        decimals: 1,
        legend_low: false,
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

/// Panels side by side, at most three to a row.
fn panel_grid(n: usize) -> (usize, usize) {
    let cols = n.clamp(1, 3);
    (n.div_ceil(cols), cols)
}

/// An error of drawing `out`, as one line naming it.
fn plot_error(out: &Path) -> impl Fn(String) -> Error + '_ {
    move |e| Error::input(format!("plot {}: {e}", out.display()))
}

/// Draws a PNG of `n` panels, at most three to a row, under `title`: `draw` fills panel k.
fn draw_figure(
    out: &Path,
    n: usize,
    title: &str,
    mut draw: impl FnMut(&DrawingArea<BitMapBackend, plotters::coord::Shift>, usize) -> Result<()>,
) -> Result<()> {
    ensure_font()?;
    let err = plot_error(out);
    let (rows, cols) = panel_grid(n);
    let root =
        BitMapBackend::new(out, (500 * cols as u32, 40 + 400 * rows as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
    let root = root
        .titled(title, ("sans-serif", 22))
        .map_err(|e| err(e.to_string()))?;
    for (k, area) in root.split_evenly((rows, cols)).iter().enumerate().take(n) {
        draw(area, k)?;
    }
    root.present().map_err(|e| err(e.to_string()))
}

/// Draws one panel per metric, one line per series, into a PNG.
pub fn plot_curves(series: &[Series], panels: &[Panel], title: &str, out: &Path) -> Result<()> {
    let err = plot_error(out);
    draw_figure(out, panels.len(), title, |area, k| {
        let panel = &panels[k];
        let lines: Vec<(usize, Vec<(f64, f64)>)> = series
            .iter()
            .enumerate()
            .map(|(i, s)| (i, s.points(panel.key)))
            .filter(|(_, p)| !p.is_empty())
            .collect();
        let all = lines.iter().flat_map(|(_, p)| p.iter());
        let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
        for &(x, y) in all {
            x0 = x0.min(x);
            x1 = x1.max(x);
            y0 = y0.min(y);
            y1 = y1.max(y);
        }
        if lines.is_empty() {
            return Ok(());
        }
        if x1 <= x0 {
            x1 = x0 + 1.0;
        }
        let pad = ((y1 - y0) * 0.05).max(1e-3);
        let mut chart = ChartBuilder::on(area)
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d(x0..x1, (y0 - pad)..(y1 + pad))
            .map_err(|e| err(e.to_string()))?;
        chart
            .configure_mesh()
            .x_desc("learner step")
            .y_desc(panel.label)
            .x_labels(6)
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| format!("{y:.*}", panel.decimals))
            .label_style(("sans-serif", 14))
            .axis_desc_style(("sans-serif", 15))
            .draw()
            .map_err(|e| err(e.to_string()))?;
        for (i, points) in lines {
            let color = color(i);
            chart
                .draw_series(LineSeries::new(points, color.stroke_width(2)))
                .map_err(|e| err(e.to_string()))?
                .label(series[i].label.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 14))
            .position(if panel.legend_low {
                SeriesLabelPosition::LowerRight
            } else {
                SeriesLabelPosition::UpperRight
            })
            .draw()
            .map_err(|e| err(e.to_string()))?;
        Ok(())
    })
}

/// One line of a sweep's summary figure: points (x, mean, std) or, for a group with no x value,
/// one (mean, std) drawn flat across the figure.
struct SweepLine {
    label: String,
    points: Vec<(f64, f64, f64)>,
    flat: Option<(f64, f64)>,
    /// Dashed companion line (the theory's prediction), if any.
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

fn short_key(key: &str) -> &str {
    key.rsplit('.').next().unwrap_or(key)
}

/// A label for a group of runs: its grid values other than `x`, else its loss.
fn group_label(values: &[(String, String)], x: Option<&str>, cfg: &Config) -> String {
    let parts: Vec<String> = values
        .iter()
        .filter(|(k, _)| Some(k.as_str()) != x)
        .map(|(k, v)| {
            if k == "loss.kind" {
                v.clone()
            } else {
                format!("{}={v}", short_key(k))
            }
        })
        .collect();
    if !parts.is_empty() {
        return parts.join(", ");
    }
    match cfg.loss.kind {
        LossKind::Asymre => "asymre".into(),
        LossKind::Reinforce => "reinforce".into(),
        LossKind::IsReinforce => "is_reinforce".into(),
        LossKind::Topr => "topr".into(),
        LossKind::Grpo => "grpo".into(),
    }
}

/// Mean over runs of their metric rows, step by step (steps every run logged).
fn mean_rows(dirs: &[PathBuf]) -> Result<Vec<serde_json::Map<String, serde_json::Value>>> {
    use std::collections::BTreeMap;
    let mut acc: BTreeMap<u64, BTreeMap<String, (f64, usize)>> = BTreeMap::new();
    for dir in dirs {
        for row in read_jsonl(&dir.join("metrics.jsonl"))? {
            let Some(step) = row.get(tags::STEP).and_then(|v| v.as_u64()) else {
                continue;
            };
            let slot = acc.entry(step).or_default();
            for (k, v) in &row {
                if let Some(x) = v.as_f64().filter(|x| x.is_finite()) {
                    let e = slot.entry(k.clone()).or_insert((0.0, 0));
                    e.0 += x;
                    e.1 += 1;
                }
            }
        }
    }
    Ok(acc
        .into_values()
        .map(|keys| {
            keys.into_iter()
                .filter_map(|(k, (sum, n))| {
                    Some((
                        k,
                        serde_json::Value::from(serde_json::Number::from_f64(sum / n as f64)?),
                    ))
                })
                .collect()
        })
        .collect())
}

/// Writes a sweep's figures into `out`: `final.png` (final reward, held-out completion or support,
/// entropy against the swept value, one line per loss/other grid value, error bars over seeds)
/// and `curves.png` (mean curves per swept value). Several sweeps (e.g. AsymRE over δV and the
/// comparison losses) share the figures.
pub fn plot_sweeps(dirs: &[PathBuf], out: &Path) -> Result<Vec<PathBuf>> {
    /// The runs of one grid point (seeds pooled), with their config read once.
    struct Group {
        values: Vec<(String, String)>,
        rows: Vec<crate::app::experiments::report::RunRow>,
        dirs: Vec<PathBuf>,
        cfg: Config,
    }
    let mut manifests = Vec::new();
    let mut groups = Vec::new();
    for dir in dirs {
        let (m, rows) = crate::app::experiments::report::read_rows(dir)?;
        if rows.is_empty() {
            return Err(Error::input(format!(
                "{}: no finished runs yet",
                dir.display()
            )));
        }
        manifests.push(m);
        for (values, group) in crate::app::experiments::report::groups(&rows) {
            let dirs: Vec<PathBuf> = group
                .iter()
                .map(|r| crate::app::experiments::report::run_dir(dir, &r.point))
                .collect();
            let cfg = crate::run::open_run_dir(&dirs[0])?.0;
            groups.push(Group {
                values,
                rows: group.into_iter().cloned().collect(),
                dirs,
                cfg,
            });
        }
    }
    let x_key = numeric_axis(&manifests);
    // Bandit runs report their support (and the theory's prediction).
    let bandit = groups[0].rows.iter().any(|r| r.support.is_some());

    // final.png
    type Pick = fn(&crate::app::experiments::report::RunRow) -> Option<f64>;
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
    let mut panels: Vec<(String, Vec<SweepLine>)> = Vec::new();
    for (label, pick, theory) in &metrics {
        let mut lines: Vec<SweepLine> = Vec::new();
        for g in &groups {
            let name = group_label(&g.values, x_key.as_deref(), &g.cfg);
            let ys: Vec<f64> = g
                .rows
                .iter()
                .filter_map(pick)
                .filter(|y| y.is_finite())
                .collect();
            if ys.is_empty() {
                continue;
            }
            let (m, s) = crate::app::experiments::report::mean_std(&ys);
            let x = x_key
                .as_ref()
                .and_then(|k| g.values.iter().find(|(kk, _)| kk == k))
                .and_then(|(_, v)| v.parse::<f64>().ok());
            let line = match lines.iter_mut().position(|l| l.label == name) {
                Some(i) => &mut lines[i],
                None => {
                    lines.push(SweepLine {
                        label: name,
                        points: Vec::new(),
                        flat: None,
                        theory: Vec::new(),
                    });
                    lines.last_mut().expect("just pushed")
                }
            };
            match x {
                Some(x) => {
                    line.points.push((x, m, s));
                    if let Some(t) = theory {
                        let ts: Vec<f64> = g.rows.iter().filter_map(t).collect();
                        if ts.len() == g.rows.len() {
                            line.theory
                                .push((x, crate::app::experiments::report::mean_std(&ts).0));
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
        if !lines.is_empty() {
            panels.push((label.to_string(), lines));
        }
    }
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let final_png = out.join("final.png");
    let x_label = x_key.clone().unwrap_or_else(|| "run".into());
    draw_sweep_panels(
        &panels,
        &x_label,
        "Final values over seeds (mean ± std)",
        &final_png,
    )?;

    // curves.png
    let series = groups
        .iter()
        .map(|g| {
            Ok(Series {
                label: group_label(&g.values, None, &g.cfg),
                rows: mean_rows(&g.dirs)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let curve_panels: Vec<Panel> = if bandit {
        BANDIT_PANELS.to_vec()
    } else {
        vec![TOOL_PANELS[0], TOOL_PANELS[1], TOOL_PANELS[3]]
    };
    let curves_png = out.join("curves.png");
    plot_curves(
        &series,
        &curve_panels,
        "Mean over seeds per swept value",
        &curves_png,
    )?;
    Ok(vec![final_png, curves_png])
}

fn draw_sweep_panels(
    panels: &[(String, Vec<SweepLine>)],
    x_label: &str,
    title: &str,
    out: &Path,
) -> Result<()> {
    let err = plot_error(out);
    draw_figure(out, panels.len(), title, |area, k| {
        let (label, lines) = &panels[k];
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
        let pad = ((y1 - y0) * 0.08).max(1e-3);
        (y0, y1) = (y0 - pad, y1 + pad);
        let xpad = (x1 - x0) * 0.04;
        let mut chart = ChartBuilder::on(area)
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d((x0 - xpad)..(x1 + xpad), y0..y1)
            .map_err(|e| err(e.to_string()))?;
        chart
            .configure_mesh()
            .x_desc(x_label)
            .y_desc(label.as_str())
            .x_labels(8)
            .x_label_formatter(&|x| format!("{x:.2}"))
            .y_label_formatter(&|y| {
                if y1 - y0 >= 10.0 {
                    format!("{y:.0}")
                } else {
                    format!("{y:.2}")
                }
            })
            .label_style(("sans-serif", 14))
            .axis_desc_style(("sans-serif", 15))
            .draw()
            .map_err(|e| err(e.to_string()))?;
        for (i, line) in lines.iter().enumerate() {
            let color = color(i);
            let mut points = line.points.clone();
            if flat_only {
                if let Some((m, s)) = line.flat {
                    points.push((i as f64, m, s));
                }
            }
            if !points.is_empty() {
                chart
                    .draw_series(LineSeries::new(
                        points.iter().map(|p| (p.0, p.1)),
                        color.stroke_width(2),
                    ))
                    .map_err(|e| err(e.to_string()))?
                    .label(line.label.clone())
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                    });
                let w = (x1 - x0) * 0.008;
                for &(x, m, s) in &points {
                    let bar = vec![
                        PathElement::new(vec![(x, m - s), (x, m + s)], color.stroke_width(1)),
                        PathElement::new(
                            vec![(x - w, m - s), (x + w, m - s)],
                            color.stroke_width(1),
                        ),
                        PathElement::new(
                            vec![(x - w, m + s), (x + w, m + s)],
                            color.stroke_width(1),
                        ),
                    ];
                    chart.draw_series(bar).map_err(|e| err(e.to_string()))?;
                    chart
                        .draw_series([Circle::new((x, m), 3, color.filled())])
                        .map_err(|e| err(e.to_string()))?;
                }
            } else if let Some((m, _)) = line.flat {
                // A loss without the swept knob: a dashed level across the figure.
                let dashes = dashed(x0, x1, m);
                chart
                    .draw_series(
                        dashes
                            .into_iter()
                            .map(|seg| PathElement::new(seg, color.stroke_width(2))),
                    )
                    .map_err(|e| err(e.to_string()))?
                    .label(format!("{} (no {})", line.label, short_key(x_label)))
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 6, y)], color.stroke_width(2))
                    });
            }
            if !line.theory.is_empty() {
                let segments = line
                    .theory
                    .windows(2)
                    .flat_map(|w| dashed_segment(w[0], w[1]))
                    .collect::<Vec<_>>();
                chart
                    .draw_series(
                        segments
                            .into_iter()
                            .map(|seg| PathElement::new(seg, BLACK.stroke_width(1))),
                    )
                    .map_err(|e| err(e.to_string()))?
                    .label(format!("{} (theory)", line.label))
                    .legend(|(x, y)| {
                        PathElement::new(vec![(x, y), (x + 6, y)], BLACK.stroke_width(1))
                    });
            }
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 13))
            .position(SeriesLabelPosition::LowerLeft)
            .draw()
            .map_err(|e| err(e.to_string()))?;
        Ok(())
    })
}

/// A horizontal dashed line at `y` from `x0` to `x1`, as segments.
fn dashed(x0: f64, x1: f64, y: f64) -> Vec<Vec<(f64, f64)>> {
    dashed_segment((x0, y), (x1, y))
}

/// A dashed straight line from `a` to `b`: 40 dashes.
fn dashed_segment(a: (f64, f64), b: (f64, f64)) -> Vec<Vec<(f64, f64)>> {
    let n = 40;
    (0..n)
        .step_by(2)
        .map(|i| {
            let t0 = i as f64 / n as f64;
            let t1 = (i + 1) as f64 / n as f64;
            let at = |t: f64| (a.0 + (b.0 - a.0) * t, a.1 + (b.1 - a.1) * t);
            vec![at(t0), at(t1)]
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_labels_get_the_run_name_and_distinct_ones_stay() {
        let mut labels: Vec<String> = ["δV = -0.1", "δV = -0.1", "grpo"].map(String::from).into();
        let names: Vec<String> = ["lookup", "lookup-1000", "g"].map(String::from).into();
        disambiguate(&mut labels, &names);
        assert_eq!(
            labels,
            ["δV = -0.1 · lookup", "δV = -0.1 · lookup-1000", "grpo"]
        );
    }
}
