//! The model directory's human-readable files: `metrics.csv`, `timings.csv` and the training
//! curves, `training.svg`.

use crate::EpochMetrics;

/// `metrics.csv`: one row per epoch, what the run learnt: identical runs write identical
/// files, so it is part of the model's lineage and archive.
pub fn metrics_csv(metrics: &[EpochMetrics]) -> String {
    let mut out =
        String::from("epoch,train_loss,train_accuracy,validation_loss,validation_accuracy,lr\n");
    for m in metrics {
        out.push_str(&format!(
            "{},{:.6},{:.6},{:.6},{:.6},{:.6e}\n",
            m.epoch, m.train_loss, m.train_accuracy, m.validation_loss, m.validation_accuracy, m.lr
        ));
    }
    out
}

/// `timings.csv`: one row per epoch, how fast it went (samples/s, the share of time spent
/// waiting for data, allreduce time per step, seconds). Timings differ between identical runs,
/// so they stay out of the lineage record and the archive.
pub fn timings_csv(metrics: &[EpochMetrics]) -> String {
    let mut out =
        String::from("epoch,samples_per_second,data_wait_percent,allreduce_ms,train_seconds\n");
    for m in metrics {
        out.push_str(&format!(
            "{},{:.1},{:.2},{:.3},{:.3}\n",
            m.epoch, m.samples_per_second, m.data_wait_percent, m.allreduce_ms, m.train_seconds
        ));
    }
    out
}

/// The training curves as an SVG: loss on the left, accuracy on the right, train and validation.
pub fn plot(metrics: &[EpochMetrics]) -> String {
    let (w, h, pad) = (360.0, 240.0, 36.0);
    let series = |f: &dyn Fn(&EpochMetrics) -> f64| -> Vec<f64> { metrics.iter().map(f).collect() };
    let panel = |x0: f64, title: &str, lines: &[(&str, Vec<f64>)]| -> String {
        let max = lines
            .iter()
            .flat_map(|(_, v)| v.iter().copied())
            .filter(|v| v.is_finite())
            .fold(0.0f64, f64::max)
            .max(1e-9);
        let n = metrics.len().max(2) as f64 - 1.0;
        // Falling curves leave the top free, rising ones the bottom.
        let legend_y = if title == "loss" {
            pad + 16.0
        } else {
            h - pad - 26.0
        };
        let mut out = format!(
            r##"<g transform="translate({x0},0)"><rect x="{pad}" y="{pad}" width="{}" height="{}" fill="none" stroke="#999"/><text x="{}" y="22" text-anchor="middle" font-size="14">{title}</text><text x="{pad}" y="{}" font-size="10">epoch 1</text><text x="{}" y="{}" font-size="10" text-anchor="end">epoch {}</text><text x="4" y="{}" font-size="10">{max:.2}</text>"##,
            w - 2.0 * pad,
            h - 2.0 * pad,
            w / 2.0,
            h - 20.0,
            w - pad,
            h - 20.0,
            metrics.len(),
            pad + 4.0
        );
        for (i, (name, values)) in lines.iter().enumerate() {
            let colour = ["#1f77b4", "#ff7f0e"][i % 2];
            let points: Vec<String> = values
                .iter()
                .enumerate()
                .filter(|(_, v)| v.is_finite())
                .map(|(k, v)| {
                    format!(
                        "{:.1},{:.1}",
                        pad + (w - 2.0 * pad) * k as f64 / n,
                        h - pad - (h - 2.0 * pad) * v / max
                    )
                })
                .collect();
            out.push_str(&format!(
                r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/><text x="{}" y="{}" font-size="11" fill="{colour}">{name}</text>"#,
                points.join(" "),
                w - pad - 80.0,
                legend_y + 14.0 * i as f64
            ));
        }
        out.push_str("</g>");
        out
    };
    let loss = panel(
        0.0,
        "loss",
        &[
            ("train", series(&|m| m.train_loss)),
            ("validation", series(&|m| m.validation_loss)),
        ],
    );
    let accuracy = panel(
        w,
        "accuracy",
        &[
            ("train", series(&|m| m.train_accuracy)),
            ("validation", series(&|m| m.validation_accuracy)),
        ],
    );
    format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{h}" font-family="sans-serif">{loss}{accuracy}</svg>
"#,
        2.0 * w
    )
}
