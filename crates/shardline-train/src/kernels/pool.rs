//! A direct 2x2, stride-2 max-pool on `f32` NCHW slices (no padding or dilation, floor mode):
//! the forward keeps which of the four inputs won (one byte per output), and the gradient goes
//! back to that input alone. The winner is chosen as Burn's does: the first largest value in
//! row-major order, and a NaN wins over any number (the last NaN, if several).

/// Output height and width of a `h x w` plane.
pub fn out(h: usize, w: usize) -> (usize, usize) {
    (h / 2, w / 2)
}

/// Pools `planes` planes of `h x w`: the maxima (`planes x h/2 x w/2`) and the winner of each,
/// as 0..4 (`2 * row + column` within the window).
pub fn forward(x: &[f32], planes: usize, h: usize, w: usize) -> (Vec<f32>, Vec<u8>) {
    let (oh, ow) = out(h, w);
    let mut y = vec![0.0f32; planes * oh * ow];
    let mut arg = vec![0u8; planes * oh * ow];
    if oh == 0 || ow == 0 {
        return (y, arg);
    }
    let per = per_thread(planes, h * w);
    let parts = x.chunks(per * h * w).zip(
        y.chunks_mut(per * oh * ow)
            .zip(arg.chunks_mut(per * oh * ow)),
    );
    super::run_shares(parts.map(|(x, (y, arg))| move || forward_planes(x, y, arg, h, w)));
    (y, arg)
}

/// Planes per thread: a thread for every 256 Ki inputs at most, up to the kernels' threads.
fn per_thread(planes: usize, plane: usize) -> usize {
    let threads = super::threads()
        .min((planes * plane) >> 18)
        .clamp(1, planes.max(1));
    planes.div_ceil(threads).max(1)
}

fn forward_planes(x: &[f32], y: &mut [f32], arg: &mut [u8], h: usize, w: usize) {
    let (oh, ow) = out(h, w);
    let chunks = y.chunks_mut(oh * ow).zip(arg.chunks_mut(oh * ow));
    for (plane, (y, arg)) in chunks.enumerate() {
        let x = &x[plane * h * w..][..h * w];
        for oy in 0..oh {
            let top = &x[2 * oy * w..][..2 * ow];
            let bottom = &x[(2 * oy + 1) * w..][..2 * ow];
            let (y, arg) = (&mut y[oy * ow..][..ow], &mut arg[oy * ow..][..ow]);
            // Without branches on the data (the comparisons of random activations are coin
            // tosses for a branch predictor): selects the compiler turns into vector blends.
            let windows = top.chunks_exact(2).zip(bottom.chunks_exact(2));
            for ((y, arg), (t, b)) in y.iter_mut().zip(arg.iter_mut()).zip(windows) {
                let window = [t[0], t[1], b[0], b[1]];
                let upper = if window[1] > window[0] {
                    window[1]
                } else {
                    window[0]
                };
                let lower = if window[3] > window[2] {
                    window[3]
                } else {
                    window[2]
                };
                let best = if lower > upper { lower } else { upper };
                let (e0, e1, e2) = (window[0] == best, window[1] == best, window[2] == best);
                let first = u8::from(!e0) * (1 + u8::from(!e1) * (1 + u8::from(!e2)));
                *y = best;
                *arg = first;
                if window.iter().any(|v| v.is_nan()) {
                    // Rare: the last NaN wins, as in Burn.
                    let last = window.iter().rposition(|v| v.is_nan()).unwrap_or(0);
                    *y = f32::NAN;
                    *arg = last as u8;
                }
            }
        }
    }
}

/// The input gradient: each output's gradient `dy` added to the input that won its window.
pub fn backward(dy: &[f32], arg: &[u8], planes: usize, h: usize, w: usize) -> Vec<f32> {
    let (oh, ow) = out(h, w);
    let mut dx = vec![0.0f32; planes * h * w];
    if oh == 0 || ow == 0 {
        return dx;
    }
    let per = per_thread(planes, h * w);
    let parts = dx
        .chunks_mut(per * h * w)
        .zip(dy.chunks(per * oh * ow).zip(arg.chunks(per * oh * ow)));
    super::run_shares(parts.map(|(dx, (dy, arg))| move || backward_planes(dy, arg, dx, h, w)));
    dx
}

fn backward_planes(dy: &[f32], arg: &[u8], dx: &mut [f32], h: usize, w: usize) {
    let (oh, ow) = out(h, w);
    for plane in 0..dx.len() / (h * w) {
        let dx = &mut dx[plane * h * w..][..h * w];
        let (dy, arg) = (
            &dy[plane * oh * ow..][..oh * ow],
            &arg[plane * oh * ow..][..oh * ow],
        );
        for oy in 0..oh {
            for ox in 0..ow {
                let a = arg[oy * ow + ox] as usize;
                dx[(2 * oy + a / 2) * w + 2 * ox + a % 2] += dy[oy * ow + ox];
            }
        }
    }
}
