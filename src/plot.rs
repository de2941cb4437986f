//! PNG plots of runs' metrics, drawn with plotters (pure Rust; the font is read at run time from
//! the system's TrueType fonts).
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::prelude::*;

use crate::config::{BaselineKind, Config, LossKind};
use crate::error::{Error, Result};
use crate::metrics::{read_jsonl, tags};

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

/// Reads the runs' metrics and labels.
pub fn load_runs(dirs: &[PathBuf]) -> Result<Vec<Series>> {
    dirs.iter()
        .map(|dir| {
            let (cfg, _) = crate::train::open_run_dir(dir)?;
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
        .collect()
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

/// Draws one panel per metric, one line per series, into a PNG.
pub fn plot_curves(series: &[Series], panels: &[Panel], title: &str, out: &Path) -> Result<()> {
    ensure_font()?;
    let err = |e: String| Error::input(format!("plot {}: {e}", out.display()));
    let width = 520 * panels.len() as u32;
    let root = BitMapBackend::new(out, (width, 440)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
    let root = root
        .titled(title, ("sans-serif", 22))
        .map_err(|e| err(e.to_string()))?;
    let areas = root.split_evenly((1, panels.len()));
    for (area, panel) in areas.iter().zip(panels) {
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
            continue;
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
            let color = Palette99::pick(i).to_rgba();
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
    }
    root.present().map_err(|e| err(e.to_string()))?;
    Ok(())
}
