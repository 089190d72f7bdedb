//! Data parallelism is exact: 2 workers with batch B, gradients averaged by allreduce, take the
//! same step as 1 worker with batch 2B from the same weights.

use std::time::Duration;

use burn::optim::{AdamConfig, ModuleOptimizer, SgdConfig};
use burn::tensor::{Device, Int, Tensor, TensorData};
use shardline_comm::InProcess;
use shardline_train::sync::{load_parameters, parameters};
use shardline_train::train::step;
use shardline_train::{Model, ModelConfig};

const B: usize = 4;

fn batch(from: usize, n: usize, device: &Device) -> (Tensor<4>, Tensor<1, Int>) {
    let values: Vec<f32> = (from * 192..(from + n) * 192)
        .map(|i| ((i * 37) % 101) as f32 / 50.0 - 1.0)
        .collect();
    let labels: Vec<i64> = (from..from + n).map(|i| (i % 3) as i64).collect();
    (
        Tensor::<4>::from_data(TensorData::new(values, [n, 3, 8, 8]), device),
        Tensor::<1, Int>::from_data(TensorData::new(labels, [n]), device),
    )
}

fn run(
    workers: usize,
    initial: Vec<(Vec<usize>, Vec<f32>)>,
    steps: usize,
    optimizer: fn() -> ModuleOptimizer,
) -> Vec<Vec<(Vec<usize>, Vec<f32>)>> {
    let config = ModelConfig {
        widths: vec![4, 8],
        ..ModelConfig::cnn([3, 8, 8], 3)
    };
    let handles: Vec<_> = InProcess::group(workers, Duration::from_secs(60))
        .into_iter()
        .map(|mut comm| {
            let config = config.clone();
            let initial = initial.clone();
            std::thread::spawn(move || {
                let device = shardline_train::device::by_name("cpu")
                    .expect("cpu")
                    .autodiff();
                let mut model: Model =
                    load_parameters(config.init(&device), initial).expect("load");
                let mut optimizer = optimizer();
                let per_worker = 2 * B / workers;
                for s in 0..steps {
                    let rank = shardline_comm::Communicator::rank(&comm);
                    let (images, labels) =
                        batch(s * 2 * B + rank * per_worker, per_worker, &device);
                    let (next, ..) =
                        step(&mut comm, model, &mut optimizer, images, labels, 1e-2, 4096)
                            .expect("step");
                    model = next;
                }
                parameters(&model)
            })
        })
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().expect("worker"))
        .collect()
}

fn check(optimizer: fn() -> ModuleOptimizer) {
    let config = ModelConfig {
        widths: vec![4, 8],
        ..ModelConfig::cnn([3, 8, 8], 3)
    };
    let initial = parameters(&config.init(&shardline_train::device::by_name("cpu").expect("cpu")));
    let one = run(1, initial.clone(), 3, optimizer);
    let two = run(2, initial.clone(), 3, optimizer);
    // The two workers agree with each other exactly, and with the single worker within float error.
    assert_eq!(two[0], two[1]);
    let mut max_diff = 0f32;
    for ((shape_a, a), (shape_b, b)) in one[0].iter().zip(&two[0]) {
        assert_eq!(shape_a, shape_b);
        for (x, y) in a.iter().zip(b) {
            max_diff = max_diff.max((x - y).abs());
        }
    }
    assert!(max_diff < 1e-4, "weights differ by {max_diff}");
    // And training moved the weights.
    let moved = initial.iter().zip(&one[0]).any(|((_, a), (_, b))| a != b);
    assert!(moved);
}

#[test]
fn two_workers_with_batch_b_equal_one_worker_with_batch_2b() {
    // SGD's step is proportional to the gradient, so it checks that gradients are averaged (not
    // summed); Adam is the optimizer training uses.
    check(|| SgdConfig::new().init());
    check(|| AdamConfig::new().init());
}
