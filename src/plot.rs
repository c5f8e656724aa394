//! Training curves as a self-contained SVG, without dependencies: loss (train and
//! validation) on the left, accuracy (for regression, the validation R²) on the right,
//! against the epoch. The loss axis is logarithmic (and titled so) when the plotted losses,
//! all positive, span more than two decades; linear otherwise.
//!
//! This module owns the drawing only: axes with round tick steps, a legend, lines with
//! markers in a colourblind-safe palette (Okabe-Ito blue for training, vermillion and dashed
//! for validation, with different marker shapes). It does not collect the metrics (the
//! trainer does) and writes files only through [`crate::fs::write_atomic`].
//!
//! Non-finite values are left out (the line breaks there) so the SVG never holds NaN or
//! infinity; a history of one epoch is a single point; an empty one draws panels saying
//! "no data".

use std::fmt::Write as _;
use std::path::Path;

use crate::error::Result;
use crate::trainer::EpochMetrics;

const WIDTH: f64 = 960.0;
const HEIGHT: f64 = 400.0;
const PANEL_WIDTH: f64 = WIDTH / 2.0;
/// Plot area inside a panel, relative to the panel's left edge.
const PLOT_LEFT: f64 = 72.0;
const PLOT_RIGHT: f64 = PANEL_WIDTH - 24.0;
const PLOT_TOP: f64 = 84.0;
const PLOT_BOTTOM: f64 = 336.0;
/// Above this many points per series, markers are drawn only where a point stands alone.
const MARKER_LIMIT: usize = 150;

/// Okabe-Ito blue and vermillion: distinct under the common colour-vision deficiencies.
const TRAIN_COLOUR: &str = "#0072B2";
const VAL_COLOUR: &str = "#D55E00";

#[derive(Clone, Copy, PartialEq)]
enum Marker {
    Circle,
    Square,
}

struct Series {
    /// Stable identifier in the SVG (`data-series`).
    id: &'static str,
    label: &'static str,
    colour: &'static str,
    dashed: bool,
    marker: Marker,
    /// (epoch, value) in history order; `None` where the value is missing or non-finite.
    points: Vec<Option<(f64, f64)>>,
}

impl Series {
    fn new(
        id: &'static str,
        validation: bool,
        history: &[EpochMetrics],
        value: impl Fn(&EpochMetrics) -> Option<f32>,
    ) -> Series {
        let points = history
            .iter()
            .map(|m| {
                value(m)
                    .filter(|v| v.is_finite())
                    .map(|v| (m.epoch as f64, f64::from(v)))
            })
            .collect();
        Series {
            id,
            label: if validation { "validation" } else { "train" },
            colour: if validation { VAL_COLOUR } else { TRAIN_COLOUR },
            dashed: validation,
            marker: if validation {
                Marker::Square
            } else {
                Marker::Circle
            },
            points,
        }
    }

    fn finite(&self) -> impl Iterator<Item = (f64, f64)> + '_ {
        self.points.iter().flatten().copied()
    }
}

/// An SVG (about 960x400) of the loss and accuracy curves of `history`, titled `title`.
///
/// For regression (no accuracy), `val_variance` is the validation targets' `SS_tot / values`
/// in the units the loss is computed in ([`crate::metrics::mean_variance`] of the scaled
/// targets): the right panel then plots the validation R² per epoch as
/// `1 - val_loss / val_variance`, which is `1 - SS_res / SS_tot` pooled over the target
/// columns in the scaled units (the MSE loss averages over every value). For one target
/// column this is exactly the R² in the targets' own units, since the affine target scaling
/// multiplies SS_res and SS_tot by the same factor; for several columns it weighs each
/// column by its scaled variance rather than its raw one.
pub fn curves_svg(history: &[EpochMetrics], title: &str, val_variance: Option<f64>) -> String {
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif">"#,
        w = WIDTH,
        h = HEIGHT
    );
    let title = escape(title);
    let _ = writeln!(svg, "<title>{title}</title>");
    let _ = writeln!(
        svg,
        r#"<rect x="0" y="0" width="{WIDTH}" height="{HEIGHT}" fill="white"/>"#
    );
    let _ = writeln!(
        svg,
        r##"<text x="{}" y="26" text-anchor="middle" font-size="16" font-weight="bold" fill="#222">{title}</text>"##,
        WIDTH / 2.0
    );

    // Loss.
    let mut loss = vec![Series::new("train_loss", false, history, |m| {
        Some(m.train_loss)
    })];
    if history.iter().any(|m| m.val_loss.is_some()) {
        loss.push(Series::new("val_loss", true, history, |m| m.val_loss));
    }
    let loss_note = history.is_empty().then_some("no data");
    let losses: Vec<f64> = loss.iter().flat_map(|s| s.finite().map(|p| p.1)).collect();
    let (loss_label, scale) = match log_scale(&losses) {
        true => ("loss (log scale)", Scale::Log),
        false => ("loss", Scale::Linear),
    };
    panel(&mut svg, 0.0, "loss", loss_label, scale, &loss, loss_note);

    // Accuracy.
    let mut acc = Vec::new();
    if history.iter().any(|m| m.train_accuracy.is_some()) {
        acc.push(Series::new("train_accuracy", false, history, |m| {
            m.train_accuracy
        }));
    }
    if history.iter().any(|m| m.val_accuracy.is_some()) {
        acc.push(Series::new("val_accuracy", true, history, |m| {
            m.val_accuracy
        }));
    }
    let r2_of = val_variance.filter(|v| *v > 0.0 && v.is_finite());
    let (name, label) = match r2_of {
        Some(var) if acc.is_empty() && history.iter().any(|m| m.val_loss.is_some()) => {
            acc.push(Series::new("val_r2", true, history, |m| {
                m.val_loss.map(|l| (1.0 - f64::from(l) / var) as f32)
            }));
            ("r2", "R² (validation)")
        }
        Some(_) | None => ("accuracy", "accuracy"),
    };
    let acc_note = if history.is_empty() {
        Some("no data")
    } else if acc.is_empty() {
        Some("no accuracy (regression)")
    } else {
        None
    };
    panel(
        &mut svg,
        PANEL_WIDTH,
        name,
        label,
        Scale::Linear,
        &acc,
        acc_note,
    );

    svg.push_str("</svg>\n");
    svg
}

/// Writes [`curves_svg`] to `path` atomically.
pub fn write_curves(
    path: &Path,
    history: &[EpochMetrics],
    title: &str,
    val_variance: Option<f64>,
) -> Result<()> {
    crate::fs::write_atomic(path, curves_svg(history, title, val_variance).as_bytes())
}

/// How a panel's y axis maps values.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Scale {
    Linear,
    /// Decades: ticks at powers of ten.
    Log,
}

impl Scale {
    fn name(self) -> &'static str {
        match self {
            Scale::Linear => "linear",
            Scale::Log => "log",
        }
    }
}

/// Whether losses `values` are drawn on a logarithmic axis: when they span more than two
/// decades (largest over smallest above 100), all of them positive.
fn log_scale(values: &[f64]) -> bool {
    let (lo, hi) = min_max(values);
    !values.is_empty() && lo > 0.0 && hi / lo > 100.0
}

/// One panel at horizontal offset `x0`, `data-panel` `name` and titled `label`: frame, title,
/// and either the series (y mapped by `scale`) or `note`.
fn panel(
    svg: &mut String,
    x0: f64,
    name: &str,
    label: &str,
    scale: Scale,
    series: &[Series],
    note: Option<&str>,
) {
    let left = x0 + PLOT_LEFT;
    let right = x0 + PLOT_RIGHT;
    let (top, bottom) = (PLOT_TOP, PLOT_BOTTOM);
    let _ = writeln!(
        svg,
        r#"<g class="panel" data-panel="{name}" data-scale="{}">"#,
        scale.name()
    );
    let _ = writeln!(
        svg,
        r##"<text x="{:.1}" y="54" text-anchor="middle" font-size="14" fill="#222">{}</text>"##,
        (left + right) / 2.0,
        escape(label)
    );
    // On a log axis every value is drawn as its log10 (the caller checked they are > 0).
    let to_axis = |y: f64| match scale {
        Scale::Linear => y,
        Scale::Log => y.log10(),
    };

    let xs: Vec<f64> = series
        .iter()
        .flat_map(|s| s.finite().map(|p| p.0))
        .collect();
    let ys: Vec<f64> = series
        .iter()
        .flat_map(|s| s.finite().map(|p| to_axis(p.1)))
        .collect();
    let note = note.or(xs.is_empty().then_some("no data"));
    if let Some(note) = note {
        frame(svg, left, right, top, bottom);
        let _ = writeln!(
            svg,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="13" fill="#666">{}</text>"##,
            (left + right) / 2.0,
            (top + bottom) / 2.0,
            escape(note)
        );
        svg.push_str("</g>\n");
        return;
    }

    // Domains: x tight around the epochs (integer ticks), y widened to round ticks.
    let (mut x_lo, mut x_hi) = min_max(&xs);
    if x_hi - x_lo < 1.0 {
        let mid = (x_lo + x_hi) / 2.0;
        x_lo = mid - 0.5;
        x_hi = mid + 0.5;
    }
    let x_step = nice_step(x_hi - x_lo, 6.0).max(1.0);
    let (y_min, y_max) = min_max(&ys);
    let (y_lo, y_hi, y_step) = match scale {
        Scale::Linear => nice_domain(y_min, y_max),
        // Whole decades, a tick every one (or every 2, 5, ... when there are many).
        Scale::Log => {
            let (lo, hi) = (y_min.floor(), y_max.ceil().max(y_min.floor() + 1.0));
            (lo, hi, nice_step(hi - lo, 6.0).max(1.0).round())
        }
    };
    let y_label = |y: f64| match scale {
        Scale::Linear => tick_label(y, y_step),
        Scale::Log => {
            let v = 10f64.powf(y);
            tick_label(v, v)
        }
    };
    // Epochs keep a few pixels from the frame so edge markers stay whole.
    let (x_left, x_right) = (left + 8.0, right - 8.0);
    let sx = |x: f64| x_left + (x - x_lo) / (x_hi - x_lo) * (x_right - x_left);
    let sy = |y: f64| bottom - (to_axis(y) - y_lo) / (y_hi - y_lo) * (bottom - top);

    // Grid and y ticks.
    for y in ticks(y_lo, y_hi, y_step) {
        let py = bottom - (y - y_lo) / (y_hi - y_lo) * (bottom - top);
        let _ = writeln!(
            svg,
            r##"<line x1="{left:.1}" y1="{py:.1}" x2="{right:.1}" y2="{py:.1}" stroke="#e6e6e6" stroke-width="1"/>"##
        );
        let _ = writeln!(
            svg,
            r##"<line x1="{:.1}" y1="{py:.1}" x2="{left:.1}" y2="{py:.1}" stroke="#444" stroke-width="1"/>"##,
            left - 5.0
        );
        let _ = writeln!(
            svg,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="end" font-size="11" fill="#333">{}</text>"##,
            left - 8.0,
            py + 4.0,
            y_label(y)
        );
    }
    // x ticks.
    for x in ticks(x_lo, x_hi, x_step) {
        let px = sx(x);
        let _ = writeln!(
            svg,
            r##"<line x1="{px:.1}" y1="{bottom:.1}" x2="{px:.1}" y2="{:.1}" stroke="#444" stroke-width="1"/>"##,
            bottom + 5.0
        );
        let _ = writeln!(
            svg,
            r##"<text x="{px:.1}" y="{:.1}" text-anchor="middle" font-size="11" fill="#333">{}</text>"##,
            bottom + 18.0,
            tick_label(x, x_step)
        );
    }
    frame(svg, left, right, top, bottom);
    let _ = writeln!(
        svg,
        r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="12" fill="#333">epoch</text>"##,
        (left + right) / 2.0,
        bottom + 40.0
    );

    // Series.
    for s in series {
        let dash = if s.dashed {
            r#" stroke-dasharray="6 3""#
        } else {
            ""
        };
        let _ = writeln!(
            svg,
            r#"<g class="series" data-series="{}" fill="{c}" stroke="{c}">"#,
            s.id,
            c = s.colour
        );
        for run in s.points.split(|p| p.is_none()) {
            let pts: Vec<String> = run
                .iter()
                .flatten()
                .map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y)))
                .collect();
            if pts.len() >= 2 {
                let _ = writeln!(
                    svg,
                    r#"<polyline points="{}" fill="none" stroke-width="2"{dash}/>"#,
                    pts.join(" ")
                );
            }
        }
        let many = s.finite().count() > MARKER_LIMIT;
        for (i, p) in s.points.iter().enumerate() {
            let Some((x, y)) = *p else { continue };
            let alone = (i == 0 || s.points[i - 1].is_none())
                && s.points.get(i + 1).is_none_or(|q| q.is_none());
            if !many || alone {
                marker(svg, s.marker, sx(x), sy(y));
            }
        }
        svg.push_str("</g>\n");
    }

    // Legend, above the plot area.
    let mut lx = left;
    let ly = top - 14.0;
    for s in series {
        let dash = if s.dashed {
            r#" stroke-dasharray="6 3""#
        } else {
            ""
        };
        let _ = writeln!(
            svg,
            r#"<g class="legend" fill="{c}" stroke="{c}"><line x1="{lx:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke-width="2"{dash}/>"#,
            lx + 24.0,
            c = s.colour
        );
        marker(svg, s.marker, lx + 12.0, ly);
        let _ = writeln!(
            svg,
            r##"<text x="{:.1}" y="{:.1}" font-size="12" fill="#222" stroke="none">{}</text></g>"##,
            lx + 30.0,
            ly + 4.0,
            s.label
        );
        lx += 110.0;
    }
    svg.push_str("</g>\n");
}

fn frame(svg: &mut String, left: f64, right: f64, top: f64, bottom: f64) {
    let _ = writeln!(
        svg,
        r##"<rect x="{left:.1}" y="{top:.1}" width="{:.1}" height="{:.1}" fill="none" stroke="#444" stroke-width="1"/>"##,
        right - left,
        bottom - top
    );
}

fn marker(svg: &mut String, kind: Marker, x: f64, y: f64) {
    match kind {
        Marker::Circle => {
            let _ = writeln!(svg, r#"<circle cx="{x:.1}" cy="{y:.1}" r="3"/>"#);
        }
        Marker::Square => {
            let _ = writeln!(
                svg,
                r#"<rect x="{:.1}" y="{:.1}" width="6" height="6"/>"#,
                x - 3.0,
                y - 3.0
            );
        }
    }
}

fn min_max(values: &[f64]) -> (f64, f64) {
    values
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        })
}

/// A round step (1, 2 or 5 times a power of ten) giving about `target` intervals over
/// `range`.
fn nice_step(range: f64, target: f64) -> f64 {
    let raw = range / target;
    if !(raw.is_finite() && raw > 0.0) {
        return 1.0;
    }
    let mag = 10f64.powf(raw.log10().floor());
    let n = raw / mag;
    let m = if n <= 1.0 {
        1.0
    } else if n <= 2.0 {
        2.0
    } else if n <= 5.0 {
        5.0
    } else {
        10.0
    };
    m * mag
}

/// `[lo, hi]` widened to multiples of a round step, and that step. A zero-width range is
/// padded first, so the result always has `lo < hi`.
fn nice_domain(mut lo: f64, mut hi: f64) -> (f64, f64, f64) {
    if !(lo.is_finite() && hi.is_finite()) || lo > hi {
        return (0.0, 1.0, 0.2);
    }
    if hi - lo <= hi.abs().max(lo.abs()) * 1e-9 {
        let pad = if lo == 0.0 { 1.0 } else { lo.abs() * 0.1 };
        lo -= pad;
        hi += pad;
    }
    let step = nice_step(hi - lo, 5.0);
    let nlo = (lo / step).floor() * step;
    let nhi = (hi / step).ceil() * step;
    if nlo < nhi && nlo.is_finite() && nhi.is_finite() {
        (nlo, nhi, step)
    } else {
        (lo, hi, hi - lo)
    }
}

/// The multiples of `step` in `[lo, hi]` (at most 100).
fn ticks(lo: f64, hi: f64, step: f64) -> Vec<f64> {
    if !(step > 0.0 && step.is_finite() && lo.is_finite() && hi.is_finite()) {
        return vec![];
    }
    let first = (lo / step - 1e-9).ceil();
    let last = (hi / step + 1e-9).floor();
    if last < first || last - first > 100.0 {
        return vec![];
    }
    (0..=(last - first) as usize)
        .map(|k| (first + k as f64) * step)
        .collect()
}

/// A tick value with as many decimals as its step needs, in exponent form when very large
/// or very small.
fn tick_label(v: f64, step: f64) -> String {
    let v = if v.abs() < step * 1e-6 { 0.0 } else { v };
    if v == 0.0 {
        return "0".into();
    }
    if step >= 1e-4 && v.abs() < 1e7 {
        let decimals = (-step.log10() - 1e-9).ceil().max(0.0) as usize;
        format!("{v:.decimals$}")
    } else {
        let digits = (v.abs().log10().floor() - step.log10().floor()).clamp(0.0, 6.0) as usize;
        format!("{v:.digits$e}")
    }
}

/// `text` safe inside XML text and attribute values (characters XML 1.0 forbids become
/// U+FFFD).
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(' '),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn epoch(e: usize, loss: f32, val: Option<f32>, acc: Option<(f32, f32)>) -> EpochMetrics {
        EpochMetrics {
            epoch: e,
            lr: 0.01,
            train_loss: loss,
            train_accuracy: acc.map(|a| a.0),
            val_loss: val,
            val_accuracy: acc.and_then(|a| val.map(|_| a.1)),
            seconds: 0.5,
            samples_per_s: 1000.0,
        }
    }

    fn history(n: usize, val: bool, acc: bool) -> Vec<EpochMetrics> {
        (1..=n)
            .map(|e| {
                let t = e as f32;
                epoch(
                    e,
                    2.0 / t,
                    val.then_some(2.2 / t + 0.05),
                    acc.then_some((1.0 - 0.5 / t, 0.97 - 0.5 / t)),
                )
            })
            .collect()
    }

    /// A minimal XML checker: balanced, properly nested tags, quoted attributes, valid
    /// entities, one root `svg`.
    fn check_xml(s: &str) -> std::result::Result<(), String> {
        fn check_entities(text: &str) -> std::result::Result<(), String> {
            let mut rest = text;
            while let Some(i) = rest.find('&') {
                rest = &rest[i + 1..];
                let end = rest.find(';').ok_or("'&' without ';'")?;
                let ent = &rest[..end];
                let ok = matches!(ent, "amp" | "lt" | "gt" | "quot" | "apos")
                    || (ent.starts_with('#') && ent.len() > 1);
                if !ok {
                    return Err(format!("bad entity &{ent};"));
                }
            }
            Ok(())
        }
        let mut stack: Vec<String> = Vec::new();
        let mut roots = Vec::new();
        let mut rest = s;
        loop {
            let Some(lt) = rest.find('<') else {
                if !rest.trim().is_empty() && stack.is_empty() {
                    return Err("text outside the root".into());
                }
                check_entities(rest)?;
                break;
            };
            let text = &rest[..lt];
            if text.contains('>') {
                return Err(format!("stray '>' in text {text:?}"));
            }
            if !text.trim().is_empty() && stack.is_empty() {
                return Err("text outside the root".into());
            }
            check_entities(text)?;
            rest = &rest[lt..];
            if let Some(r) = rest.strip_prefix("<!--") {
                let end = r.find("-->").ok_or("unclosed comment")?;
                rest = &r[end + 3..];
                continue;
            }
            if let Some(r) = rest.strip_prefix("<?") {
                let end = r.find("?>").ok_or("unclosed declaration")?;
                rest = &r[end + 2..];
                continue;
            }
            // Find the tag's end outside quotes.
            let mut quote = None;
            let mut end = None;
            for (i, c) in rest.char_indices().skip(1) {
                match (quote, c) {
                    (None, '"' | '\'') => quote = Some(c),
                    (Some(q), c) if c == q => quote = None,
                    (Some(_), '<') => return Err("'<' inside an attribute".into()),
                    (None, '<') => return Err("'<' inside a tag".into()),
                    (None, '>') => {
                        end = Some(i);
                        break;
                    }
                    _ => {}
                }
            }
            let end = end.ok_or("unclosed tag")?;
            let tag = &rest[1..end];
            rest = &rest[end + 1..];
            check_entities(tag)?;
            if let Some(name) = tag.strip_prefix('/') {
                let open = stack
                    .pop()
                    .ok_or(format!("close </{name}> with nothing open"))?;
                if open != name.trim() {
                    return Err(format!("<{open}> closed by </{name}>"));
                }
                continue;
            }
            let self_closing = tag.ends_with('/');
            let body = tag.trim_end_matches('/');
            let name = body.split_whitespace().next().ok_or("empty tag")?;
            if !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == ':')
            {
                return Err(format!("bad tag name {name:?}"));
            }
            // Attributes: name="value" pairs.
            let mut attrs = body[name.len()..].trim();
            while !attrs.is_empty() {
                let eq = attrs
                    .find('=')
                    .ok_or(format!("attribute without value in <{name}>"))?;
                let q = attrs[eq + 1..]
                    .chars()
                    .next()
                    .filter(|c| *c == '"' || *c == '\'')
                    .ok_or(format!("unquoted attribute in <{name}>"))?;
                let close = attrs[eq + 2..]
                    .find(q)
                    .ok_or(format!("unterminated attribute in <{name}>"))?;
                attrs = attrs[eq + 2 + close + 1..].trim_start();
            }
            if stack.is_empty() {
                roots.push(name.to_string());
            }
            if !self_closing {
                stack.push(name.to_string());
            }
        }
        if !stack.is_empty() {
            return Err(format!("unclosed {stack:?}"));
        }
        if roots != ["svg"] {
            return Err(format!("roots {roots:?}"));
        }
        Ok(())
    }

    fn assert_clean(svg: &str) {
        check_xml(svg).unwrap_or_else(|e| panic!("not well-formed: {e}\n{svg}"));
        assert!(!svg.contains("NaN"), "{svg}");
        assert!(!svg.to_ascii_lowercase().contains("inf"), "{svg}");
    }

    #[test]
    fn checker_rejects_broken_xml() {
        assert!(check_xml("<svg><g></svg>").is_err());
        assert!(check_xml("<svg><g></g>").is_err());
        assert!(check_xml("<svg a=\"1></svg>").is_err());
        assert!(check_xml("<svg>a & b</svg>").is_err());
        assert!(check_xml("<svg/><svg/>").is_err());
        assert!(check_xml("<svg><g a=\"1\"/>x &amp; y</svg>").is_ok());
    }

    #[test]
    fn both_panels_with_validation() {
        let svg = curves_svg(&history(30, true, true), "mnist 784-128-10", None);
        assert_clean(&svg);
        for id in ["train_loss", "val_loss", "train_accuracy", "val_accuracy"] {
            assert!(svg.contains(&format!("data-series=\"{id}\"")), "{id}");
        }
        assert!(svg.contains("<polyline"));
        assert!(svg.contains(">validation</text>"));
        assert!(svg.contains(">train</text>"));
        assert!(svg.contains("mnist 784-128-10"));
        assert!(svg.contains("font-family=\"sans-serif\""));
        assert!(svg.contains(TRAIN_COLOUR) && svg.contains(VAL_COLOUR));
        assert!(!svg.contains("no data"));
    }

    #[test]
    fn training_only_has_no_validation_series() {
        let svg = curves_svg(&history(5, false, true), "t", None);
        assert_clean(&svg);
        assert!(svg.contains("data-series=\"train_loss\""));
        assert!(!svg.contains("data-series=\"val_loss\""));
        assert!(!svg.contains("validation"));
    }

    #[test]
    fn regression_says_so() {
        let svg = curves_svg(&history(5, true, false), "regression", None);
        assert_clean(&svg);
        assert!(svg.contains("no accuracy (regression)"));
        assert!(svg.contains("data-series=\"val_loss\""));
    }

    #[test]
    fn one_epoch_is_a_point() {
        let svg = curves_svg(&history(1, true, true), "one", None);
        assert_clean(&svg);
        assert!(svg.contains("<circle"));
        assert!(!svg.contains("<polyline"));
        // The epoch tick is labelled.
        assert!(svg.contains(">1</text>"));
    }

    #[test]
    fn empty_history_says_no_data() {
        let svg = curves_svg(&[], "empty", None);
        assert_clean(&svg);
        assert_eq!(svg.matches("no data").count(), 2);
    }

    #[test]
    fn non_finite_values_are_skipped() {
        let mut h = history(6, true, true);
        h[1].train_loss = f32::NAN;
        h[2].val_loss = Some(f32::INFINITY);
        h[3].train_accuracy = Some(f32::NEG_INFINITY);
        h[4].val_accuracy = Some(f32::NAN);
        let svg = curves_svg(&h, "gaps", None);
        assert_clean(&svg);
        // Train loss breaks in two runs around epoch 2: [1], [3..6].
        let all_nan: Vec<EpochMetrics> = h
            .iter()
            .map(|m| EpochMetrics {
                train_loss: f32::NAN,
                val_loss: None,
                ..*m
            })
            .collect();
        let svg = curves_svg(&all_nan, "diverged", None);
        assert_clean(&svg);
        assert!(svg.contains("no data"));
    }

    #[test]
    fn constant_and_extreme_values() {
        let flat: Vec<EpochMetrics> = (1..=4).map(|e| epoch(e, 0.5, Some(0.5), None)).collect();
        assert_clean(&curves_svg(&flat, "flat", None));
        let zero: Vec<EpochMetrics> = (1..=4).map(|e| epoch(e, 0.0, None, None)).collect();
        assert_clean(&curves_svg(&zero, "zero", None));
        let huge = vec![
            epoch(1, f32::MAX, None, None),
            epoch(2, -f32::MAX, None, None),
            epoch(3, 1e-30, None, None),
        ];
        assert_clean(&curves_svg(&huge, "huge", None));
        let tiny: Vec<EpochMetrics> = (1..=3)
            .map(|e| epoch(e, 1e-7 * e as f32, None, None))
            .collect();
        assert_clean(&curves_svg(&tiny, "tiny", None));
        // Many epochs: lines without a marker per point.
        let long = history(1000, true, true);
        let svg = curves_svg(&long, "long", None);
        assert_clean(&svg);
        assert!(svg.matches("<circle").count() < 10);
    }

    #[test]
    fn title_is_escaped() {
        let svg = curves_svg(&history(3, false, false), "a < b & \"c\" 'd' \u{1}", None);
        assert_clean(&svg);
        assert!(svg.contains("a &lt; b &amp; &quot;c&quot; &apos;d&apos;"));
        assert!(!svg.contains('\u{1}'));
    }

    #[test]
    fn log_scale_when_losses_span_more_than_two_decades() {
        assert!(log_scale(&[2.3, 0.02]));
        assert!(log_scale(&[100.1, 1.0]));
        // Exactly two decades, or fewer, stays linear.
        assert!(!log_scale(&[100.0, 1.0]));
        assert!(!log_scale(&[2.3, 0.5, 0.1]));
        // A zero or negative value cannot go on a log axis.
        assert!(!log_scale(&[10.0, 0.0]));
        assert!(!log_scale(&[1000.0, -1.0, 0.5]));
        assert!(!log_scale(&[]));
    }

    #[test]
    fn loss_axis_is_labelled_by_its_scale() {
        // Train loss 10 down to 0.01 over 4 epochs: three decades.
        let mut h = history(4, false, true);
        for (m, l) in h.iter_mut().zip([10.0, 1.0, 0.1, 0.01]) {
            m.train_loss = l;
        }
        let svg = curves_svg(&h, "t", None);
        assert_clean(&svg);
        assert!(
            svg.contains(r#"data-panel="loss" data-scale="log""#),
            "{svg}"
        );
        assert!(svg.contains(">loss (log scale)</text>"));
        // Ticks at the decades from 0.01 to 10, evenly spaced.
        let tick_y = |label: &str| -> f64 {
            let end = svg.find(&format!(">{label}</text>")).unwrap();
            let y = svg[..end].rfind("y=\"").unwrap() + 3;
            svg[y..].split('"').next().unwrap().parse().unwrap()
        };
        let ys: Vec<f64> = ["0.01", "0.1", "1", "10"]
            .iter()
            .map(|l| tick_y(l))
            .collect();
        for w in ys.windows(3) {
            assert!(((w[0] - w[1]) - (w[1] - w[2])).abs() < 0.2, "{ys:?}");
        }
        assert!(ys[0] > ys[3], "{ys:?}");

        // The default history's losses stay within two decades: linear.
        let svg = curves_svg(&history(4, true, true), "t", None);
        assert!(svg.contains(r#"data-panel="loss" data-scale="linear""#));
        assert!(svg.contains(">loss</text>"));
    }

    #[test]
    fn regression_plots_the_validation_r2() {
        // Validation loss 2.2 / e + 0.05 against a variance of 0.5: R² = 1 - loss / 0.5.
        let h = history(5, true, false);
        let svg = curves_svg(&h, "regression", Some(0.5));
        assert_clean(&svg);
        assert!(svg.contains(r#"data-panel="r2""#), "{svg}");
        assert!(svg.contains(r#"data-series="val_r2""#));
        assert!(svg.contains(">R² (validation)</text>"));
        assert!(!svg.contains("no accuracy"));
        // No validation loss: nothing to plot, and the note stays.
        let svg = curves_svg(&history(5, false, false), "regression", Some(0.5));
        assert!(svg.contains("no accuracy (regression)"));
        // Classification keeps its accuracy whatever the variance.
        let svg = curves_svg(&history(5, true, true), "digits", Some(0.5));
        assert!(svg.contains(r#"data-panel="accuracy""#) && !svg.contains("val_r2"));
    }

    #[test]
    fn round_ticks() {
        assert_eq!(nice_domain(0.13, 0.97), (0.0, 1.0, 0.2));
        let (lo, hi, step) = nice_domain(0.5, 0.5);
        assert!(lo < 0.5 && hi > 0.5 && step > 0.0);
        assert_eq!(nice_domain(0.0, 0.0), (-1.0, 1.0, 0.5));
        let labels: Vec<String> = ticks(0.0, 1.0, 0.2)
            .into_iter()
            .map(|v| tick_label(v, 0.2))
            .collect();
        assert_eq!(labels, ["0", "0.2", "0.4", "0.6", "0.8", "1.0"]);
        assert_eq!(ticks(0.5, 1.5, 1.0), vec![1.0]);
        assert_eq!(tick_label(250.0, 50.0), "250");
        assert_eq!(tick_label(0.05, 0.05), "0.05");
        assert_eq!(tick_label(3e-6, 1e-6), "3e-6");
        assert_eq!(nice_step(1000.0, 6.0), 200.0);
    }

    #[test]
    fn write_curves_writes_the_svg() {
        let dir = std::env::temp_dir().join(format!("soma-plot-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("curves.svg");
        let h = history(4, true, true);
        write_curves(&path, &h, "run", None).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            curves_svg(&h, "run", None)
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
