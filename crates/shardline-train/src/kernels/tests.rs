//! The kernels against Burn's reference implementation on random inputs.

use burn::tensor::{Device, Distribution, Tensor, Tolerance, ops::ConvOptions};

use super::*;

/// Convolutions of the shapes the models use, and the edges (padding wider than the stride,
/// dilation, a stride that skips the last column, one sample, one channel).
fn cases() -> Vec<([usize; 4], [usize; 4], ConvOptions<2>, bool)> {
    let opts = |s: usize, p: usize, d: usize| ConvOptions::new([s, s], [p, p], [d, d], 1);
    vec![
        // The reference CNN's two layers on 32x32 RGB.
        ([5, 3, 32, 32], [32, 3, 3, 3], opts(1, 0, 1), true),
        ([4, 32, 15, 15], [64, 32, 3, 3], opts(1, 0, 1), true),
        // bncnn's strided, padded blocks (no bias), on 28x28 gray.
        ([3, 1, 28, 28], [16, 1, 3, 3], opts(2, 1, 1), false),
        // ResNet's 1x1 projection and a late 4x4 stage (several samples per GEMM).
        ([6, 16, 8, 8], [32, 16, 1, 1], opts(2, 0, 1), false),
        ([7, 8, 4, 4], [8, 8, 3, 3], opts(1, 1, 1), false),
        // Dilation, a stride leaving the last column out, non-square input.
        ([2, 2, 11, 9], [3, 2, 3, 3], opts(2, 2, 2), true),
        ([1, 1, 5, 7], [1, 1, 5, 5], opts(1, 0, 1), true),
    ]
}

fn random<const D: usize>(shape: [usize; D], device: &Device) -> Tensor<D> {
    Tensor::random(shape, Distribution::Normal(0.0, 1.0), device)
}

fn close<const D: usize>(ours: Tensor<D>, theirs: Tensor<D>, what: &str) {
    assert_eq!(ours.dims(), theirs.dims(), "{what}: shape");
    ours.into_data().assert_approx_eq::<f32>(
        &theirs.into_data(),
        Tolerance::absolute(2e-4).set_relative(2e-4),
    );
}

#[test]
fn conv2d_forward_matches_burn_on_flex() {
    let device = Device::flex();
    for (xs, ws, options, bias) in cases() {
        let x = random(xs, &device);
        let w = random(ws, &device);
        let b = bias.then(|| random([ws[0]], &device));
        let before = RAN.with(|r| r.get());
        let ours = conv2d(x.clone(), w.clone(), b.clone(), options.clone());
        assert_eq!(RAN.with(|r| r.get()).0, before.0 + 1, "the kernel ran");
        let theirs = burn::tensor::module::conv2d(x, w, b, options);
        close(ours, theirs, &format!("forward {xs:?} {ws:?}"));
    }
}

#[test]
fn conv2d_gradients_match_burn_under_autodiff() {
    let device = Device::flex().autodiff();
    for (xs, ws, options, bias) in cases() {
        let x = random(xs, &device);
        let w = random(ws, &device);
        let b = bias.then(|| random([ws[0]], &device));
        // A loss that weighs every output differently, so that a gradient in the wrong place shows.
        let y_shape =
            burn::tensor::module::conv2d(x.clone(), w.clone(), b.clone(), options.clone()).dims();
        let weights = random(y_shape, &device);
        let run = |ours: bool| {
            let (x, w) = (x.clone().require_grad(), w.clone().require_grad());
            let b = b.clone().map(|b| b.require_grad());
            let y = if ours {
                conv2d(x.clone(), w.clone(), b.clone(), options.clone())
            } else {
                burn::tensor::module::conv2d(x.clone(), w.clone(), b.clone(), options.clone())
            };
            let grads = (y * weights.clone()).sum().backward();
            (
                x.grad(&grads).expect("dx"),
                w.grad(&grads).expect("dw"),
                b.map(|b| b.grad(&grads).expect("db")),
            )
        };
        let before = RAN.with(|r| r.get());
        let ours = run(true);
        let after = RAN.with(|r| r.get());
        assert_eq!(
            (after.0 - before.0, after.1 - before.1),
            (1, 1),
            "the kernels ran forward and backward"
        );
        let theirs = run(false);
        let what = format!("{xs:?} {ws:?}");
        close(ours.0, theirs.0, &format!("dx {what}"));
        close(ours.1, theirs.1, &format!("dw {what}"));
        if let (Some(a), Some(b)) = (ours.2, theirs.2) {
            close(a, b, &format!("db {what}"));
        }
    }
}

#[test]
fn several_threads_give_the_single_thread_result() {
    let g = Geometry {
        n: 64,
        c: 32,
        h: 15,
        w: 15,
        oc: 64,
        k: [3, 3],
        stride: [1, 1],
        pad: [0, 0],
        dilation: [1, 1],
    };
    let values = |n: usize, seed: u32| -> Vec<f32> {
        (0..n)
            .map(|i| {
                ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 8) as f32 / 16777216.0
                    - 0.5
            })
            .collect()
    };
    let x = values(g.n * g.c * g.h * g.w, 1);
    let w = values(g.oc * g.c * 9, 2);
    let dy = values(g.n * g.oc * 13 * 13, 3);
    set_threads(1);
    let one = (
        conv::forward(&g, &x, &w, None, false),
        conv::backward(&g, &x, &w, &dy, true, true),
    );
    set_threads(3);
    let three = (
        conv::forward(&g, &x, &w, None, false),
        conv::backward(&g, &x, &w, &dy, true, true),
    );
    set_threads(0);
    assert_eq!(one.0, three.0, "forward");
    assert_eq!(one.1.0, three.1.0, "dx");
    let (a, b) = (one.1.1.expect("dw"), three.1.1.expect("dw"));
    // Partial sums are added in another order: equal within rounding.
    for (a, b) in a.iter().zip(&b) {
        assert!((a - b).abs() <= 1e-3 * a.abs().max(1.0), "dw {a} vs {b}");
    }
}

#[test]
fn shapes_the_kernels_do_not_take_fall_back_to_burn() {
    let device = Device::flex();
    // Grouped, and asymmetrically padded: Burn's own convolution answers.
    let x = random([2, 4, 9, 9], &device);
    let w = random([4, 2, 3, 3], &device);
    let grouped = ConvOptions::new([1, 1], [1, 1], [1, 1], 2);
    assert_eq!(
        geometry(&x.shape(), &w.shape(), &grouped),
        None,
        "groups are Burn's"
    );
    let before = RAN.with(|r| r.get());
    let y = conv2d(x.clone(), w.clone(), None, grouped.clone());
    assert_eq!(RAN.with(|r| r.get()), before, "Burn's convolution ran");
    close(
        y,
        burn::tensor::module::conv2d(x, w, None, grouped),
        "grouped",
    );
    let asymmetric = ConvOptions::new_with_padding([1, 1], [(0, 1), (1, 0)], [1, 1], 1);
    let x = random([1, 2, 6, 6], &device);
    let w = random([3, 2, 3, 3], &device);
    assert_eq!(geometry(&x.shape(), &w.shape(), &asymmetric), None);
}

fn pool_layer() -> MaxPool2d {
    burn::nn::pool::MaxPool2dConfig::new([2, 2]).init()
}

#[test]
fn max_pool_matches_burn_forward_and_backward() {
    let layer = pool_layer();
    // Even and odd sizes (the last row and column of an odd plane are left out).
    // [16, 32, 30, 30] is large enough to be shared out over threads.
    for shape in [
        [3, 4, 30, 30],
        [2, 3, 7, 9],
        [1, 1, 2, 2],
        [2, 2, 13, 13],
        [16, 32, 30, 30],
    ] {
        let device = Device::flex();
        let x = random(shape, &device);
        let before = RAN.with(|r| r.get());
        let ours = max_pool2d(&layer, x.clone());
        assert_eq!(RAN.with(|r| r.get()).0, before.0 + 1, "the kernel ran");
        close(ours, layer.forward(x), &format!("pool {shape:?}"));

        let device = Device::flex().autodiff();
        let x = random(shape, &device);
        let weights = random(layer.forward(x.clone()).dims(), &device);
        let grad = |ours: bool| {
            let x = x.clone().require_grad();
            let y = if ours {
                max_pool2d(&layer, x.clone())
            } else {
                layer.forward(x.clone())
            };
            x.grad(&(y * weights.clone()).sum().backward()).expect("dx")
        };
        let before = RAN.with(|r| r.get());
        let ours = grad(true);
        let after = RAN.with(|r| r.get());
        assert_eq!((after.0 - before.0, after.1 - before.1), (1, 1));
        close(ours, grad(false), &format!("pool gradient {shape:?}"));
    }
}

#[test]
fn max_pool_picks_winners_as_burn_does() {
    // Ties go to the first in row-major order; a NaN wins over any number.
    let nan = f32::NAN;
    let x = [1.0, 1.0, 1.0, 1.0, 0.0, nan, 5.0, 2.0];
    // Two planes of 2x2: [[1,1],[1,1]] and [[0,nan],[5,2]].
    let (y, arg) = pool::forward(&x, 2, 2, 2);
    assert_eq!(arg, vec![0, 1]);
    assert_eq!(y[0], 1.0);
    assert!(y[1].is_nan());
    let dx = pool::backward(&[3.0, 4.0], &arg, 2, 2, 2);
    assert_eq!(dx, vec![3.0, 0.0, 0.0, 0.0, 0.0, 4.0, 0.0, 0.0]);
    // Layers the kernel does not take run Burn's pooling.
    let padded = burn::nn::pool::MaxPool2dConfig::new([3, 3]).init();
    let x = random([1, 1, 6, 6], &Device::flex());
    let before = RAN.with(|r| r.get());
    close(
        max_pool2d(&padded, x.clone()),
        padded.forward(x),
        "3x3 pool",
    );
    assert_eq!(RAN.with(|r| r.get()), before);
}

#[test]
fn fused_relu_and_threaded_dense_match_burn_at_inference() {
    let device = Device::flex();
    for (xs, ws, options, bias) in cases() {
        let x = random(xs, &device);
        let w = random(ws, &device);
        let b = bias.then(|| random([ws[0]], &device));
        let ours = conv2d_relu(x.clone(), w.clone(), b.clone(), options.clone());
        let theirs = burn::tensor::activation::relu(burn::tensor::module::conv2d(x, w, b, options));
        close(ours, theirs, &format!("conv + relu {xs:?} {ws:?}"));
    }
    for (n, d_in, d_out, bias) in [(64, 2304, 128, true), (3, 5, 7, false), (257, 64, 10, true)] {
        let layer = burn::nn::LinearConfig::new(d_in, d_out)
            .with_bias(bias)
            .init(&device);
        let x = random([n, d_in], &device);
        let before = RAN.with(|r| r.get());
        let ours = linear(&layer, x.clone());
        assert_eq!(RAN.with(|r| r.get()).0, before.0 + 1, "the kernel ran");
        close(
            ours,
            layer.forward(x),
            &format!("linear {n}x{d_in}x{d_out}"),
        );
    }
    // Under autodiff the layer is Burn's, so its gradients are.
    let device = Device::flex().autodiff();
    let layer = burn::nn::LinearConfig::new(4, 3).init(&device);
    let before = RAN.with(|r| r.get());
    let _ = linear(&layer, random([2, 4], &device));
    assert_eq!(RAN.with(|r| r.get()), before);
}
