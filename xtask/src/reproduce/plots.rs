//! Figures: line charts with mean ± std bands, a shaded failure window and a threshold line,
//! written as PNG and SVG with plotters.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::error::XtaskError;

/// One line of a chart, with an optional band (e.g. mean ± std).
#[derive(Debug, Clone)]
pub struct Series {
    /// Legend label.
    pub label: String,
    /// Line colour.
    pub color: RGBColor,
    /// (x, y) points; non-finite y break the line.
    pub points: Vec<(f64, f64)>,
    /// (x, low, high) of the shaded band, if any.
    pub band: Vec<(f64, f64, f64)>,
}

/// Everything a chart shows.
#[derive(Debug, Clone)]
pub struct ChartSpec {
    /// Title on top.
    pub title: String,
    /// x-axis label.
    pub x_label: String,
    /// y-axis label.
    pub y_label: String,
    /// The lines.
    pub series: Vec<Series>,
    /// The failure window [start, end) to shade.
    pub window: Option<(f64, f64)>,
    /// A horizontal reference line (value, label), e.g. the threshold ε.
    pub hline: Option<(f64, String)>,
}

/// Colours used for the arms, consistently across figures.
pub mod palette {
    use plotters::style::RGBColor;
    /// Baseline.
    pub const BASELINE: RGBColor = RGBColor(214, 39, 40);
    /// Controlled (probe).
    pub const CONTROLLED: RGBColor = RGBColor(31, 119, 180);
    /// Loss-spike rollback.
    pub const LOSS_ROLLBACK: RGBColor = RGBColor(255, 127, 14);
    /// The clean run (no fault): grey.
    pub const CLEAN: RGBColor = RGBColor(110, 110, 110);
    /// The controlled run with the gradient gate off: teal.
    pub const PROBE_ONLY: RGBColor = RGBColor(23, 190, 207);
    /// Algorithm 1 with plain rollback: purple.
    pub const ALGORITHM_1: RGBColor = RGBColor(148, 103, 189);
    /// Threshold lines.
    pub const THRESHOLD: RGBColor = RGBColor(44, 160, 44);
}

static FONT: OnceLock<Result<(), String>> = OnceLock::new();

/// Registers a TrueType font for figure text (once per process).
///
/// # Errors
/// [`XtaskError::NoFont`] when neither `STAB_FONT` nor a known system path holds a font.
pub fn ensure_font() -> Result<(), XtaskError> {
    let result = FONT.get_or_init(|| {
        let mut candidates: Vec<PathBuf> = std::env::var_os("STAB_FONT")
            .map(PathBuf::from)
            .into_iter()
            .collect();
        candidates.extend(
            [
                "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
                "/usr/share/fonts/TTF/DejaVuSans.ttf",
                "/usr/share/fonts/dejavu/DejaVuSans.ttf",
                "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
                "/System/Library/Fonts/Supplemental/Arial.ttf",
                "C:\\Windows\\Fonts\\arial.ttf",
            ]
            .map(PathBuf::from),
        );
        for path in &candidates {
            if let Ok(bytes) = std::fs::read(path) {
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return Ok(());
                }
            }
        }
        Err(candidates
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", "))
    });
    result
        .clone()
        .map_err(|looked| XtaskError::NoFont { looked })
}

/// Draws `spec` to `<stem>.png` and `<stem>.svg` and returns both paths.
///
/// # Errors
/// [`XtaskError::Plot`] or [`XtaskError::NoFont`].
pub fn render(spec: &ChartSpec, stem: &Path) -> Result<Vec<PathBuf>, XtaskError> {
    ensure_font()?;
    let png = stem.with_extension("png");
    let svg = stem.with_extension("svg");
    let size = (960, 540);
    let plot_err = |path: &Path| {
        let path = path.to_path_buf();
        move |message: String| XtaskError::Plot { path, message }
    };
    {
        let root = BitMapBackend::new(&png, size).into_drawing_area();
        draw(spec, &root).map_err(plot_err(&png))?;
        root.present().map_err(|e| plot_err(&png)(e.to_string()))?;
    }
    {
        let root = SVGBackend::new(&svg, size).into_drawing_area();
        draw(spec, &root).map_err(plot_err(&svg))?;
        root.present().map_err(|e| plot_err(&svg)(e.to_string()))?;
    }
    Ok(vec![png, svg])
}

fn y_range(spec: &ChartSpec) -> (f64, f64) {
    let values = spec
        .series
        .iter()
        .flat_map(|s| {
            s.points
                .iter()
                .map(|p| p.1)
                .chain(s.band.iter().flat_map(|b| [b.1, b.2]))
        })
        .chain(spec.hline.iter().map(|h| h.0))
        .filter(|v| v.is_finite());
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let pad = ((hi - lo) * 0.05).max(1e-9);
    (lo - pad, hi + pad)
}

fn x_range(spec: &ChartSpec) -> (f64, f64) {
    let hi = spec
        .series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .fold(1.0_f64, f64::max);
    (0.0, hi)
}

/// Splits a line at non-finite values so that gaps show where a run diverged.
fn segments(points: &[(f64, f64)]) -> Vec<Vec<(f64, f64)>> {
    let mut out = vec![Vec::new()];
    for &(x, y) in points {
        if y.is_finite() {
            out.last_mut().expect("non-empty").push((x, y));
        } else if !out.last().expect("non-empty").is_empty() {
            out.push(Vec::new());
        }
    }
    out.retain(|s| !s.is_empty());
    out
}

fn draw<DB: DrawingBackend>(spec: &ChartSpec, root: &DrawingArea<DB, Shift>) -> Result<(), String> {
    let e = |err: DrawingAreaErrorKind<DB::ErrorType>| err.to_string();
    root.fill(&WHITE).map_err(e)?;
    let (x0, x1) = x_range(spec);
    let (y0, y1) = y_range(spec);
    let mut chart = ChartBuilder::on(root)
        .caption(&spec.title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(e)?;
    chart
        .configure_mesh()
        .x_desc(&spec.x_label)
        .y_desc(&spec.y_label)
        .label_style(("sans-serif", 14))
        .light_line_style(RGBColor(235, 235, 235))
        .draw()
        .map_err(e)?;

    if let Some((start, end)) = spec.window {
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(start, y0), (end, y1)],
                RGBColor(255, 200, 200).mix(0.5).filled(),
            )))
            .map_err(e)?
            .label("failure window")
            .legend(|(x, y)| {
                Rectangle::new(
                    [(x, y - 5), (x + 16, y + 5)],
                    RGBColor(255, 200, 200).filled(),
                )
            });
    }
    for series in &spec.series {
        if !series.band.is_empty() {
            let mut polygon: Vec<(f64, f64)> = series
                .band
                .iter()
                .filter(|b| b.1.is_finite() && b.2.is_finite())
                .map(|b| (b.0, b.2.min(y1)))
                .collect();
            polygon.extend(
                series
                    .band
                    .iter()
                    .rev()
                    .filter(|b| b.1.is_finite() && b.2.is_finite())
                    .map(|b| (b.0, b.1.max(y0))),
            );
            chart
                .draw_series(std::iter::once(Polygon::new(
                    polygon,
                    series.color.mix(0.18).filled(),
                )))
                .map_err(e)?;
        }
        let color = series.color;
        let mut first = true;
        for segment in segments(&series.points) {
            let drawn = chart
                .draw_series(LineSeries::new(segment, color.stroke_width(2)))
                .map_err(e)?;
            if first {
                drawn.label(series.label.clone()).legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 16, y)], color.stroke_width(2))
                });
                first = false;
            }
        }
    }
    if let Some((value, label)) = &spec.hline {
        chart
            .draw_series(LineSeries::new(
                [(x0, *value), (x1, *value)],
                palette::THRESHOLD.stroke_width(2),
            ))
            .map_err(e)?
            .label(label.clone())
            .legend(|(x, y)| {
                PathElement::new([(x, y), (x + 16, y)], palette::THRESHOLD.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(e)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_break_at_non_finite_values() {
        let s = segments(&[(0.0, 1.0), (1.0, f64::NAN), (2.0, 2.0), (3.0, 3.0)]);
        assert_eq!(s, vec![vec![(0.0, 1.0)], vec![(2.0, 2.0), (3.0, 3.0)]]);
    }

    #[test]
    fn renders_png_and_svg() {
        let dir = std::env::temp_dir().join(format!("stab-plot-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let spec = ChartSpec {
            title: "test".into(),
            x_label: "step".into(),
            y_label: "y".into(),
            series: vec![Series {
                label: "a".into(),
                color: palette::CONTROLLED,
                points: (0..20).map(|i| (i as f64, (i as f64).sin())).collect(),
                band: (0..20)
                    .map(|i| (i as f64, (i as f64).sin() - 0.2, (i as f64).sin() + 0.2))
                    .collect(),
            }],
            window: Some((5.0, 8.0)),
            hline: Some((0.5, "ε".into())),
        };
        let files = render(&spec, &dir.join("chart")).unwrap();
        for f in files {
            let len = std::fs::metadata(&f).unwrap().len();
            assert!(len > 1000, "{} is only {len} bytes", f.display());
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
