//! A DAG laid out on the server (pure): layers by longest path from a source, nodes ordered in
//! their layer by the mean position of their inputs, and the critical path (the chain of steps
//! whose durations add up to the longest time). The same layout draws an execution's steps and
//! an artifact's lineage neighbourhood; [`svg`] draws it.

use maud::{Markup, html};

/// One node to lay out.
#[derive(Debug, Clone, Default)]
pub struct Node {
    /// Its first line (a step's name, an artifact's URI).
    pub label: String,
    /// Lines under the label (status and duration, instances, cache).
    pub lines: Vec<String>,
    /// The tooltip: everything, in full.
    pub title: String,
    /// A CSS class for its colour (`st-succeeded`, `artifact`, ...).
    pub class: String,
    /// Where a click on it goes, if anywhere.
    pub href: Option<String>,
    /// The nodes it depends on (indexes into the same list).
    pub deps: Vec<usize>,
    /// What it adds to a path's length (a step's seconds); 0 for none.
    pub weight: f64,
}

/// Where the layout put a node.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Place {
    /// Its layer (0: no inputs).
    pub layer: usize,
    /// Its row within the layer.
    pub row: usize,
}

/// A laid-out graph.
#[derive(Debug, Clone, PartialEq)]
pub struct Layout {
    /// Each node's place, by node index.
    pub places: Vec<Place>,
    /// Whether each node is on the critical path.
    pub critical: Vec<bool>,
}

/// Node size and gaps in SVG units.
const W: f64 = 200.0;
const H: f64 = 64.0;
const GAP_X: f64 = 60.0;
const GAP_Y: f64 = 18.0;
const PAD: f64 = 10.0;

/// Lays the nodes out. Dependencies that point past the list or form a cycle are ignored (a
/// cycle's nodes stay in the layer they had when it was found), so any input gives a layout.
pub fn layout(nodes: &[Node]) -> Layout {
    let n = nodes.len();
    let deps = |i: usize| {
        nodes[i]
            .deps
            .iter()
            .copied()
            .filter(move |&d| d < n && d != i)
    };
    // Longest path from a source, relaxed at most n times (enough for any DAG).
    let mut layer = vec![0usize; n];
    for _ in 0..n {
        let mut changed = false;
        for i in 0..n {
            let want = deps(i).map(|d| layer[d] + 1).max().unwrap_or(0);
            if want > layer[i] && want < n {
                layer[i] = want;
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    // Rows: layer by layer, by the mean row of the inputs, ties by the nodes' order.
    let layers = layer.iter().copied().max().map_or(0, |m| m + 1);
    let mut row = vec![0usize; n];
    for l in 0..layers {
        let mut members: Vec<(f64, usize)> = (0..n)
            .filter(|&i| layer[i] == l)
            .map(|i| {
                let rows: Vec<f64> = deps(i)
                    .filter(|&d| layer[d] < l)
                    .map(|d| row[d] as f64)
                    .collect();
                let key = if rows.is_empty() {
                    i as f64
                } else {
                    rows.iter().sum::<f64>() / rows.len() as f64
                };
                (key, i)
            })
            .collect();
        members.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        for (r, (_, i)) in members.into_iter().enumerate() {
            row[i] = r;
        }
    }
    // The critical path: the heaviest chain, found in layer order (inputs come first).
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| (layer[i], i));
    let mut dist = vec![0f64; n];
    let mut via = vec![None; n];
    for &i in &order {
        let best = deps(i)
            .filter(|&d| layer[d] < layer[i])
            .max_by(|&a, &b| dist[a].total_cmp(&dist[b]).then(b.cmp(&a)));
        dist[i] = nodes[i].weight.max(0.0) + best.map_or(0.0, |b| dist[b]);
        via[i] = best;
    }
    let mut critical = vec![false; n];
    let end = (0..n).max_by(|&a, &b| dist[a].total_cmp(&dist[b]).then(b.cmp(&a)));
    if let Some(mut at) = end.filter(|&e| dist[e] > 0.0) {
        critical[at] = true;
        while let Some(prev) = via[at] {
            critical[prev] = true;
            at = prev;
        }
    }
    Layout {
        places: (0..n)
            .map(|i| Place {
                layer: layer[i],
                row: row[i],
            })
            .collect(),
        critical,
    }
}

fn origin(p: Place) -> (f64, f64) {
    (
        PAD + p.layer as f64 * (W + GAP_X),
        PAD + p.row as f64 * (H + GAP_Y),
    )
}

/// Shortens a label to what fits in a node (the tooltip has it whole).
fn fit(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_string()
    } else {
        let mut s: String = text.chars().take(max.saturating_sub(1)).collect();
        s.push('…');
        s
    }
}

/// Draws a laid-out graph as SVG: one box per node, an edge per dependency, the critical path's
/// boxes and edges marked (class `critical`).
pub fn svg(nodes: &[Node], layout: &Layout) -> Markup {
    let n = nodes.len();
    let layers = layout.places.iter().map(|p| p.layer + 1).max().unwrap_or(1);
    let rows = layout.places.iter().map(|p| p.row + 1).max().unwrap_or(1);
    let width = 2.0 * PAD + layers as f64 * W + (layers - 1) as f64 * GAP_X;
    let height = 2.0 * PAD + rows as f64 * H + (rows - 1) as f64 * GAP_Y;
    let mut edges = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        for &d in node.deps.iter().filter(|&&d| d < n && d != i) {
            let (x0, y0) = origin(layout.places[d]);
            let (x1, y1) = origin(layout.places[i]);
            let (ax, ay, bx, by) = (x0 + W, y0 + H / 2.0, x1, y1 + H / 2.0);
            let mid = (ax + bx) / 2.0;
            let on = layout.critical[i] && layout.critical[d];
            edges.push((
                format!("M{ax:.1},{ay:.1} C{mid:.1},{ay:.1} {mid:.1},{by:.1} {bx:.1},{by:.1}"),
                on,
            ));
        }
    }
    let boxed = |i: usize, node: &Node| {
        let (x, y) = origin(layout.places[i]);
        let class = format!(
            "node {}{}",
            node.class,
            if layout.critical[i] { " critical" } else { "" }
        );
        html! {
            g class=(class) data-node=(node.label) {
                title { (node.title) }
                rect x=(x) y=(y) width=(W) height=(H) rx="6" {}
                text x=(x + 8.0) y=(y + 18.0) class="label" { (fit(&node.label, 26)) }
                @for (k, line) in node.lines.iter().take(3).enumerate() {
                    text x=(x + 8.0) y=(y + 34.0 + 13.0 * k as f64) class="detail" { (fit(line, 32)) }
                }
            }
        }
    };
    html! {
        svg class="dag" xmlns="http://www.w3.org/2000/svg" width=(width) height=(height)
            viewBox=(format!("0 0 {width} {height}")) role="img" {
            @for (d, on) in &edges {
                path class=(if *on { "edge critical" } else { "edge" }) d=(d) {}
            }
            @for (i, node) in nodes.iter().enumerate() {
                @if let Some(href) = &node.href {
                    a href=(href) { (boxed(i, node)) }
                } @else {
                    (boxed(i, node))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(deps: &[usize], weight: f64) -> Node {
        Node {
            label: format!("n{}", deps.len()),
            deps: deps.to_vec(),
            weight,
            ..Node::default()
        }
    }

    fn check(nodes: &[Node], layers: &[usize], critical: &[usize]) {
        let l = layout(nodes);
        let got: Vec<usize> = l.places.iter().map(|p| p.layer).collect();
        assert_eq!(got, layers, "layers");
        let on: Vec<usize> = (0..nodes.len()).filter(|&i| l.critical[i]).collect();
        assert_eq!(on, critical, "critical path");
    }

    #[test]
    fn layers_follow_the_longest_path_and_the_heaviest_chain_is_critical() {
        // 0 → 1 → 3 and 0 → 2 → 3, with 2 slower than 1; 4 stands alone.
        let nodes = [
            node(&[], 1.0),
            node(&[0], 1.0),
            node(&[0], 5.0),
            node(&[1, 2], 1.0),
            node(&[], 0.5),
        ];
        check(&nodes, &[0, 1, 1, 2, 0], &[0, 2, 3]);
        // A skip edge does not pull a node to an earlier layer.
        check(
            &[node(&[], 1.0), node(&[0], 1.0), node(&[0, 1], 1.0)],
            &[0, 1, 2],
            &[0, 1, 2],
        );
        // Nothing timed, nothing critical; a cycle or a bad index still lays out.
        check(&[node(&[], 0.0), node(&[0], 0.0)], &[0, 1], &[]);
        let l = layout(&[node(&[1], 1.0), node(&[0], 1.0), node(&[9], 1.0)]);
        assert_eq!(l.places.len(), 3);
    }

    #[test]
    fn the_layout_is_deterministic_and_rows_do_not_collide() {
        let nodes: Vec<Node> = (0..60)
            .map(|i| node(&if i == 0 { vec![] } else { vec![(i - 1) / 3] }, 1.0))
            .collect();
        let a = layout(&nodes);
        assert_eq!(a, layout(&nodes));
        let mut seen = std::collections::BTreeSet::new();
        for p in &a.places {
            assert!(seen.insert((p.layer, p.row)), "two nodes at {p:?}");
        }
        let drawn = svg(&nodes, &a).into_string();
        assert_eq!(drawn.matches("<rect").count(), 60);
        assert_eq!(drawn.matches("class=\"edge").count(), 59);
    }

    #[test]
    fn labels_are_escaped_and_shortened() {
        let nodes = [Node {
            label: "<script>alert(1)</script>".into(),
            title: "<b>".into(),
            ..Node::default()
        }];
        let drawn = svg(&nodes, &layout(&nodes)).into_string();
        assert!(!drawn.contains("<script>"), "{drawn}");
        assert!(
            drawn.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
            "{drawn}"
        );
        assert_eq!(fit("abcdef", 4), "abc…");
    }
}
