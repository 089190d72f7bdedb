//! 2-D convolution on `f32` NCHW slices as im2col + one GEMM per group of samples: forward,
//! the input gradient (GEMM then col2im) and the weight and bias gradients.
//!
//! Samples are taken a group at a time so that the GEMM's wide side holds at least
//! [`MIN_COLUMNS`] output positions (a 4x4 ResNet stage still gets wide GEMMs); groups of a batch
//! are shared out over up to [`super::threads`] scoped threads, each with its own buffers.

/// A convolution's shapes: input `[n, c, h, w]`, weight `[oc, c, kh, kw]`, output
/// `[n, oc, oh, ow]`; symmetric padding, groups of one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Samples.
    pub n: usize,
    /// Input channels.
    pub c: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Output channels.
    pub oc: usize,
    /// Kernel height and width.
    pub k: [usize; 2],
    /// Stride (rows, columns).
    pub stride: [usize; 2],
    /// Zero padding on each side (rows, columns).
    pub pad: [usize; 2],
    /// Dilation (rows, columns).
    pub dilation: [usize; 2],
}

/// The GEMM's wide side is at least this many output positions where the batch allows.
const MIN_COLUMNS: usize = 256;

impl Geometry {
    /// Output height and width; `None` when the kernel does not fit the padded input.
    pub fn out(&self) -> Option<[usize; 2]> {
        let side = |i: usize| {
            let span = self.dilation[i] * (self.k[i] - 1) + 1;
            let padded = [self.h, self.w][i] + 2 * self.pad[i];
            (self.stride[i] > 0 && self.k[i] > 0 && padded >= span)
                .then(|| (padded - span) / self.stride[i] + 1)
        };
        Some([side(0)?, side(1)?])
    }

    fn positions(&self) -> usize {
        let [oh, ow] = self.out().unwrap_or([0, 0]);
        oh * ow
    }

    /// Rows of the im2col matrix: `c * kh * kw`.
    fn rows(&self) -> usize {
        self.c * self.k[0] * self.k[1]
    }

    fn input_len(&self) -> usize {
        self.c * self.h * self.w
    }

    /// Samples per GEMM of a thread's `share` of the batch: enough for [`MIN_COLUMNS`] output
    /// positions, more (up to `budget` floats of im2col buffer) where asked.
    fn group(&self, share: usize, budget: usize) -> usize {
        let p = self.positions().max(1);
        let wanted = MIN_COLUMNS
            .div_ceil(p)
            .max(budget / (self.rows().max(1) * p));
        wanted.clamp(1, share.max(1))
    }

    /// Multiply-adds of one pass over the batch (forward, or one of the gradients).
    fn work(&self) -> usize {
        self.n * self.oc * self.rows() * self.positions()
    }
}

/// Scoped threads for a pass over the batch: every sample to one thread at most, none for less
/// than ~4 M multiply-adds (a thread costs more than it saves there).
fn split(g: &Geometry) -> usize {
    let by_work = (g.work() / (4 << 20)).max(1);
    super::threads().min(g.n).min(by_work).max(1)
}

/// Floats of im2col buffer a gradient pass may take per thread (8 MiB): a wide inner dimension
/// for the weight gradient's GEMM, whose output is read and written once per group.
const GRADIENT_BUDGET: usize = 2 << 20;

/// Fills `col` (`[rows, group * p]`, row-major) from samples `x` (`group` samples of
/// `c*h*w`); column `s * p + q` is output position `q` of sample `s`.
fn im2col(g: &Geometry, x: &[f32], group: usize, col: &mut [f32]) {
    let [oh, ow] = g.out().unwrap_or([0, 0]);
    let p = oh * ow;
    let width = group * p;
    let (kh, kw) = (g.k[0], g.k[1]);
    for ci in 0..g.c {
        for ki in 0..kh {
            for kj in 0..kw {
                let row = (ci * kh + ki) * kw + kj;
                let dst_row = &mut col[row * width..(row + 1) * width];
                for s in 0..group {
                    let plane = &x[s * g.input_len() + ci * g.h * g.w..][..g.h * g.w];
                    let dst = &mut dst_row[s * p..(s + 1) * p];
                    for oy in 0..oh {
                        let out_row = &mut dst[oy * ow..(oy + 1) * ow];
                        let iy =
                            (oy * g.stride[0] + ki * g.dilation[0]) as isize - g.pad[0] as isize;
                        if iy < 0 || iy >= g.h as isize {
                            out_row.fill(0.0);
                            continue;
                        }
                        let src = &plane[iy as usize * g.w..(iy as usize + 1) * g.w];
                        let offset = (kj * g.dilation[1]) as isize - g.pad[1] as isize;
                        if g.stride[1] == 1 {
                            // The columns in range are one contiguous run of the input row.
                            let first = (-offset).clamp(0, ow as isize) as usize;
                            let last =
                                (g.w as isize - offset).clamp(first as isize, ow as isize) as usize;
                            out_row[..first].fill(0.0);
                            let start = (first as isize + offset) as usize;
                            out_row[first..last].copy_from_slice(&src[start..start + last - first]);
                            out_row[last..].fill(0.0);
                        } else {
                            for (ox, v) in out_row.iter_mut().enumerate() {
                                let ix = (ox * g.stride[1]) as isize + offset;
                                *v = if ix >= 0 && ix < g.w as isize {
                                    src[ix as usize]
                                } else {
                                    0.0
                                };
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Adds `col` (`[rows, group * p]`) back onto the input gradient `dx` (`group` samples), the
/// transpose of [`im2col`].
fn col2im(g: &Geometry, col: &[f32], group: usize, dx: &mut [f32]) {
    let [oh, ow] = g.out().unwrap_or([0, 0]);
    let p = oh * ow;
    let width = group * p;
    let (kh, kw) = (g.k[0], g.k[1]);
    for ci in 0..g.c {
        for ki in 0..kh {
            for kj in 0..kw {
                let row = (ci * kh + ki) * kw + kj;
                let src_row = &col[row * width..(row + 1) * width];
                for s in 0..group {
                    let plane = &mut dx[s * g.input_len() + ci * g.h * g.w..][..g.h * g.w];
                    let src = &src_row[s * p..(s + 1) * p];
                    for oy in 0..oh {
                        let iy =
                            (oy * g.stride[0] + ki * g.dilation[0]) as isize - g.pad[0] as isize;
                        if iy < 0 || iy >= g.h as isize {
                            continue;
                        }
                        let dst = &mut plane[iy as usize * g.w..(iy as usize + 1) * g.w];
                        let offset = (kj * g.dilation[1]) as isize - g.pad[1] as isize;
                        for (ox, v) in src[oy * ow..(oy + 1) * ow].iter().enumerate() {
                            let ix = (ox * g.stride[1]) as isize + offset;
                            if ix >= 0 && ix < g.w as isize {
                                dst[ix as usize] += v;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Row-major `dst[m, n] = (accumulate ? dst : 0) + a · b`, where `a` is `m x k` and `b` is
/// `k x n`, each given by its (row, column) strides.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    accumulate: bool,
    a: &[f32],
    a_strides: [usize; 2],
    b: &[f32],
    b_strides: [usize; 2],
) {
    if m == 0 || n == 0 {
        return;
    }
    let span = |strides: [usize; 2], rows: usize, cols: usize| {
        (rows.max(1) - 1) * strides[0] + (cols.max(1) - 1) * strides[1] + 1
    };
    // The bounds that make the raw-pointer call below sound.
    assert!(
        dst.len() >= m * n,
        "gemm: dst holds {} < {m}x{n}",
        dst.len()
    );
    assert!(
        k == 0 || a.len() >= span(a_strides, m, k),
        "gemm: a is too short"
    );
    assert!(
        k == 0 || b.len() >= span(b_strides, k, n),
        "gemm: b is too short"
    );
    if k == 0 {
        if !accumulate {
            dst[..m * n].fill(0.0);
        }
        return;
    }
    #[allow(unsafe_code)]
    // SAFETY: every element the GEMM reads or writes lies inside the slices (checked above),
    // `dst` is borrowed mutably and does not alias `a` or `b`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.as_ptr(),
            a_strides[1] as isize,
            a_strides[0] as isize,
            b.as_ptr(),
            b_strides[1] as isize,
            b_strides[0] as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// The forward convolution: `y = conv(x, weight) + bias`, `[n, oc, oh, ow]`; with `relu`,
/// negative outputs become 0 as they are written (NaN stays NaN, as Burn's ReLU keeps it).
pub fn forward(
    g: &Geometry,
    x: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    relu: bool,
) -> Vec<f32> {
    let p = g.positions();
    let rows = g.rows();
    let per_out = g.oc * p;
    let mut y = vec![0.0f32; g.n * per_out];
    if g.n == 0 || per_out == 0 {
        return y;
    }
    let threads = split(g);
    let per_thread = g.n.div_ceil(threads);
    let group = g.group(per_thread, 0);
    let (col_len, tmp_len) = (rows * group * p, g.oc * group * p);
    super::with_scratch(threads * (col_len + tmp_len), |scratch| {
        let mut scratch = scratch.chunks_mut(col_len + tmp_len);
        // The calling thread takes the last share itself.
        super::run_shares(
            y.chunks_mut(per_thread * per_out)
                .enumerate()
                .map(|(t, y_chunk)| {
                    let x_chunk = &x[t * per_thread * g.input_len()..];
                    let (col, tmp) = scratch.next().unwrap_or_default().split_at_mut(col_len);
                    move || {
                        for (i, y_group) in y_chunk.chunks_mut(group * per_out).enumerate() {
                            let samples = y_group.len() / per_out;
                            let x_group =
                                &x_chunk[i * group * g.input_len()..][..samples * g.input_len()];
                            let width = samples * p;
                            let col = &mut col[..rows * width];
                            im2col(g, x_group, samples, col);
                            let tmp = &mut tmp[..g.oc * width];
                            gemm(
                                g.oc,
                                width,
                                rows,
                                tmp,
                                false,
                                weight,
                                [rows, 1],
                                col,
                                [width, 1],
                            );
                            for s in 0..samples {
                                for o in 0..g.oc {
                                    let b = bias.map_or(0.0, |b| b[o]);
                                    let src = &tmp[o * width + s * p..][..p];
                                    let dst = &mut y_group[s * per_out + o * p..][..p];
                                    if relu {
                                        for (d, v) in dst.iter_mut().zip(src) {
                                            let v = v + b;
                                            *d = if v < 0.0 { 0.0 } else { v };
                                        }
                                    } else {
                                        for (d, v) in dst.iter_mut().zip(src) {
                                            *d = v + b;
                                        }
                                    }
                                }
                            }
                        }
                    }
                }),
        );
    });
    y
}

/// Gathers `dy` of `samples` samples (`[s, oc, p]`) into `[oc, s * p]`.
fn gather(g: &Geometry, dy: &[f32], samples: usize, out: &mut [f32]) {
    let p = g.positions();
    let width = samples * p;
    for s in 0..samples {
        for o in 0..g.oc {
            out[o * width + s * p..][..p].copy_from_slice(&dy[(s * g.oc + o) * p..][..p]);
        }
    }
}

/// The input and weight gradients of the convolution, given the output gradient `dy`
/// (`[n, oc, oh, ow]`): `(dx, dweight)`, each computed only when asked for.
pub fn backward(
    g: &Geometry,
    x: &[f32],
    weight: &[f32],
    dy: &[f32],
    want_dx: bool,
    want_dw: bool,
) -> (Option<Vec<f32>>, Option<Vec<f32>>) {
    let p = g.positions();
    let rows = g.rows();
    let per_out = g.oc * p;
    let mut dx = want_dx.then(|| vec![0.0f32; g.n * g.input_len()]);
    if g.n == 0 || per_out == 0 || !(want_dx || want_dw) {
        return (dx, want_dw.then(|| vec![0.0f32; g.oc * rows]));
    }
    let threads = split(g);
    let per_thread = g.n.div_ceil(threads);
    let group = g.group(per_thread, GRADIENT_BUDGET);
    let chunks = g.n.div_ceil(per_thread);
    // Each thread's partial weight gradient, summed after.
    let mut partial = vec![0.0f32; if want_dw { chunks * g.oc * rows } else { 0 }];
    let mut dx_chunks: Vec<&mut [f32]> = match dx.as_mut() {
        Some(dx) => dx.chunks_mut(per_thread * g.input_len()).collect(),
        None => Vec::new(),
    };
    let mut dw_chunks: Vec<&mut [f32]> = if want_dw {
        partial.chunks_mut(g.oc * rows).collect()
    } else {
        Vec::new()
    };
    let (col_len, dy_len) = (rows * group * p, g.oc * group * p);
    super::with_scratch(chunks * (col_len + dy_len), |scratch| {
        let mut scratch = scratch.chunks_mut(col_len + dy_len);
        super::run_shares((0..chunks).map(|t| {
            let first = t * per_thread;
            let count = per_thread.min(g.n - first);
            let x_chunk = &x[first * g.input_len()..][..count * g.input_len()];
            let dy_chunk = &dy[first * per_out..][..count * per_out];
            let mut dx_chunk = (!dx_chunks.is_empty()).then(|| std::mem::take(&mut dx_chunks[t]));
            let mut dw_chunk = (!dw_chunks.is_empty()).then(|| std::mem::take(&mut dw_chunks[t]));
            let (col, dy_cols) = scratch.next().unwrap_or_default().split_at_mut(col_len);
            move || {
                let mut done = 0;
                while done < count {
                    let samples = group.min(count - done);
                    let width = samples * p;
                    let dy_cols = &mut dy_cols[..g.oc * width];
                    gather(g, &dy_chunk[done * per_out..], samples, dy_cols);
                    let col = &mut col[..rows * width];
                    if let Some(dw) = dw_chunk.as_deref_mut() {
                        let xs = &x_chunk[done * g.input_len()..][..samples * g.input_len()];
                        im2col(g, xs, samples, col);
                        // dW[oc, rows] += dY[oc, width] · colᵀ[width, rows]
                        gemm(
                            g.oc,
                            rows,
                            width,
                            dw,
                            true,
                            dy_cols,
                            [width, 1],
                            col,
                            [1, width],
                        );
                    }
                    if let Some(dx) = dx_chunk.as_deref_mut() {
                        // dcol[rows, width] = Wᵀ[rows, oc] · dY[oc, width]
                        gemm(
                            rows,
                            width,
                            g.oc,
                            col,
                            false,
                            weight,
                            [1, rows],
                            dy_cols,
                            [width, 1],
                        );
                        let dxs = &mut dx[done * g.input_len()..][..samples * g.input_len()];
                        col2im(g, col, samples, dxs);
                    }
                    done += samples;
                }
            }
        }));
    });
    let dw = want_dw.then(|| {
        let mut sum = vec![0.0f32; g.oc * rows];
        for part in partial.chunks(g.oc * rows) {
            for (s, v) in sum.iter_mut().zip(part) {
                *s += v;
            }
        }
        sum
    });
    (dx, dw)
}

/// The bias gradient: `dy` summed over samples and positions, per output channel.
pub fn bias_backward(g: &Geometry, dy: &[f32]) -> Vec<f32> {
    let p = g.positions();
    let mut db = vec![0.0f32; g.oc];
    for sample in dy.chunks(g.oc * p.max(1)) {
        for (o, plane) in sample.chunks(p.max(1)).enumerate() {
            db[o] += sum(plane);
        }
    }
    db
}

/// The sum of `values` in eight lanes (which the compiler vectorises; a plain float sum it may
/// not reorder).
fn sum(values: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 8];
    let chunks = values.chunks_exact(8);
    let rest: f32 = chunks.remainder().iter().sum();
    for chunk in chunks {
        for (lane, v) in lanes.iter_mut().zip(chunk) {
            *lane += v;
        }
    }
    lanes.iter().sum::<f32>() + rest
}
