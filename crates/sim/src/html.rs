//! The self-contained HTML report: the comparison table plus two hand-written inline SVG charts
//! (cumulative ETTR over time, lost GPU-hours by cause). No scripts, no external files.

use std::fmt::Write;

use crate::report::{Report, fmt_thousands};

const COLOURS: [&str; 8] =
    ["#d62728", "#ff7f0e", "#1f77b4", "#9467bd", "#8c564b", "#7f7f7f", "#bcbd22", "#17becf"];
const STRATEGY_COLOURS: [&str; 4] = ["#d62728", "#ff7f0e", "#1f77b4", "#2ca02c"];

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// Line chart of each strategy's GPU-weighted cumulative ETTR at the end of each day.
fn ettr_chart(report: &Report) -> String {
    let (w, h, left, right, top, bottom) = (760.0, 320.0, 60.0, 180.0, 20.0, 40.0);
    let plot_w = w - left - right;
    let plot_h = h - top - bottom;
    let days = report
        .strategies
        .iter()
        .flat_map(|s| s.training.iter().map(|t| t.ettr_by_day.len()))
        .max()
        .unwrap_or(0)
        .max(1);
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" role="img" aria-label="ETTR over time">"#
    );
    let _ = write!(
        svg,
        r##"<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#999"/>"##
    );
    for i in 0..=5 {
        let v = i as f64 / 5.0;
        let y = top + plot_h * (1.0 - v);
        let _ = write!(
            svg,
            r##"<line x1="{left}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#eee"/><text x="{:.1}" y="{:.1}" font-size="11" text-anchor="end">{:.0}%</text>"##,
            left + plot_w,
            left - 6.0,
            y + 4.0,
            v * 100.0
        );
    }
    let _ = write!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" font-size="12" text-anchor="middle">simulated day</text>"#,
        left + plot_w / 2.0,
        h - 8.0
    );
    for (si, s) in report.strategies.iter().enumerate() {
        let colour = STRATEGY_COLOURS[si % STRATEGY_COLOURS.len()];
        let total_gpus: u64 = s.training.iter().map(|t| t.gpus).sum();
        if total_gpus == 0 {
            continue;
        }
        let n = s.training.iter().map(|t| t.ettr_by_day.len()).min().unwrap_or(0);
        let points: Vec<String> = (0..n)
            .map(|d| {
                let v: f64 = s.training.iter().map(|t| t.ettr_by_day[d] * t.gpus as f64).sum::<f64>()
                    / total_gpus as f64;
                let x = left + plot_w * (d + 1) as f64 / days as f64;
                let y = top + plot_h * (1.0 - v.clamp(0.0, 1.0));
                format!("{x:.1},{y:.1}")
            })
            .collect();
        let _ = write!(
            svg,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"#,
            points.join(" ")
        );
        let ly = top + 16.0 * si as f64 + 10.0;
        let _ = write!(
            svg,
            r#"<rect x="{:.1}" y="{:.1}" width="12" height="3" fill="{colour}"/><text x="{:.1}" y="{:.1}" font-size="12">{}</text>"#,
            left + plot_w + 12.0,
            ly - 2.0,
            left + plot_w + 28.0,
            ly + 3.0,
            escape(&s.name)
        );
    }
    svg.push_str("</svg>");
    svg
}

/// Horizontal stacked bars of lost GPU-hours by cause, one bar per strategy.
fn lost_chart(report: &Report) -> String {
    let rows = report.strategies.len().max(1);
    let (w, left, right, top, bar_h, gap) = (760.0, 170.0, 20.0, 20.0, 26.0, 14.0);
    let legend_h = 50.0;
    let h = top + rows as f64 * (bar_h + gap) + legend_h;
    let plot_w = w - left - right;
    let max_total = report.strategies.iter().map(|s| s.gpu_hours_lost.total).fold(0.0, f64::max).max(1.0);
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h:.0}" role="img" aria-label="lost GPU-hours by cause">"#
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
            (x + 4.0).min(w - 90.0),
            y + bar_h / 2.0 + 4.0,
            fmt_thousands(s.gpu_hours_lost.total)
        );
    }
    if let Some(first) = report.strategies.first() {
        let ly = top + rows as f64 * (bar_h + gap) + 10.0;
        for (ci, (cause, _)) in first.gpu_hours_lost.by_cause.by_cause().iter().enumerate() {
            let lx = 10.0 + (ci % 4) as f64 * 185.0;
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

/// The whole report as one HTML document.
pub fn render(report: &Report) -> String {
    let mut html = String::new();
    let _ = write!(
        html,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>devheal sim: {}</title>\
         <style>body{{font-family:sans-serif;margin:2em;max-width:980px}}pre{{background:#f6f6f6;padding:1em;overflow-x:auto;font-size:12px}}</style>\
         </head><body>",
        escape(&report.scenario)
    );
    let _ = write!(
        html,
        "<h1>devheal sim: {}</h1><p>{}</p><p>Seed {}; {} GPUs; {} simulated days. Every strategy replays the same fault trace.</p>",
        escape(&report.scenario),
        escape(&report.description),
        report.seed,
        report.gpus,
        report.duration_days
    );
    let _ = write!(html, "<h2>Comparison</h2><pre>{}</pre>", escape(&report.to_table()));
    let _ = write!(html, "<h2>ETTR over time (cumulative)</h2>{}", ettr_chart(report));
    let _ = write!(html, "<h2>Lost GPU-hours by cause</h2>{}", lost_chart(report));
    html.push_str(
        "<h2>Fault trace</h2><table><tr><th align=\"left\">class</th><th align=\"right\">events</th></tr>",
    );
    for (name, n) in &report.trace.faults_by_class {
        let _ = write!(html, "<tr><td>{}</td><td align=\"right\">{n}</td></tr>", escape(name));
    }
    html.push_str("</table><p>Model and sources: docs/simulator.md.</p></body></html>\n");
    html
}
