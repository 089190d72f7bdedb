//! Line charts drawn on the server as SVG (pure): axes with rounded ticks, one polyline per
//! series, a legend. Training curves use them; a second execution's series are dashed.

use maud::{Markup, html};

/// One line of a chart.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Its name in the legend.
    pub name: String,
    /// (x, y) points in x order; non-finite values are left out.
    pub points: Vec<(f64, f64)>,
    /// Drawn dashed (the execution overlaid for comparison).
    pub dashed: bool,
}

const W: f64 = 560.0;
const H: f64 = 240.0;
const LEFT: f64 = 56.0;
const RIGHT: f64 = 12.0;
const TOP: f64 = 12.0;
const BOTTOM: f64 = 28.0;

/// About five round tick values covering `lo..=hi`.
pub fn ticks(lo: f64, hi: f64) -> Vec<f64> {
    if !lo.is_finite() || !hi.is_finite() || hi <= lo {
        return vec![lo];
    }
    let raw = (hi - lo) / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    let first = (lo / step - 1e-9).ceil() as i64;
    let last = (hi / step + 1e-9).floor() as i64;
    (first..=last).map(|k| k as f64 * step).collect()
}

fn label(v: f64) -> String {
    if v != 0.0 && (v.abs() >= 1e5 || v.abs() < 1e-2) {
        format!("{v:.1e}")
    } else {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// A chart of `series` titled `title`, with `x_name` under the x axis.
pub fn line_chart(title: &str, x_name: &str, series: &[Series]) -> Markup {
    let finite = |(x, y): &(f64, f64)| x.is_finite() && y.is_finite();
    let all: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|s| s.points.iter().copied())
        .filter(finite)
        .collect();
    let fold = |f: fn(&(f64, f64)) -> f64, min: bool| {
        all.iter().map(f).fold(
            if min {
                f64::INFINITY
            } else {
                f64::NEG_INFINITY
            },
            if min { f64::min } else { f64::max },
        )
    };
    let (mut x0, mut x1) = (fold(|p| p.0, true), fold(|p| p.0, false));
    let (mut y0, mut y1) = (fold(|p| p.1, true), fold(|p| p.1, false));
    if all.is_empty() {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    if y1 <= y0 {
        (y0, y1) = (y0 - 0.5, y1 + 0.5);
    }
    let pad = (y1 - y0) * 0.05;
    let (y0, y1) = (y0 - pad, y1 + pad);
    let px = |x: f64| LEFT + (x - x0) / (x1 - x0) * (W - LEFT - RIGHT);
    let py = |y: f64| TOP + (1.0 - (y - y0) / (y1 - y0)) * (H - TOP - BOTTOM);
    html! {
        figure class="chart" {
            figcaption { (title) }
            svg xmlns="http://www.w3.org/2000/svg" width=(W) height=(H) viewBox=(format!("0 0 {W} {H}")) role="img" {
                @for t in ticks(y0, y1) {
                    line class="grid" x1=(LEFT) x2=(W - RIGHT) y1=(py(t)) y2=(py(t)) {}
                    text class="tick" x=(LEFT - 4.0) y=(py(t) + 4.0) text-anchor="end" { (label(t)) }
                }
                @for t in ticks(x0, x1) {
                    text class="tick" x=(px(t)) y=(H - BOTTOM + 14.0) text-anchor="middle" { (label(t)) }
                }
                line class="axis" x1=(LEFT) x2=(LEFT) y1=(TOP) y2=(H - BOTTOM) {}
                line class="axis" x1=(LEFT) x2=(W - RIGHT) y1=(H - BOTTOM) y2=(H - BOTTOM) {}
                text class="tick" x=((LEFT + W - RIGHT) / 2.0) y=(H - 2.0) text-anchor="middle" { (x_name) }
                @for (i, s) in series.iter().enumerate() {
                    polyline class=(format!("series s{}{}", i % 8, if s.dashed { " dashed" } else { "" }))
                        data-series=(s.name)
                        points=(s.points.iter().filter(|p| finite(p)).map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y))).collect::<Vec<_>>().join(" ")) {}
                }
            }
            ul class="legend" {
                @for (i, s) in series.iter().enumerate() {
                    li class=(format!("s{}{}", i % 8, if s.dashed { " dashed" } else { "" })) { (s.name) }
                }
            }
        }
    }
}

/// A grouped bar chart: one group per category (a class), one bar per series (a channel) with
/// `values[series][category]`.
pub fn bar_chart(
    title: &str,
    categories: &[String],
    names: &[String],
    values: &[Vec<f64>],
) -> Markup {
    let top = values
        .iter()
        .flatten()
        .copied()
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max)
        .max(1.0);
    let y1 = ticks(0.0, top).last().copied().unwrap_or(top).max(top);
    let py = |y: f64| TOP + (1.0 - y / y1) * (H - TOP - BOTTOM);
    let group = (W - LEFT - RIGHT) / categories.len().max(1) as f64;
    let bar = group * 0.8 / names.len().max(1) as f64;
    html! {
        figure class="chart" {
            figcaption { (title) }
            svg xmlns="http://www.w3.org/2000/svg" width=(W) height=(H) viewBox=(format!("0 0 {W} {H}")) role="img" {
                @for t in ticks(0.0, y1) {
                    line class="grid" x1=(LEFT) x2=(W - RIGHT) y1=(py(t)) y2=(py(t)) {}
                    text class="tick" x=(LEFT - 4.0) y=(py(t) + 4.0) text-anchor="end" { (label(t)) }
                }
                @for (c, name) in categories.iter().enumerate() {
                    text class="tick" x=(LEFT + group * (c as f64 + 0.5)) y=(H - BOTTOM + 14.0) text-anchor="middle" { (name) }
                    @for (s, series) in values.iter().enumerate() {
                        @let v = series.get(c).copied().filter(|v| v.is_finite()).unwrap_or(0.0);
                        rect class=(format!("bar s{}", s % 8)) data-series=(names.get(s).map_or("", String::as_str))
                            x=(LEFT + group * c as f64 + group * 0.1 + bar * s as f64) y=(py(v))
                            width=(bar) height=(py(0.0) - py(v)) {
                            title { (names.get(s).map_or("", String::as_str)) " " (name) ": " (v) }
                        }
                    }
                }
                line class="axis" x1=(LEFT) x2=(W - RIGHT) y1=(H - BOTTOM) y2=(H - BOTTOM) {}
            }
            ul class="legend" {
                @for (i, n) in names.iter().enumerate() { li class=(format!("s{}", i % 8)) { (n) } }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        let check = |lo, hi, want: &[&str]| {
            let got: Vec<String> = ticks(lo, hi).into_iter().map(label).collect();
            assert_eq!(got, want, "{lo}..{hi}");
        };
        check(0.0, 1.0, &["0", "0.2", "0.4", "0.6", "0.8", "1"]);
        check(1.0, 10.0, &["2", "4", "6", "8", "10"]);
        check(3.0, 3.0, &["3"]);
        check(
            0.0,
            250000.0,
            &["0", "50000", "1.0e5", "1.5e5", "2.0e5", "2.5e5"],
        );
    }

    #[test]
    fn a_bar_per_series_and_category() {
        let drawn = bar_chart(
            "balance",
            &["a".into(), "<b>".into()],
            &["train".into(), "test".into()],
            &[vec![3.0, 4.0], vec![1.0, f64::NAN]],
        )
        .into_string();
        assert_eq!(drawn.matches("<rect").count(), 4);
        assert!(drawn.contains("&lt;b&gt;") && !drawn.contains("<b>"));
    }

    #[test]
    fn every_series_is_a_polyline_and_names_are_escaped() {
        let s = |name: &str, dashed| Series {
            name: name.into(),
            points: vec![(1.0, 0.5), (2.0, f64::NAN), (3.0, 0.25)],
            dashed,
        };
        let drawn =
            line_chart("loss", "epoch", &[s("train", false), s("<i>b</i>", true)]).into_string();
        assert_eq!(drawn.matches("<polyline").count(), 2);
        assert!(drawn.contains("series s1 dashed"));
        assert!(drawn.contains("&lt;i&gt;b&lt;/i&gt;") && !drawn.contains("<i>"));
        // An empty chart still draws its axes.
        assert!(
            line_chart("empty", "epoch", &[])
                .into_string()
                .contains("axis")
        );
    }
}
