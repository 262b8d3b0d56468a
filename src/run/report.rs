//! `report.md` with SVG plots drawn from the run's own metrics: line plots of columns against a
//! step column (dual variables, slack, reward and safety per iteration) and scatter plots of one
//! column against another (a helpfulness-versus-safety Pareto plot for sweeps). Plain SVG with
//! system fonts, readable in any browser or Markdown viewer.
use anyhow::{bail, Result};
use serde_json::{Map, Value};
use std::fmt::Write as _;

/// One plot request.
#[derive(Debug, Clone)]
pub struct PlotSpec {
    pub name: String,
    pub title: String,
    /// Only rows whose `phase` equals this (when given).
    pub phase: Option<String>,
    pub x: String,
    pub y: Vec<String>,
    /// Scatter (points, labelled by `label`) instead of lines.
    pub scatter: bool,
    pub label: Option<String>,
}

const COLORS: [&str; 6] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf"];
const W: f64 = 640.0;
const H: f64 = 360.0;
const L: f64 = 64.0;
const R: f64 = 160.0;
const T: f64 = 40.0;
const B: f64 = 48.0;

fn num(v: Option<&Value>) -> Option<f64> {
    v.and_then(Value::as_f64).filter(|x| x.is_finite())
}

fn ticks(lo: f64, hi: f64) -> Vec<f64> {
    let span = (hi - lo).max(1e-12);
    let raw = span / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * mag).find(|s| *s >= raw).unwrap_or(raw);
    let mut t = (lo / step).ceil() * step;
    let mut out = Vec::new();
    while t <= hi + 1e-9 * span {
        out.push(if t.abs() < step * 1e-9 { 0.0 } else { t });
        t += step;
    }
    out
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// Draws one plot as SVG from metric rows.
pub fn svg(spec: &PlotSpec, rows: &[Map<String, Value>]) -> Result<String> {
    let rows: Vec<&Map<String, Value>> = rows.iter().filter(|r| spec.phase.as_ref().is_none_or(|p| r.get("phase").and_then(Value::as_str) == Some(p))).collect();
    let mut series: Vec<(String, Vec<(f64, f64, String)>)> = Vec::new();
    for y in &spec.y {
        let pts: Vec<(f64, f64, String)> = rows
            .iter()
            .filter_map(|r| {
                let label = spec.label.as_ref().and_then(|l| r.get(l)).map(|v| v.as_str().map_or(v.to_string(), String::from)).unwrap_or_default();
                Some((num(r.get(&spec.x))?, num(r.get(y))?, label))
            })
            .collect();
        if !pts.is_empty() {
            series.push((y.clone(), pts));
        }
    }
    if series.is_empty() {
        bail!("report: plot `{}` has no rows with numeric `{}` and {:?}{}", spec.name, spec.x, spec.y, spec.phase.as_ref().map_or(String::new(), |p| format!(" in phase \"{p}\"")));
    }
    let all: Vec<(f64, f64)> = series.iter().flat_map(|(_, p)| p.iter().map(|(x, y, _)| (*x, *y))).collect();
    let (mut x0, mut x1) = all.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), (x, _)| (a.min(*x), b.max(*x)));
    let (mut y0, mut y1) = all.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), (_, y)| (a.min(*y), b.max(*y)));
    if x1 - x0 < 1e-12 {
        x0 -= 0.5;
        x1 += 0.5;
    } else if spec.scatter {
        // Points (and their labels) should not sit on the frame.
        let pad = (x1 - x0) * 0.08;
        x0 -= pad;
        x1 += pad;
    }
    let pad = ((y1 - y0) * 0.08).max(1e-6);
    y0 -= pad;
    y1 += pad;
    let px = |x: f64| L + (x - x0) / (x1 - x0) * (W - L - R);
    let py = |y: f64| H - B - (y - y0) / (y1 - y0) * (H - T - B);
    let mut s = String::new();
    let _ = writeln!(s, r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="Helvetica, Arial, sans-serif" font-size="12">"#);
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(s, r#"<text x="{}" y="22" font-size="15" text-anchor="middle">{}</text>"#, (W - R + L) / 2.0, esc(&spec.title));
    for t in ticks(y0, y1) {
        let y = py(t);
        let _ = writeln!(s, r##"<line x1="{L}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#e5e5e5"/><text x="{:.1}" y="{:.1}" text-anchor="end" fill="#444">{}</text>"##, W - R, L - 6.0, y + 4.0, fmt(t));
    }
    // Integer steps (iterations) get integer ticks.
    let integral = all.iter().all(|(x, _)| x.fract() == 0.0);
    for t in ticks(x0, x1).into_iter().filter(|t| !integral || t.fract() == 0.0) {
        let x = px(t);
        let _ = writeln!(s, r##"<line x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{:.1}" stroke="#444"/><text x="{x:.1}" y="{:.1}" text-anchor="middle" fill="#444">{}</text>"##, H - B, H - B + 5.0, H - B + 19.0, fmt(t));
    }
    let _ = writeln!(s, r##"<line x1="{L}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#444"/><line x1="{L}" y1="{T}" x2="{L}" y2="{:.1}" stroke="#444"/>"##, H - B, W - R, H - B, H - B);
    let _ = writeln!(s, r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" fill="#222">{}</text>"##, (W - R + L) / 2.0, H - 10.0, esc(&spec.x));
    for (i, (name, pts)) in series.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        if spec.scatter {
            for (x, y, label) in pts {
                let _ = writeln!(s, r#"<circle cx="{:.1}" cy="{:.1}" r="4.5" fill="{c}" fill-opacity="0.8"/>"#, px(*x), py(*y));
                if !label.is_empty() {
                    let _ = writeln!(s, r##"<text x="{:.1}" y="{:.1}" font-size="10" fill="#333">{}</text>"##, px(*x) + 6.0, py(*y) - 5.0, esc(label));
                }
            }
        } else {
            let path: Vec<String> = pts.iter().map(|(x, y, _)| format!("{:.1},{:.1}", px(*x), py(*y))).collect();
            let _ = writeln!(s, r#"<polyline points="{}" fill="none" stroke="{c}" stroke-width="2"/>"#, path.join(" "));
            for (x, y, _) in pts {
                let _ = writeln!(s, r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{c}"/>"#, px(*x), py(*y));
            }
        }
        let ly = T + 8.0 + 18.0 * i as f64;
        let _ = writeln!(s, r##"<rect x="{:.1}" y="{:.1}" width="12" height="12" fill="{c}"/><text x="{:.1}" y="{:.1}" fill="#222">{}</text>"##, W - R + 14.0, ly - 10.0, W - R + 32.0, ly, esc(if spec.scatter { &spec.y[i] } else { name }));
    }
    if spec.scatter {
        let _ = writeln!(s, r##"<text transform="translate(14,{:.1}) rotate(-90)" text-anchor="middle" fill="#222">{}</text>"##, (H - B + T) / 2.0, esc(&spec.y.join(", ")));
    }
    s.push_str("</svg>\n");
    Ok(s)
}

fn fmt(x: f64) -> String {
    let s = format!("{x:.4}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" { "0".into() } else { s.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn plots_only_the_requested_phase_and_columns() {
        let rows: Vec<Map<String, Value>> = [
            json!({"phase": "caid", "iteration": 0, "lambda": 0.5, "slack": -0.3}),
            json!({"phase": "dpo", "iteration": 9, "lambda": 99.0}),
            json!({"phase": "caid", "iteration": 1, "lambda": 0.8, "slack": 0.1}),
        ]
        .into_iter()
        .map(|v| v.as_object().unwrap().clone())
        .collect();
        let spec = PlotSpec { name: "dual".into(), title: "λ".into(), phase: Some("caid".into()), x: "iteration".into(), y: vec!["lambda".into(), "slack".into()], scatter: false, label: None };
        let svg = svg(&spec, &rows).unwrap();
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert_eq!(svg.matches(r#"r="3""#).count(), 4, "two points per series; the dpo row is not drawn");
        let missing = PlotSpec { y: vec!["nothing".into()], ..spec };
        assert!(super::svg(&missing, &rows).unwrap_err().to_string().contains("no rows with numeric `iteration`"));
        assert_eq!(ticks(0.0, 1.0), vec![0.0, 0.2, 0.4, 0.6000000000000001, 0.8, 1.0]);
    }
}
