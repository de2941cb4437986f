//! A figure: a title, panels at most three to a row, one legend for the whole figure in a band
//! under the panels, and a caption. Lines are drawn solid or dashed by their style; noisy ones
//! as a moving average over their raw values, drawn faint behind.
use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::error::{Error, Result};

/// A panel's drawing area.
pub type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;

const PANEL_W: u32 = 500;
const PANEL_H: u32 = 380;
const TITLE_H: u32 = 40;
/// One row of legend entries, and the caption's line.
const LINE_H: u32 = 24;
const FONT: &str = "sans-serif";

/// One entry of the figure's legend: a swatch of the line and its text.
#[derive(Debug, Clone)]
pub struct Entry {
    pub text: String,
    pub colour: RGBAColor,
    pub dash: usize,
    /// A marker on the swatch (points with error bars).
    pub marker: bool,
}

/// The i-th colour: ten well-separated colours, then they repeat.
pub fn colour(i: usize) -> RGBAColor {
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

/// Dash and gap lengths in pixels of line style `dash` (0: solid).
fn pattern(dash: usize) -> Option<(u32, u32)> {
    match dash % 4 {
        0 => None,
        1 => Some((9, 5)),
        2 => Some((2, 4)),
        _ => Some((16, 5)),
    }
}

/// An error of drawing `out`, as one line naming it.
pub fn plot_error(out: &Path) -> impl Fn(String) -> Error + '_ {
    move |e| Error::input(format!("plot {}: {e}", out.display()))
}

/// Draws a PNG of `n` panels under `title`, `draw` filling panel k, with `legend` in a band
/// below the panels and `caption` under it.
pub fn draw_figure(
    out: &Path,
    n: usize,
    title: &str,
    legend: &[Entry],
    caption: &str,
    mut draw: impl FnMut(&Area, usize) -> Result<()>,
) -> Result<()> {
    super::ensure_font()?;
    let err = plot_error(out);
    let cols = n.clamp(1, 3);
    let rows = n.div_ceil(cols).max(1);
    let width = PANEL_W * cols as u32;
    let per_row = legend_columns(legend, width);
    let legend_rows = legend.len().div_ceil(per_row.max(1)) as u32;
    let caption_h = if caption.is_empty() { 0 } else { LINE_H };
    let height = TITLE_H + PANEL_H * rows as u32 + legend_rows * LINE_H + caption_h + 12;
    let root = BitMapBackend::new(out, (width, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
    let root = root
        .titled(title, (FONT, 22))
        .map_err(|e| err(e.to_string()))?;
    let (panels, below) = root.split_vertically(PANEL_H * rows as u32);
    for (k, area) in panels.split_evenly((rows, cols)).iter().enumerate().take(n) {
        draw(area, k)?;
    }
    draw_legend(&below, legend, per_row).map_err(&err)?;
    if !caption.is_empty() {
        let y = (legend_rows * LINE_H + 4) as i32;
        below
            .draw(&Text::new(
                caption.to_string(),
                (12, y),
                (FONT, 14).into_font().color(&RGBColor(90, 90, 90)),
            ))
            .map_err(|e| err(e.to_string()))?;
    }
    root.present().map_err(|e| err(e.to_string()))
}

/// The width one legend entry takes: the swatch, the text and a gap.
fn entry_width(e: &Entry) -> u32 {
    // DejaVu Sans at 15 px: about 8 px a character on average.
    40 + 8 * e.text.chars().count() as u32 + 24
}

/// Entries per legend row: as many of the widest as fit.
fn legend_columns(legend: &[Entry], width: u32) -> usize {
    let widest = legend.iter().map(entry_width).max().unwrap_or(1);
    ((width - 24) / widest).max(1) as usize
}

fn draw_legend(area: &Area, legend: &[Entry], per_row: usize) -> std::result::Result<(), String> {
    let e = |e: DrawingAreaErrorKind<_>| e.to_string();
    let widest = legend.iter().map(entry_width).max().unwrap_or(1) as i32;
    for (i, entry) in legend.iter().enumerate() {
        let (row, col) = ((i / per_row) as i32, (i % per_row) as i32);
        let (x, y) = (
            12 + col * widest,
            4 + row * LINE_H as i32 + LINE_H as i32 / 2,
        );
        let style = entry.colour.stroke_width(3);
        let swatch = vec![(x, y), (x + 30, y)];
        match pattern(entry.dash) {
            None => area.draw(&PathElement::new(swatch, style)).map_err(e)?,
            Some((on, off)) => area
                .draw(&plotters::element::DashedPathElement::new(
                    swatch, on, off, style,
                ))
                .map_err(e)?,
        }
        if entry.marker {
            area.draw(&Circle::new((x + 15, y), 4, entry.colour.filled()))
                .map_err(e)?;
        }
        let text = Text::new(entry.text.clone(), (x + 38, y - 8), (FONT, 15).into_font());
        area.draw(&text).map_err(e)?;
    }
    Ok(())
}

/// A panel's axes: the mesh with a light grid, its labels and their formats.
pub fn mesh<DB: DrawingBackend>(
    chart: &mut ChartContext<
        DB,
        Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
    >,
    x_desc: &str,
    y_desc: &str,
    x_decimals: usize,
    y_decimals: usize,
) -> std::result::Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .x_labels(6)
        .y_labels(6)
        .x_label_formatter(&|x| tick(*x, x_decimals))
        .y_label_formatter(&|y| tick(*y, y_decimals))
        .bold_line_style(BLACK.mix(0.10))
        .light_line_style(BLACK.mix(0.03))
        .axis_style(BLACK.mix(0.6))
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 15))
        .draw()
}

/// An axis label: `x` to `decimals` places, never "-0.00".
fn tick(x: f64, decimals: usize) -> String {
    let s = format!("{x:.decimals$}");
    match s.strip_prefix('-') {
        Some(rest) if rest.chars().all(|c| c == '0' || c == '.') => rest.to_string(),
        _ => s,
    }
}

/// Draws `points` as one line of colour `colour`, solid or in dash style `dash`, `width` px.
pub fn line<DB: DrawingBackend>(
    chart: &mut ChartContext<
        DB,
        Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
    >,
    points: &[(f64, f64)],
    colour: RGBAColor,
    dash: usize,
    width: u32,
) -> std::result::Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let style = colour.stroke_width(width);
    match pattern(dash) {
        None => chart.draw_series(LineSeries::new(points.iter().copied(), style))?,
        Some((on, off)) => chart.draw_series(DashedLineSeries::new(
            points.iter().copied(),
            on,
            off,
            style,
        ))?,
    };
    Ok(())
}

/// The moving average of `points` over a centred window of `window` points (shorter at the
/// ends), at the same x.
pub fn moving_average(points: &[(f64, f64)], window: usize) -> Vec<(f64, f64)> {
    let half = window / 2;
    (0..points.len())
        .map(|i| {
            let from = i.saturating_sub(half);
            let to = (i + window - half).min(points.len());
            let ys = &points[from..to];
            let mean = ys.iter().map(|p| p.1).sum::<f64>() / ys.len() as f64;
            (points[i].0, mean)
        })
        .collect()
}

/// The window that smooths curves of `n` points: a twelfth of them, at least 1, at most 50.
pub fn window_for(n: usize) -> usize {
    (n / 12).clamp(1, 50)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moving_average_is_centred_and_shorter_at_the_ends() {
        let p: Vec<(f64, f64)> = (0..5).map(|i| (i as f64, (i * i) as f64)).collect();
        let m = moving_average(&p, 3);
        assert_eq!(m[0], (0.0, 0.5));
        assert_eq!(m[2], (2.0, (1.0 + 4.0 + 9.0) / 3.0));
        assert_eq!(m[4], (4.0, (9.0 + 16.0) / 2.0));
        assert_eq!(moving_average(&p, 1), p);
        assert_eq!(
            (tick(-0.0001, 2), tick(-0.1, 2), tick(3.0, 0)),
            ("0.00".into(), "-0.10".into(), "3".into())
        );
        assert_eq!(
            (window_for(10), window_for(240), window_for(5000)),
            (1, 20, 50)
        );
    }
}
