//! Shardline's own CPU kernels behind Burn's extension points, for the layers where flex's
//! generic ones leave most of the cores' time unused (see the README's profile).
//!
//! [`max_pool2d`] does the same for the 2x2, stride-2 max-pool (a direct kernel keeping one byte
//! per output for the gradient; flex's general pooling took a fifth of the reference CNN's
//! training time). [`conv2d`] is a drop-in for `burn::tensor::module::conv2d`: on flex (with or without
//! autodiff) it runs [`conv`]'s im2col + GEMM kernels, forward and both gradients, registered
//! with Burn's autodiff graph as one operation; on every other backend, and for the shapes the
//! kernels do not take (grouped or asymmetrically padded convolutions), it is Burn's own.
//! The kernels are checked against Burn's on random inputs (this module's tests).

pub mod conv;
pub mod pool;

use std::sync::atomic::{AtomicUsize, Ordering};

use burn::backend::autodiff::NodeId;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::{
    BalancedCheckpointing, CheckpointStrategy, NoCheckpointing,
};
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::{Autodiff, DispatchKindConversion, DispatchTensor, Flex};
use burn::nn::PaddingConfig2d;
use burn::nn::pool::MaxPool2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{DType, Shape, Tensor, TensorData};

use conv::Geometry;

#[cfg(test)]
thread_local! {
    /// Calls that ran this module's kernels on this thread: (forward, backward), so that the
    /// tests know they compared the kernels, not Burn with itself.
    static RAN: std::cell::Cell<(usize, usize)> = const { std::cell::Cell::new((0, 0)) };
}

/// Counts a kernel call for the tests.
fn ran(backward: bool) {
    #[cfg(test)]
    RAN.with(|r| {
        let (f, b) = r.get();
        r.set(if backward { (f, b + 1) } else { (f + 1, b) });
    });
    let _ = backward;
}

/// Threads one kernel call may use; 0 until set (then the machine's cores).
static THREADS: AtomicUsize = AtomicUsize::new(0);

/// The machine's cores, read once: `available_parallelism` reads the cgroup's CPU quota files on
/// every call, which cost more than a small model's whole forward pass at the endpoint.
fn cores() -> usize {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Threads a kernel call may use: what [`set_threads`] said, else every core.
pub fn threads() -> usize {
    match THREADS.load(Ordering::Relaxed) {
        0 => cores(),
        n => n,
    }
}

/// Sets the threads of one kernel call (training sets cores / in-process workers, so that
/// workers do not oversubscribe the cores). 0 restores the default.
pub fn set_threads(n: usize) {
    THREADS.store(n, Ordering::Relaxed);
}

thread_local! {
    /// The calling thread's scratch for the kernels' im2col and GEMM buffers, kept between calls
    /// (a training worker is one thread): fresh buffers of this size cost a page fault per page.
    static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `f` on at least `len` floats of scratch whose contents are unspecified.
fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut scratch) => {
            if scratch.len() < len {
                scratch.resize(len, 0.0);
            }
            f(&mut scratch[..len])
        }
        // Re-entered (not done by the kernels): a buffer of its own.
        Err(_) => f(&mut vec![0.0; len]),
    })
}

/// This machine's single-precision GEMM rate in GFLOP/s: `threads` threads each multiplying
/// 512x512 matrices with the kernels' GEMM for about `seconds`. The bound a convolution's work
/// is measured against (`shardline-bench train` prints the share of it a model reaches).
pub fn sgemm_gflops(threads: usize, seconds: f64) -> f64 {
    const N: usize = 512;
    let threads = threads.max(1);
    let started = std::time::Instant::now();
    let products: usize = std::thread::scope(|scope| {
        let runs: Vec<_> = (0..threads)
            .map(|t| {
                scope.spawn(move || {
                    let a: Vec<f32> = (0..N * N).map(|i| ((i + t) % 7) as f32 - 3.0).collect();
                    let b: Vec<f32> = (0..N * N).map(|i| ((i * 3) % 5) as f32 - 2.0).collect();
                    let mut c = vec![0.0f32; N * N];
                    let mut count = 0;
                    while count == 0 || started.elapsed().as_secs_f64() < seconds {
                        conv::gemm(N, N, N, &mut c, false, &a, [N, 1], &b, [N, 1]);
                        count += 1;
                    }
                    std::hint::black_box(&c);
                    count
                })
            })
            .collect();
        runs.into_iter().map(|r| r.join().unwrap_or(0)).sum()
    });
    (products * 2 * N * N * N) as f64 / started.elapsed().as_secs_f64() / 1e9
}

/// For binaries to call first thing: glibc's allocator gives every freed block over 128 KiB back
/// to the kernel at once (and trims its heaps), so each tensor of a training step is fresh memory,
/// a page fault per 4 KiB; a third of the reference CNN's step went there. Blocks up to 64 MiB are
/// kept for reuse instead, and heaps trimmed only past 256 MiB free. A `GLIBC_TUNABLES` naming
/// malloc settings wins. A no-op on other C libraries.
#[allow(unsafe_code)]
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if !std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("malloc")) {
        // SAFETY: mallopt only changes two thresholds of the allocator, which it reads under its
        // own locks.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 64 << 20);
            libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
        }
    }
}

/// The kernels' geometry of a convolution, if they take it.
fn geometry(x: &Shape, weight: &Shape, options: &ConvOptions<2>) -> Option<Geometry> {
    let ([n, c, h, w], [oc, wc, kh, kw]) = (x.dims::<4>(), weight.dims::<4>());
    let pad = options.padding_begin();
    let symmetric = options.padding_end() == pad;
    if options.groups != 1 || wc != c || !symmetric {
        return None;
    }
    let g = Geometry {
        n,
        c,
        h,
        w,
        oc,
        k: [kh, kw],
        stride: options.stride,
        pad,
        dilation: options.dilation,
    };
    g.out().map(|_| g)
}

/// A 2-D convolution, as `burn::tensor::module::conv2d`.
pub fn conv2d(
    x: Tensor<4>,
    weight: Tensor<4>,
    bias: Option<Tensor<1>>,
    options: ConvOptions<2>,
) -> Tensor<4> {
    let f32s = x.dtype() == DType::F32 && weight.dtype() == DType::F32;
    if let Some(g) = geometry(&x.shape(), &weight.shape(), &options).filter(|_| f32s) {
        if let Some(y) = on_flex(&g, &x, &weight, bias.as_ref(), false) {
            return y;
        }
        if let Some(y) = on_autodiff::<NoCheckpointing>(&g, &x, &weight, bias.as_ref()) {
            return y;
        }
        if let Some(y) = on_autodiff::<BalancedCheckpointing>(&g, &x, &weight, bias.as_ref()) {
            return y;
        }
    }
    burn::tensor::module::conv2d(x, weight, bias, options)
}

/// `relu(conv2d(x, weight, bias, options))`; without autodiff (inference) on flex, the ReLU is
/// applied as the kernel writes its output, saving a pass over the activations.
pub fn conv2d_relu(
    x: Tensor<4>,
    weight: Tensor<4>,
    bias: Option<Tensor<1>>,
    options: ConvOptions<2>,
) -> Tensor<4> {
    let f32s = x.dtype() == DType::F32 && weight.dtype() == DType::F32;
    if let Some(g) = geometry(&x.shape(), &weight.shape(), &options).filter(|_| f32s)
        && let Some(y) = on_flex(&g, &x, &weight, bias.as_ref(), true)
    {
        return y;
    }
    burn::tensor::activation::relu(conv2d(x, weight, bias, options))
}

/// `layer` applied to `x` (`[n, d_in]`), as `Linear::forward`; without autodiff on flex, one
/// GEMM per share of the rows on the kernels' threads (flex's matmul is single-threaded).
pub fn linear(layer: &burn::nn::Linear, x: Tensor<2>) -> Tensor<2> {
    let weight = layer.weight.val();
    let bias = layer.bias.as_ref().map(|b| b.val());
    let [n, d_in] = x.dims();
    let [w_in, d_out] = weight.dims();
    if w_in == d_in && x.dtype() == DType::F32 && weight.dtype() == DType::F32 {
        let parts = (
            primitive::<Flex, 2>(&x),
            primitive::<Flex, 2>(&weight),
            bias.as_ref().map(primitive::<Flex, 1>),
        );
        if let (Some(xp), Some(wp), None | Some(Some(_))) = parts.clone() {
            let b = parts.2.flatten().map(|b| values(&b));
            let y = with_values(&xp, |x| {
                with_values(&wp, |w| dense(x, w, b.as_deref(), n, d_in, d_out))
            });
            return Tensor::from_primitive::<Flex>(flex(y, [n, d_out]));
        }
    }
    layer.forward(x)
}

/// Runs each share's work on a scoped thread of its own, except the last, which the calling
/// thread runs itself; returns once all have finished.
pub(crate) fn run_shares<W: FnOnce() + Send>(works: impl Iterator<Item = W>) {
    std::thread::scope(|scope| {
        let mut works = works.peekable();
        while let Some(work) = works.next() {
            if works.peek().is_none() {
                work();
            } else {
                scope.spawn(work);
            }
        }
    });
}

/// `x[n, d_in] · w[d_in, d_out] + b`, the rows shared out over the kernels' threads.
fn dense(x: &[f32], w: &[f32], b: Option<&[f32]>, n: usize, d_in: usize, d_out: usize) -> Vec<f32> {
    ran(false);
    let mut y = vec![0.0f32; n * d_out];
    if n == 0 || d_out == 0 {
        return y;
    }
    let by_work = (n * d_in * d_out / (4 << 20)).max(1);
    let threads = threads().min(by_work).min(n);
    let rows = n.div_ceil(threads);
    run_shares(y.chunks_mut(rows * d_out).enumerate().map(|(t, y)| {
        let x = &x[t * rows * d_in..];
        move || {
            let m = y.len() / d_out;
            conv::gemm(
                m,
                d_out,
                d_in,
                y,
                false,
                &x[..m * d_in],
                [d_in, 1],
                w,
                [d_out, 1],
            );
            if let Some(b) = b {
                for row in y.chunks_mut(d_out) {
                    for (v, b) in row.iter_mut().zip(b) {
                        *v += b;
                    }
                }
            }
        }
    }));
    y
}

/// A float tensor's primitive on backend `B`, if it lives there.
fn primitive<B, const D: usize>(t: &Tensor<D>) -> Option<B::FloatTensorPrimitive>
where
    B: burn::backend::Backend,
    DispatchTensor: DispatchKindConversion<B>,
{
    t.clone().try_into_primitive::<B>().ok()
}

/// `f32` values of a flex tensor, in row-major order.
fn values(t: &FlexTensor) -> Vec<f32> {
    // Contiguous tensors are read in place; the rest copied once.
    let t = t.to_contiguous();
    t.storage::<f32>().to_vec()
}

/// Runs `f` on the contiguous `f32` values of `t`.
fn with_values<R>(t: &FlexTensor, f: impl FnOnce(&[f32]) -> R) -> R {
    let t = t.to_contiguous();
    f(t.storage::<f32>())
}

fn flex(values: Vec<f32>, shape: impl Into<Shape>) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape.into()))
}

fn out_shape(g: &Geometry) -> [usize; 4] {
    let [oh, ow] = g.out().unwrap_or([0, 0]);
    [g.n, g.oc, oh, ow]
}

fn forward(
    g: &Geometry,
    x: &FlexTensor,
    w: &FlexTensor,
    b: Option<&FlexTensor>,
    relu: bool,
) -> FlexTensor {
    ran(false);
    let bias = b.map(values);
    let y = with_values(x, |x| {
        with_values(w, |w| conv::forward(g, x, w, bias.as_deref(), relu))
    });
    flex(y, out_shape(g))
}

/// Inference: every tensor on flex without autodiff.
fn on_flex(
    g: &Geometry,
    x: &Tensor<4>,
    w: &Tensor<4>,
    b: Option<&Tensor<1>>,
    relu: bool,
) -> Option<Tensor<4>> {
    let xp = primitive::<Flex, 4>(x)?;
    let wp = primitive::<Flex, 4>(w)?;
    let bp = match b {
        Some(b) => Some(primitive::<Flex, 1>(b)?),
        None => None,
    };
    Some(Tensor::from_primitive::<Flex>(forward(
        g,
        &xp,
        &wp,
        bp.as_ref(),
        relu,
    )))
}

/// What the backward pass needs: the input and the weight as the forward saw them.
type State = (FlexTensor, FlexTensor, Geometry);

fn gradients(
    (x, w, g): State,
    dy: FlexTensor,
    want_dx: bool,
    want_dw: bool,
) -> (Option<FlexTensor>, Option<FlexTensor>, Vec<f32>) {
    ran(true);
    let (dx, dw, db) = with_values(&dy, |dy| {
        let (dx, dw) = with_values(&x, |x| {
            with_values(&w, |w| conv::backward(&g, x, w, dy, want_dx, want_dw))
        });
        (dx, dw, conv::bias_backward(&g, dy))
    });
    (
        dx.map(|dx| flex(dx, [g.n, g.c, g.h, g.w])),
        dw.map(|dw| flex(dw, [g.oc, g.c, g.k[0], g.k[1]])),
        db,
    )
}

/// Each gradient registered on its node, for the parents that are tracked.
fn register(grads: &mut Gradients, pairs: [(Option<NodeId>, Option<FlexTensor>); 2]) {
    for (node, grad) in pairs {
        if let (Some(node), Some(grad)) = (node, grad) {
            grads.register::<Flex>(node, grad);
        }
    }
}

#[derive(Debug)]
struct ConvWithBias;

impl Backward<Flex, 3> for ConvWithBias {
    type State = State;

    fn backward(self, ops: Ops<State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_w, node_b] = ops.parents;
        let dy = grads.consume::<Flex>(&ops.node);
        let oc = ops.state.2.oc;
        let (dx, dw, db) = gradients(ops.state, dy, node_x.is_some(), node_w.is_some());
        register(
            grads,
            [(node_x.map(|n| n.id), dx), (node_w.map(|n| n.id), dw)],
        );
        if let Some(node) = node_b {
            grads.register::<Flex>(node.id, flex(db, [oc]));
        }
    }
}

#[derive(Debug)]
struct ConvNoBias;

impl Backward<Flex, 2> for ConvNoBias {
    type State = State;

    fn backward(self, ops: Ops<State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_w] = ops.parents;
        let dy = grads.consume::<Flex>(&ops.node);
        let (dx, dw, _) = gradients(ops.state, dy, node_x.is_some(), node_w.is_some());
        register(
            grads,
            [(node_x.map(|n| n.id), dx), (node_w.map(|n| n.id), dw)],
        );
    }
}

/// Training: every tensor on flex under autodiff with checkpointing strategy `C`.
fn on_autodiff<C>(
    g: &Geometry,
    x: &Tensor<4>,
    w: &Tensor<4>,
    b: Option<&Tensor<1>>,
) -> Option<Tensor<4>>
where
    C: CheckpointStrategy,
    DispatchTensor: DispatchKindConversion<Autodiff<Flex, C>>,
{
    let x = primitive::<Autodiff<Flex, C>, 4>(x)?;
    let w = primitive::<Autodiff<Flex, C>, 4>(w)?;
    let b = match b {
        Some(b) => Some(primitive::<Autodiff<Flex, C>, 1>(b)?),
        None => None,
    };
    let state = (x.primitive().clone(), w.primitive().clone(), *g);
    let out = match b {
        Some(b) => {
            let y = forward(g, &state.0, &state.1, Some(b.primitive()), false);
            match ConvWithBias
                .prepare::<C>([x.node(), w.node(), b.node()])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(prep) => prep.finish(state, y),
                OpsKind::UnTracked(prep) => prep.finish(y),
            }
        }
        None => {
            let y = forward(g, &state.0, &state.1, None, false);
            match ConvNoBias
                .prepare::<C>([x.node(), w.node()])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(prep) => prep.finish(state, y),
                OpsKind::UnTracked(prep) => prep.finish(y),
            }
        }
    };
    Some(Tensor::from_primitive::<Autodiff<Flex, C>>(out))
}

/// `layer` applied to `x`, as `MaxPool2d::forward`: the direct kernel when the layer is a 2x2,
/// stride-2, unpadded pool on flex, Burn's otherwise.
pub fn max_pool2d(layer: &MaxPool2d, x: Tensor<4>) -> Tensor<4> {
    let direct = layer.kernel_size == [2, 2]
        && layer.stride == [2, 2]
        && layer.dilation == [1, 1]
        && !layer.ceil_mode
        && matches!(layer.padding, PaddingConfig2d::Valid)
        && x.dtype() == DType::F32;
    if direct {
        let [n, c, h, w] = x.dims();
        if let Some(xp) = primitive::<Flex, 4>(&x) {
            let (y, _) = pool_forward(&xp, n * c, h, w);
            return Tensor::from_primitive::<Flex>(flex(y, pooled([n, c, h, w])));
        }
        if let Some(y) = pool_autodiff::<NoCheckpointing>(&x) {
            return y;
        }
        if let Some(y) = pool_autodiff::<BalancedCheckpointing>(&x) {
            return y;
        }
    }
    layer.forward(x)
}

fn pooled([n, c, h, w]: [usize; 4]) -> [usize; 4] {
    let (oh, ow) = pool::out(h, w);
    [n, c, oh, ow]
}

fn pool_forward(x: &FlexTensor, planes: usize, h: usize, w: usize) -> (Vec<f32>, Vec<u8>) {
    ran(false);
    with_values(x, |x| pool::forward(x, planes, h, w))
}

#[derive(Debug)]
struct MaxPool;

impl Backward<Flex, 1> for MaxPool {
    /// The winners and the input's shape.
    type State = (std::sync::Arc<Vec<u8>>, [usize; 4]);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node] = ops.parents;
        let dy = grads.consume::<Flex>(&ops.node);
        let (arg, [n, c, h, w]) = ops.state;
        if let Some(node) = node {
            ran(true);
            let dx = with_values(&dy, |dy| pool::backward(dy, &arg, n * c, h, w));
            grads.register::<Flex>(node.id, flex(dx, [n, c, h, w]));
        }
    }
}

fn pool_autodiff<C>(x: &Tensor<4>) -> Option<Tensor<4>>
where
    C: CheckpointStrategy,
    DispatchTensor: DispatchKindConversion<Autodiff<Flex, C>>,
{
    let dims = x.dims();
    let [n, c, h, w] = dims;
    let x = primitive::<Autodiff<Flex, C>, 4>(x)?;
    let (y, arg) = pool_forward(x.primitive(), n * c, h, w);
    let y = flex(y, pooled(dims));
    let out = match MaxPool.prepare::<C>([x.node()]).compute_bound().stateful() {
        OpsKind::Tracked(prep) => prep.finish((std::sync::Arc::new(arg), dims), y),
        OpsKind::UnTracked(prep) => prep.finish(y),
    };
    Some(Tensor::from_primitive::<Autodiff<Flex, C>>(out))
}

#[cfg(test)]
mod tests;
