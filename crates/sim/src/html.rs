//! The self-contained HTML report: the comparison tables plus two hand-written inline SVG charts
//! (cumulative ETTR over time, lost GPU-hours by cause). No scripts, no external files.
//!
//! Laid out for a laptop screen: the page is at most 1200 px wide and centred, wide tables
//! scroll sideways inside their own box instead of pushing the page, and the charts scale down
//! with the window (SVG `viewBox`).

use std::fmt::Write;

use crate::report::{Report, fmt_thousands};
use crate::sweep::{Range, SweepReport, fmt_value};

const COLOURS: [&str; 8] =
    ["#d62728", "#ff7f0e", "#1f77b4", "#9467bd", "#8c564b", "#7f7f7f", "#bcbd22", "#17becf"];
const STRATEGY_COLOURS: [&str; 6] = ["#d62728", "#ff7f0e", "#1f77b4", "#9467bd", "#8c564b", "#2ca02c"];

const STYLE: &str = "body{font-family:sans-serif;margin:0 auto;padding:1em 1.5em;max-width:1200px;\
box-sizing:border-box;line-height:1.4}\
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.6em}\
.scroll{overflow-x:auto;max-width:100%;margin:0.5em 0}\
table{border-collapse:collapse;font-size:13px;font-variant-numeric:tabular-nums}\
th,td{padding:3px 6px;border-bottom:1px solid #ddd;white-space:nowrap;text-align:right}\
th:first-child,td:first-child{text-align:left}\
thead th{border-bottom:2px solid #999;vertical-align:bottom}\
tfoot th,tfoot td{border-top:2px solid #999;font-weight:bold}\
svg{max-width:100%;height:auto;display:block}\
.note{color:#555;font-size:13px;white-space:pre-line}";

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// A value axis: from `lo` to `hi` with a labelled tick every `step` (all fractions, 1 = 100 %).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Axis {
    pub lo: f64,
    pub hi: f64,
    pub step: f64,
}

impl Axis {
    /// The tick values from `lo` to `hi`, both included.
    pub fn ticks(&self) -> Vec<f64> {
        let n = ((self.hi - self.lo) / self.step).round() as usize;
        (0..=n).map(|i| self.lo + self.step * i as f64).collect()
    }
}

/// The ETTR axis for values between `min` and `max` (fractions): a round step of 0.5, 1, 2, 5,
/// 10 or 20 points giving at most five intervals over the data (seven once rounded out to the
/// step), bounds inside 0–100 %, so the lines fill the plot instead of sharing its top band.
pub fn ettr_axis(min: f64, max: f64) -> Axis {
    const BAND: f64 = 0.01;
    if !(min.is_finite() && max.is_finite()) || min > max {
        return Axis { lo: 0.0, hi: 1.0, step: 0.2 };
    }
    let (mut min, mut max) = (min.clamp(0.0, 1.0), max.clamp(0.0, 1.0));
    // A flat line still gets a band of one point around it, kept inside 0–100 %.
    if max - min < BAND {
        let mid = (min + max) / 2.0;
        (min, max) = (mid - BAND / 2.0, mid + BAND / 2.0);
        if min < 0.0 {
            (min, max) = (0.0, BAND);
        } else if max > 1.0 {
            (min, max) = (1.0 - BAND, 1.0);
        }
    }
    let span = max - min;
    let step = [0.005, 0.01, 0.02, 0.05, 0.1, 0.2].into_iter().find(|s| span / s <= 5.0).unwrap_or(0.2);
    // Rounded out to the step's grid; the epsilon keeps 0.8 / 0.02 = 39.999… on 0.8.
    let lo = (((min / step) + 1e-9).floor() * step).max(0.0);
    let hi = (((max / step) - 1e-9).ceil() * step).min(1.0);
    Axis { lo, hi, step }
}

/// Day ticks for an `days`-day x axis: a round step (1, 2, 5, 7, 14, 30, 60, 90, 180, 365 …
/// days) giving at most ten intervals; the ticks are the multiples of it from 0 to `days`.
pub fn day_ticks(days: usize) -> Vec<usize> {
    let step = [1, 2, 5, 7, 14, 30, 60, 90, 180, 365, 730, 1825]
        .into_iter()
        .find(|s| days.div_ceil(*s) <= 10)
        .unwrap_or(3650);
    (0..=days / step).map(|i| i * step).collect()
}

/// The GPU-weighted cumulative ETTR of each strategy's training gangs at the end of each day
/// (strategies without training gangs are left out).
fn ettr_series(report: &Report) -> Vec<(usize, Vec<f64>)> {
    report
        .strategies
        .iter()
        .enumerate()
        .filter_map(|(si, s)| {
            let total_gpus: u64 = s.training.iter().map(|t| t.gpus).sum();
            if total_gpus == 0 {
                return None;
            }
            let n = s.training.iter().map(|t| t.ettr_by_day.len()).min().unwrap_or(0);
            let values = (0..n)
                .map(|d| {
                    s.training.iter().map(|t| t.ettr_by_day[d] * t.gpus as f64).sum::<f64>()
                        / total_gpus as f64
                })
                .collect();
            Some((si, values))
        })
        .collect()
}

/// Line chart of each strategy's GPU-weighted cumulative ETTR at the end of each day.
fn ettr_chart(report: &Report) -> String {
    let (w, h, left, right, top, bottom) = (960.0, 340.0, 60.0, 200.0, 20.0, 46.0);
    let plot_w = w - left - right;
    let plot_h = h - top - bottom;
    let series = ettr_series(report);
    // The whole simulated period: samples are taken at the end of each full day.
    let days = series
        .iter()
        .map(|(_, v)| v.len())
        .max()
        .unwrap_or(0)
        .max(report.duration_days.ceil() as usize)
        .max(1);
    let (min, max) = series
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let axis = ettr_axis(min, max);
    let y_of = |v: f64| top + plot_h * (1.0 - ((v - axis.lo) / (axis.hi - axis.lo)).clamp(0.0, 1.0));
    let x_of = |day: f64| left + plot_w * day / days as f64;
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img" aria-label="ETTR over time">"#
    );
    let decimals = if axis.step < 0.01 { 1 } else { 0 };
    for v in axis.ticks() {
        let y = y_of(v);
        let _ = write!(
            svg,
            r##"<line x1="{left}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#eee"/><text x="{:.1}" y="{:.1}" font-size="11" text-anchor="end">{:.decimals$}%</text>"##,
            left + plot_w,
            left - 6.0,
            y + 4.0,
            v * 100.0
        );
    }
    for d in day_ticks(days) {
        let x = x_of(d as f64);
        let _ = write!(
            svg,
            r##"<line x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{:.1}" stroke="#999"/><text x="{x:.1}" y="{:.1}" font-size="11" text-anchor="middle">{d}</text>"##,
            top + plot_h,
            top + plot_h + 5.0,
            top + plot_h + 18.0
        );
    }
    let _ = write!(
        svg,
        r##"<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#999"/>"##
    );
    let _ = write!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" font-size="12" text-anchor="middle">simulated day</text>"#,
        left + plot_w / 2.0,
        h - 6.0
    );
    for (row, (si, values)) in series.iter().enumerate() {
        // Each strategy keeps its colour whichever strategies ran.
        let name = &report.strategies[*si].name;
        let index = crate::Strategy::ALL.iter().position(|s| s.name() == name).unwrap_or(*si);
        let colour = STRATEGY_COLOURS[index % STRATEGY_COLOURS.len()];
        let points: Vec<String> = values
            .iter()
            .enumerate()
            .map(|(d, &v)| format!("{:.1},{:.1}", x_of((d + 1) as f64), y_of(v)))
            .collect();
        let _ = write!(
            svg,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"#,
            points.join(" ")
        );
        let ly = top + 18.0 * row as f64 + 10.0;
        let _ = write!(
            svg,
            r#"<rect x="{:.1}" y="{:.1}" width="12" height="3" fill="{colour}"/><text x="{:.1}" y="{:.1}" font-size="12">{}</text>"#,
            left + plot_w + 12.0,
            ly - 2.0,
            left + plot_w + 28.0,
            ly + 3.0,
            escape(&report.strategies[*si].name)
        );
    }
    svg.push_str("</svg>");
    svg
}

/// Horizontal stacked bars of lost GPU-hours by cause, one bar per strategy.
fn lost_chart(report: &Report) -> String {
    let rows = report.strategies.len().max(1);
    let (w, left, right, top, bar_h, gap) = (960.0, 170.0, 110.0, 20.0, 26.0, 14.0);
    let legend_h = 50.0;
    let h = top + rows as f64 * (bar_h + gap) + legend_h;
    let plot_w = w - left - right;
    let max_total = report.strategies.iter().map(|s| s.gpu_hours_lost.total).fold(0.0, f64::max).max(1.0);
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {h:.0}" width="{w}" height="{h:.0}" role="img" aria-label="lost GPU-hours by cause">"#
    );
    for (si, s) in report.strategies.iter().enumerate() {
        let y = top + si as f64 * (bar_h + gap);
        let _ = write!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" font-size="12" text-anchor="end">{}</text>"#,
            left - 8.0,
            y + bar_h / 2.0 + 4.0,
            escape(&s.name)
        );
        let mut x = left;
        for (ci, (cause, value)) in s.gpu_hours_lost.by_cause.by_cause().iter().enumerate() {
            let bw = plot_w * value / max_total;
            if bw <= 0.0 {
                continue;
            }
            let _ = write!(
                svg,
                r#"<rect x="{x:.1}" y="{y:.1}" width="{bw:.1}" height="{bar_h}" fill="{}"><title>{}: {} GPU-h</title></rect>"#,
                COLOURS[ci % COLOURS.len()],
                cause,
                fmt_thousands(*value)
            );
            x += bw;
        }
        let _ = write!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" font-size="11">{} GPU-h</text>"#,
            (x + 4.0).min(w - right + 4.0),
            y + bar_h / 2.0 + 4.0,
            fmt_thousands(s.gpu_hours_lost.total)
        );
    }
    if let Some(first) = report.strategies.first() {
        let ly = top + rows as f64 * (bar_h + gap) + 10.0;
        for (ci, (cause, _)) in first.gpu_hours_lost.by_cause.by_cause().iter().enumerate() {
            let lx = 10.0 + (ci % 4) as f64 * 235.0;
            let row_y = ly + (ci / 4) as f64 * 18.0;
            let _ = write!(
                svg,
                r#"<rect x="{lx:.1}" y="{row_y:.1}" width="10" height="10" fill="{}"/><text x="{:.1}" y="{:.1}" font-size="11">{}</text>"#,
                COLOURS[ci % COLOURS.len()],
                lx + 14.0,
                row_y + 9.0,
                cause
            );
        }
    }
    svg.push_str("</svg>");
    svg
}

/// An HTML table of `rows` (the first is the header), optionally closed by a footer row, inside
/// a box that scrolls sideways when the window is narrower than the table.
fn table(rows: &[Vec<String>], footer: Option<&[String]>) -> String {
    let mut html = String::from("<div class=\"scroll\"><table>");
    let row = |html: &mut String, cells: &[String], tag: &str| {
        html.push_str("<tr>");
        for (i, cell) in cells.iter().enumerate() {
            let tag = if i == 0 { "th" } else { tag };
            let _ = write!(html, "<{tag}>{}</{tag}>", escape(cell));
        }
        html.push_str("</tr>");
    };
    if let Some((header, body)) = rows.split_first() {
        html.push_str("<thead>");
        row(&mut html, header, "th");
        html.push_str("</thead><tbody>");
        for cells in body {
            row(&mut html, cells, "td");
        }
        html.push_str("</tbody>");
    }
    if let Some(cells) = footer {
        html.push_str("<tfoot>");
        row(&mut html, cells, "td");
        html.push_str("</tfoot>");
    }
    html.push_str("</table></div>");
    html
}

/// devheal's degradation detectors as scored against the trace: one row each (none when devheal
/// did not run with them).
fn detector_table(report: &Report) -> Option<String> {
    let d = report.strategies.iter().find(|s| s.name == "devheal").and_then(|s| s.detectors.as_ref())?;
    let header = [
        "detector",
        "findings",
        "true",
        "precision",
        "episodes",
        "found",
        "recall",
        "delay median",
        "delay p95",
    ];
    let mut rows = vec![header.iter().map(|h| h.to_string()).collect::<Vec<_>>()];
    let ratio = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}"));
    let secs = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.0} s"));
    for (name, s) in [
        ("straggler (gang median, acted on)", &d.straggler),
        ("baseline shift (panel, scored only)", &d.baseline_shift),
        ("hang (rank 0 silence)", &d.hang),
    ] {
        rows.push(vec![
            name.to_string(),
            s.findings.to_string(),
            s.true_findings.to_string(),
            ratio(s.precision),
            s.episodes.to_string(),
            s.found.to_string(),
            ratio(s.recall),
            secs(s.delay_median_s),
            secs(s.delay_p95_s),
        ]);
    }
    Some(table(&rows, None))
}

/// The fault trace's classes with their event counts and a total row.
fn fault_table(report: &Report) -> String {
    let mut rows = vec![vec!["class".to_string(), "events".to_string()]];
    rows.extend(report.trace.faults_by_class.iter().map(|(name, n)| vec![name.clone(), n.to_string()]));
    let total: u64 = report.trace.faults_by_class.iter().map(|(_, n)| n).sum();
    table(&rows, Some(&["total".to_string(), total.to_string()]))
}

/// The whole report as one HTML document.
pub fn render(report: &Report) -> String {
    let mut html = head(report);
    html.push_str(&body(report));
    html.push_str(FOOT);
    html
}

/// A sweep's report: the baseline run's report, then a "Sensitivity" section with the tornado
/// charts (devheal's ETTR and its lead over the best other strategy, one bar per swept
/// parameter) and a table per parameter.
pub fn render_sweep(sweep: &SweepReport) -> String {
    let mut html = head(&sweep.baseline);
    html.push_str(&body(&sweep.baseline));
    html.push_str(
        "<h2>Sensitivity</h2><p>Each swept parameter's values rerun the scenario on the same trace. \
         A bar spans devheal's lowest and highest figure over the values (the values at each end are \
         printed beside it); the line is the baseline run. Widest first.</p>",
    );
    let _ = write!(html, "<h3>devheal's ETTR</h3>{}", tornado_chart(sweep, Tornado::Ettr));
    let _ = write!(
        html,
        "<h3>devheal minus the best other strategy (ETTR points)</h3>{}",
        tornado_chart(sweep, Tornado::Lead)
    );
    for s in &sweep.sweeps {
        let _ = write!(html, "<h3>{} <small>({})</small></h3>", escape(&s.param), escape(&s.description));
        let mut rows = vec![{
            let mut h = vec!["value".to_string()];
            h.extend(sweep.baseline.strategies.iter().map(|s| s.name.clone()));
            h.push("devheal − best other".into());
            h
        }];
        for p in &s.points {
            let mut row = vec![fmt_value(p.value)];
            row.extend(p.ettr.iter().map(|(_, e)| format!("{:.2}%", e * 100.0)));
            row.push(p.devheal_lead.map_or("-".into(), |l| format!("{:+.2}", l * 100.0)));
            rows.push(row);
        }
        html.push_str(&table(&rows, None));
    }
    html.push_str(FOOT);
    html
}

const FOOT: &str = "<p>Model and sources: docs/simulator.md.</p></body></html>\n";

fn head(report: &Report) -> String {
    let mut html = String::new();
    let _ = write!(
        html,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>devheal sim: {}</title><style>{STYLE}</style></head><body>",
        escape(&report.scenario)
    );
    html
}

fn body(report: &Report) -> String {
    let mut html = String::new();
    let _ = write!(
        html,
        "<h1>devheal sim: {}</h1><p>{}</p><p>Seed {}; {} GPUs; {} simulated days. Every strategy replays the same fault trace.</p>",
        escape(&report.scenario),
        escape(&report.description),
        report.seed,
        report.gpus,
        report.duration_days
    );
    if let Some(replay) = &report.replay {
        let _ = write!(html, "<p class=\"note\">{}</p>", escape(&replay.lines()));
    }
    let _ = write!(html, "<h2>Comparison</h2><p>{}</p>", escape(&report.headline()));
    if let Some(noise) = report.noise_line() {
        let _ = write!(html, "<p class=\"note\">{}</p>", escape(&noise));
    }
    html.push_str(&table(&report.loss_rows(), None));
    html.push_str(&table(&report.count_rows(), None));
    if let Some(summary) = report.straggler_summary() {
        let _ = write!(html, "<p class=\"note\">{}</p>", escape(&summary));
    }
    html.push_str(
        "<p class=\"note\">ETTR: useful training time / wall time of the training gangs. GPU-h lost: \
         training and inference, by cause. False restarts: of a gang running on healthy hardware, or \
         of a serving replica on healthy devices; false repairs: drains, reboots, replacements, resets \
         of healthy hardware; healthy GPU-h out: healthy GPUs taken out of service. Repairs r/b/x: \
         device resets / node reboots / hardware replacements.</p>",
    );
    if let Some(detectors) = detector_table(report) {
        html.push_str(
            "<h2>devheal's degradation detectors</h2><p>crates/detect's detectors on the simulated step \
             times, scored against the trace: precision = true findings / findings; recall = episodes \
             found / episodes they could find; delay from an episode's start to its first true finding.</p>",
        );
        html.push_str(&detectors);
    }
    if !report.checkpoint_advice.is_empty() {
        html.push_str(
            "<h2>Checkpoint interval</h2><p>devheal's recommendation from the interruptions it observed \
             (Daly's higher-order optimum, fault-model.md §4):</p><ul>",
        );
        for a in &report.checkpoint_advice {
            let _ = write!(html, "<li>{}</li>", escape(&a.line()));
        }
        html.push_str("</ul>");
    }
    let _ = write!(html, "<h2>ETTR over time (cumulative)</h2>{}", ettr_chart(report));
    let _ = write!(html, "<h2>Lost GPU-hours by cause</h2>{}", lost_chart(report));
    let _ = write!(html, "<h2>Fault trace</h2>{}", fault_table(report));
    html
}

/// Which figure a tornado chart shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tornado {
    /// devheal's ETTR.
    Ettr,
    /// devheal's ETTR minus the best other strategy's.
    Lead,
}

/// A tornado chart: one horizontal bar per swept parameter from devheal's lowest to highest
/// figure over its values, widest bar on top, and a vertical line at the baseline run's figure.
pub fn tornado_chart(sweep: &SweepReport, what: Tornado) -> String {
    let mut bars: Vec<(&str, Range)> = sweep
        .sweeps
        .iter()
        .filter_map(|s| {
            let r = match what {
                Tornado::Ettr => s.devheal_range(),
                Tornado::Lead => s.lead_range(),
            }?;
            Some((s.param.as_str(), r))
        })
        .collect();
    bars.sort_by(|a, b| (b.1.1.1 - b.1.0.1).total_cmp(&(a.1.1.1 - a.1.0.1)));
    let baseline = match what {
        Tornado::Ettr => sweep.baseline.strategies.iter().find(|s| s.name == "devheal").map(|s| s.ettr),
        Tornado::Lead => {
            let d = sweep.baseline.strategies.iter().find(|s| s.name == "devheal");
            d.zip(sweep.baseline.best_other()).map(|(d, b)| d.ettr - b.ettr)
        }
    };
    let (w, left, right, top, bar_h, gap, bottom) = (960.0, 330.0, 150.0, 20.0, 22.0, 12.0, 40.0);
    let rows = bars.len().max(1);
    let h = top + rows as f64 * (bar_h + gap) + bottom;
    // Room left of the lowest bar end for its label, so it never runs into the parameter names.
    let label_room = 110.0;
    let plot_w = w - left - right - label_room;
    let mut lo = bars.iter().map(|b| b.1.0.1).chain(baseline).fold(f64::INFINITY, f64::min);
    let mut hi = bars.iter().map(|b| b.1.1.1).chain(baseline).fold(f64::NEG_INFINITY, f64::max);
    if !(lo.is_finite() && hi.is_finite()) {
        (lo, hi) = (0.0, 1.0);
    }
    if hi - lo < 0.002 {
        let mid = (hi + lo) / 2.0;
        (lo, hi) = (mid - 0.001, mid + 0.001);
    }
    let pad = (hi - lo) * 0.05;
    let (lo, hi) = (lo - pad, hi + pad);
    let x = |v: f64| left + label_room + plot_w * (v - lo) / (hi - lo);
    let label = |v: f64| match what {
        Tornado::Ettr => format!("{:.2}%", v * 100.0),
        Tornado::Lead => format!("{:+.2}", v * 100.0),
    };
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {h:.0}" width="{w}" height="{h:.0}" role="img" aria-label="tornado chart">"#
    );
    for (i, (param, ((v_lo, y_lo), (v_hi, y_hi)))) in bars.iter().enumerate() {
        let y = top + i as f64 * (bar_h + gap);
        let (x0, x1) = (x(*y_lo), x(*y_hi));
        let _ = write!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" font-size="12" text-anchor="end">{}</text>"#,
            left - 8.0,
            y + bar_h / 2.0 + 4.0,
            escape(param)
        );
        let _ = write!(
            svg,
            r##"<rect x="{x0:.1}" y="{y:.1}" width="{:.1}" height="{bar_h}" fill="#2ca02c"><title>{}: {} at {}, {} at {}</title></rect>"##,
            (x1 - x0).max(1.0),
            escape(param),
            label(*y_lo),
            fmt_value(*v_lo),
            label(*y_hi),
            fmt_value(*v_hi)
        );
        let _ = write!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" font-size="11" text-anchor="end">{} ({})</text>"#,
            x0 - 4.0,
            y + bar_h / 2.0 + 4.0,
            label(*y_lo),
            fmt_value(*v_lo)
        );
        let _ = write!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" font-size="11">{} ({})</text>"#,
            x1.max(x0 + 1.0) + 4.0,
            y + bar_h / 2.0 + 4.0,
            label(*y_hi),
            fmt_value(*v_hi)
        );
    }
    if let Some(b) = baseline {
        let bx = x(b);
        let _ = write!(
            svg,
            r##"<line x1="{bx:.1}" y1="{:.1}" x2="{bx:.1}" y2="{:.1}" stroke="#333" stroke-dasharray="4 3"/><text x="{bx:.1}" y="{:.1}" font-size="11" text-anchor="middle">baseline {}</text>"##,
            top - 6.0,
            top + rows as f64 * (bar_h + gap),
            top + rows as f64 * (bar_h + gap) + 16.0,
            label(b)
        );
    }
    svg.push_str("</svg>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small_report() -> Report {
        let scenario = crate::Scenario::from_yaml(
            include_str!("../tests/data/small-cluster.yaml"),
            "tests/data/small-cluster.yaml",
        )
        .expect("fixture parses");
        crate::simulate(&scenario, 3, &mut |_| {})
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn the_ettr_axis_fits_the_data_on_round_ticks() {
        // The README's run: every line between 79 % and 88 %.
        let a = ettr_axis(0.793, 0.871);
        assert!(close(a.lo, 0.78) && close(a.hi, 0.88) && close(a.step, 0.02), "{a:?}");
        assert_eq!(a.ticks().len(), 6);
        // A wide spread still gets at most six ticks and stays inside 0–100 %.
        let a = ettr_axis(0.05, 0.99);
        assert!(close(a.lo, 0.0) && close(a.hi, 1.0) && close(a.step, 0.2), "{a:?}");
        // Values on the grid are not pushed a step further out.
        let a = ettr_axis(0.8, 0.9);
        assert!(close(a.lo, 0.8) && close(a.hi, 0.9), "{a:?}");
        // Near 100 %: the top is 100 %, never above.
        let a = ettr_axis(0.995, 1.0);
        assert!(close(a.hi, 1.0) && a.lo < 0.995 && a.lo >= 0.98, "{a:?}");
        // A flat line gets a band around it; no data falls back to 0–100 %.
        let a = ettr_axis(0.5, 0.5);
        assert!(a.lo <= 0.5 && a.hi > 0.5 && a.hi - a.lo <= 0.02 + 1e-9, "{a:?}");
        assert_eq!(ettr_axis(f64::INFINITY, f64::NEG_INFINITY), Axis { lo: 0.0, hi: 1.0, step: 0.2 });
        for (min, max) in [(0.1, 0.2), (0.61, 0.64), (0.0, 0.003), (0.33, 0.97), (0.9991, 0.9999)] {
            let a = ettr_axis(min, max);
            assert!(a.lo <= min + 1e-9 && a.hi >= max - 1e-9, "{min}..{max}: {a:?}");
            assert!(a.ticks().len() <= 8 && a.ticks().len() >= 2, "{min}..{max}: {a:?}");
            assert!(a.lo >= 0.0 && a.hi <= 1.0 + 1e-9, "{a:?}");
        }
    }

    #[test]
    fn day_ticks_are_round_and_few() {
        assert_eq!(day_ticks(10), (0..=10).collect::<Vec<_>>());
        assert_eq!(day_ticks(54), vec![0, 7, 14, 21, 28, 35, 42, 49]);
        assert_eq!(day_ticks(365), vec![0, 60, 120, 180, 240, 300, 360]);
        assert_eq!(day_ticks(1), vec![0, 1]);
        for days in 1..4000 {
            let t = day_ticks(days);
            assert!(t.len() >= 2 && t.len() <= 11, "{days}: {t:?}");
            assert!(*t.last().unwrap() <= days);
        }
    }

    #[test]
    fn the_fault_table_has_a_total_row_with_the_sum() {
        let report = small_report();
        let total: u64 = report.trace.faults_by_class.iter().map(|(_, n)| n).sum();
        assert!(total > 0, "the fixture's trace has faults");
        let html = fault_table(&report);
        assert_eq!(html.matches("<tfoot>").count(), 1);
        assert!(html.contains(&format!("<tfoot><tr><th>total</th><td>{total}</td></tr></tfoot>")), "{html}");
        assert_eq!(
            html.matches("<tr>").count(),
            report.trace.faults_by_class.len() + 2,
            "header, classes, total"
        );
    }

    #[test]
    fn the_report_scrolls_tables_and_scales_charts_for_small_screens() {
        let report = small_report();
        let html = render(&report);
        assert!(html.contains("max-width:1200px") && html.contains(".scroll{overflow-x:auto"));
        assert!(html.contains("name=\"viewport\""));
        // Every table sits in its scrolling box; every chart has a viewBox to scale by.
        assert_eq!(html.matches("<div class=\"scroll\"><table>").count(), html.matches("<table>").count());
        let tables = 3 + usize::from(report.strategies.iter().any(|s| s.detectors.is_some()));
        assert_eq!(html.matches("<table>").count(), tables);
        assert_eq!(html.matches("<svg").count(), html.matches("viewBox=").count());
        for s in &report.strategies {
            assert!(html.contains(&format!("<th>{}</th>", escape(&s.name))), "{}", s.name);
        }
    }

    /// The HTML carries what the text table does about noise: the false-action columns, the
    /// noise line and devheal's detectors with their precision, recall and delays.
    #[test]
    fn the_report_shows_false_actions_noise_and_the_detectors() {
        let report = small_report();
        let html = render(&report);
        for column in ["false restarts", "false repairs", "healthy GPU-h out", "false quar."] {
            assert!(html.contains(&format!("<th>{column}</th>")), "{column}");
        }
        if let Some(noise) = report.noise_line() {
            assert!(html.contains(&escape(&noise)));
        }
        let d = report.strategies.iter().find(|s| s.name == "devheal").and_then(|s| s.detectors.as_ref());
        let d = d.expect("the fixture runs devheal with its detectors");
        assert!(html.contains("<th>straggler (gang median, acted on)</th>"));
        assert!(html.contains("<th>precision</th>") && html.contains("<th>delay p95</th>"));
        let found = format!("<td>{}</td><td>{}</td>", d.straggler.findings, d.straggler.true_findings);
        assert!(html.contains(&found), "{found}");
    }

    #[test]
    fn the_ettr_chart_spans_its_plot_and_labels_days() {
        let report = small_report();
        let svg = ettr_chart(&report);
        // The lowest and highest values lie on or inside the axis, and the axis is narrower than 0–100 %
        // whenever the data is.
        let series = ettr_series(&report);
        let values: Vec<f64> = series.iter().flat_map(|(_, v)| v.iter().copied()).collect();
        let (min, max) = values.iter().fold((1.0f64, 0.0f64), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        let axis = ettr_axis(min, max);
        if max - min < 0.5 {
            assert!(axis.hi - axis.lo < 1.0, "{axis:?} for {min}..{max}");
        }
        let ys: Vec<f64> = svg
            .split("points=\"")
            .skip(1)
            .flat_map(|p| {
                p.split('"').next().unwrap_or("").split(' ').map(str::to_string).collect::<Vec<_>>()
            })
            .filter_map(|pt| pt.split(',').nth(1).and_then(|y| y.parse().ok()))
            .collect();
        assert!(!ys.is_empty());
        let (top, bottom) = (20.0, 340.0 - 46.0);
        assert!(ys.iter().all(|&y| (top..=bottom).contains(&y)), "{ys:?}");
        // The lines use the plot's height rather than a band of it.
        let spread =
            ys.iter().cloned().fold(f64::MIN, f64::max) - ys.iter().cloned().fold(f64::MAX, f64::min);
        if max > min {
            assert!(spread > (bottom - top) * 0.4, "spread {spread:.1} px of {}", bottom - top);
        }
        assert!(svg.contains(">simulated day</text>"));
        assert!(svg.contains(">0</text>") && svg.contains(">10</text>"), "day ticks 0 and 10");
    }

    #[test]
    fn the_tornado_has_one_bar_per_sweep_widest_first_and_a_baseline() {
        use crate::sweep::{ParamSweep, SweepPoint};
        let baseline = small_report();
        let point = |value: f64, devheal: f64, other: f64| SweepPoint {
            value,
            ettr: vec![("job-failure-policy".into(), other), ("devheal".into(), devheal)],
            devheal_lead: Some(devheal - other),
            best_other: Some("job-failure-policy".into()),
        };
        let sweep = |param: &str, points| ParamSweep {
            param: param.into(),
            description: String::new(),
            baseline_value: 1.0,
            points,
        };
        let report = SweepReport {
            baseline,
            sweeps: vec![
                sweep("narrow", vec![point(1.0, 0.90, 0.89), point(2.0, 0.91, 0.89)]),
                sweep("wide", vec![point(5.0, 0.80, 0.85), point(60.0, 0.95, 0.85), point(30.0, 0.93, 0.85)]),
            ],
        };
        let svg = tornado_chart(&report, Tornado::Ettr);
        assert_eq!(svg.matches("<rect").count(), 2);
        assert!(svg.find(">wide</text>") < svg.find(">narrow</text>"), "widest on top: {svg}");
        assert!(svg.contains("80.00% (5)") && svg.contains("95.00% (60)"), "{svg}");
        assert!(svg.contains("stroke-dasharray") && svg.contains("baseline "), "{svg}");
        // The wide bar spans more of the plot than the narrow one.
        let widths: Vec<f64> = svg
            .split("<rect ")
            .skip(1)
            .filter_map(|r| r.split("width=\"").nth(1)?.split('"').next()?.parse().ok())
            .collect();
        assert!(widths[0] > 5.0 * widths[1], "{widths:?}");
        let lead = tornado_chart(&report, Tornado::Lead);
        assert!(lead.contains("-5.00 (5)") && lead.contains("+10.00 (60)"), "{lead}");
        let html = render_sweep(&report);
        assert!(html.contains("<h2>Sensitivity</h2>"));
        assert_eq!(html.matches("<svg").count(), html.matches("viewBox=").count());
    }
}
