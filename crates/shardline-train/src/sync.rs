//! Moving a model's parameters and gradients through a [`Communicator`]: flatten in module order,
//! run the collective, put the values back. Parameters are broadcast from rank 0; gradients are
//! averaged with fused buckets.

use std::collections::VecDeque;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor, TensorData};
use shardline_comm::{Communicator, FusedStats, allreduce_fused};

use crate::Error;

type Flat = (ParamId, Vec<usize>, Device, Vec<f32>);

/// A model's parameters in module order: each one's shape and values.
pub type Parameters = Vec<(Vec<usize>, Vec<f32>)>;

struct CollectGrads<'a> {
    grads: &'a mut GradientsParams,
    out: Vec<Flat>,
}

impl ModuleVisitor for CollectGrads<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(grad) = self.grads.remove::<D>(param.id) {
            let shape = grad.dims().to_vec();
            let device = grad.device();
            let values = grad.to_data().try_into_vec::<f32>().unwrap_or_default();
            self.out.push((param.id, shape, device, values));
        }
    }
}

struct RestoreGrads {
    grads: GradientsParams,
    values: VecDeque<Flat>,
}

impl ModuleVisitor for RestoreGrads {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if self.values.front().is_some_and(|(id, ..)| *id == param.id)
            && let Some((id, shape, device, values)) = self.values.pop_front()
        {
            let tensor = Tensor::<D>::from_data(TensorData::new(values, shape), &device);
            self.grads.register::<D>(id, tensor);
        }
    }
}

/// Averages the gradients over every rank, in buckets of `bucket_bytes`.
pub fn average_gradients<M: Module>(
    comm: &mut dyn Communicator,
    model: &M,
    mut grads: GradientsParams,
    bucket_bytes: usize,
) -> Result<(GradientsParams, FusedStats), Error> {
    let mut collect = CollectGrads {
        grads: &mut grads,
        out: Vec::new(),
    };
    model.visit(&mut collect);
    let mut flat = collect.out;
    let stats = {
        let mut tensors: Vec<&mut [f32]> = flat
            .iter_mut()
            .map(|(_, _, _, v)| v.as_mut_slice())
            .collect();
        allreduce_fused(comm, &mut tensors, bucket_bytes)?
    };
    let mut restore = RestoreGrads {
        grads: GradientsParams::new(),
        values: flat.into(),
    };
    model.visit(&mut restore);
    Ok((restore.grads, stats))
}

/// The model's parameters, flattened in module order.
pub fn parameters<M: Module>(model: &M) -> Parameters {
    struct Collect(Vec<(Vec<usize>, Vec<f32>)>);
    impl ModuleVisitor for Collect {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let value = param.val();
            let shape = value.dims().to_vec();
            self.0.push((
                shape,
                value.to_data().try_into_vec::<f32>().unwrap_or_default(),
            ));
        }
    }
    let mut collect = Collect(Vec::new());
    model.visit(&mut collect);
    collect.0
}

/// Replaces the model's parameters with `values`, in module order; shapes must match.
pub fn load_parameters<M: Module>(
    model: M,
    values: Vec<(Vec<usize>, Vec<f32>)>,
) -> Result<M, Error> {
    struct Load {
        values: VecDeque<(Vec<usize>, Vec<f32>)>,
        error: Option<String>,
    }
    impl ModuleMapper for Load {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let Some((shape, values)) = self.values.pop_front() else {
                self.error
                    .get_or_insert_with(|| "fewer parameters than the model has".into());
                return param;
            };
            param.map(|tensor| {
                if tensor.dims().as_slice() != shape.as_slice() {
                    self.error.get_or_insert_with(|| {
                        format!(
                            "a parameter of shape {shape:?} where the model has {:?}",
                            tensor.dims()
                        )
                    });
                    return tensor;
                }
                let device = tensor.device();
                let grad = tensor.is_require_grad();
                let loaded = Tensor::<D>::from_data(TensorData::new(values, shape), &device);
                if grad { loaded.require_grad() } else { loaded }
            })
        }
    }
    let mut load = Load {
        values: values.into(),
        error: None,
    };
    let model = model.map(&mut load);
    if let Some(error) = load.error {
        return Err(Error::Weights(error));
    }
    if !load.values.is_empty() {
        return Err(Error::Weights(format!(
            "{} parameters more than the model has",
            load.values.len()
        )));
    }
    Ok(model)
}

/// Makes every rank's parameters rank 0's.
pub fn broadcast_parameters<M: Module>(comm: &mut dyn Communicator, model: M) -> Result<M, Error> {
    let mut values = parameters(&model);
    for (_, v) in &mut values {
        comm.broadcast(v, 0)?;
    }
    load_parameters(model, values)
}

/// How [`seeded`] draws the weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Init {
    /// He-uniform, `±sqrt(6 / fan_in)`: for ReLU networks (PyTorch's and Burn's family).
    HeUniform,
    /// Glorot-uniform, `±sqrt(6 / (fan_in + fan_out))`: Keras's default, which the benchmark's
    /// reference CNN keeps so that it is the Keras peer's model.
    GlorotUniform,
}

/// Replaces every parameter with a value drawn from a seeded stream, so that every run and every
/// process starts from the same weights (Burn's own initialisers draw from an unseeded generator).
/// Weights get He-uniform values ([`seeded_as`] takes the scheme), biases zeros, and a
/// vector Burn initialised to one constant (a batch norm's scale and shift, its running mean and
/// variance) keeps it.
pub fn seeded<M: Module>(model: M, seed: u64) -> Result<M, Error> {
    seeded_as(model, seed, Init::HeUniform)
}

/// [`seeded`] with the weights drawn by `init`. Fan-in is `in × kh × kw` for a convolution weight
/// `[out, in, kh, kw]` and `in` for a linear weight `[in, out]`; fan-out `out × kh × kw` and
/// `out`.
pub fn seeded_as<M: Module>(model: M, seed: u64, init: Init) -> Result<M, Error> {
    let mut rng = shardline_lineage::SplitMix64(seed ^ 0x5eed_5eed_5eed_5eed);
    let mut uniform = move || (rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0;
    let values = parameters(&model)
        .into_iter()
        .map(|(shape, old)| {
            let (fan_in, fan_out) = match shape.len() {
                4 => (
                    shape[1] * shape[2] * shape[3],
                    shape[0] * shape[2] * shape[3],
                ),
                2 => (shape[0], shape[1]),
                _ => (0, 0),
            };
            let constant = old
                .first()
                .is_some_and(|&first| old.iter().all(|&v| v == first));
            let values = if fan_in == 0 && constant {
                old
            } else if fan_in == 0 {
                vec![0.0; old.len()]
            } else {
                let bound = match init {
                    Init::HeUniform => (6.0 / fan_in as f32).sqrt(),
                    Init::GlorotUniform => (6.0 / (fan_in + fan_out) as f32).sqrt(),
                };
                (0..old.len()).map(|_| uniform() * bound).collect()
            };
            (shape, values)
        })
        .collect();
    let model = load_parameters(model, values)?;
    Ok(renumber(model))
}

/// Averages the model's running statistics (the tensors that take no gradient: batch norm's
/// running mean and variance) over every rank, so that every rank holds the same model after
/// each epoch. A model without any is returned as it is, without a collective, on every rank
/// alike (every rank holds the same architecture).
pub fn average_running_stats<M: Module>(comm: &mut dyn Communicator, model: M) -> Result<M, Error> {
    struct Collect(Vec<Vec<f32>>);
    impl ModuleVisitor for Collect {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let value = param.val();
            if !value.is_require_grad() {
                self.0
                    .push(value.to_data().try_into_vec::<f32>().unwrap_or_default());
            }
        }
    }
    // A running state keeps its last update aside (per thread) until it is synced; `valid`
    // syncs them, so that what is read below is the latest and is not overwritten afterwards.
    drop(model.valid());
    let mut collect = Collect(Vec::new());
    model.visit(&mut collect);
    let mut stats = collect.0;
    if stats.is_empty() || comm.size() == 1 {
        return Ok(model);
    }
    let mut flat: Vec<f32> = stats.iter().flatten().copied().collect();
    comm.allreduce_sum(&mut flat)?;
    let scale = 1.0 / comm.size() as f32;
    let mut at = 0;
    for values in &mut stats {
        for v in values.iter_mut() {
            *v = flat[at] * scale;
            at += 1;
        }
    }
    struct Load(VecDeque<Vec<f32>>);
    impl ModuleMapper for Load {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            if param.val().is_require_grad() {
                return param;
            }
            let Some(values) = self.0.pop_front() else {
                return param;
            };
            param.map(|tensor| {
                let shape = tensor.dims().to_vec();
                Tensor::<D>::from_data(TensorData::new(values, shape), &tensor.device())
            })
        }
    }
    Ok(model.map(&mut Load(stats.into())))
}

/// Gives the parameters the ids 1, 2, 3... in module order, so that optimizer state saved by one
/// run (keyed by parameter id) fits the same model built by another run or another rank.
pub fn renumber<M: Module>(model: M) -> M {
    struct Renumber(u64);
    impl ModuleMapper for Renumber {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            self.0 += 1;
            let tensor = param.val();
            let tensor = if tensor.is_require_grad() {
                tensor.require_grad()
            } else {
                tensor
            };
            Param::initialized(ParamId::from(self.0), tensor)
        }
    }
    model.map(&mut Renumber(0))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use burn::nn::{BatchNorm, BatchNormConfig};
    use shardline_comm::InProcess;

    use super::*;

    #[test]
    fn weights_are_drawn_within_the_schemes_bounds() {
        let device = crate::device::by_name("cpu").expect("cpu");
        // A 3x3 convolution from 3 to 32 channels: fan-in 27, fan-out 288.
        let conv = burn::nn::conv::Conv2dConfig::new([3, 32], [3, 3]).init(&device);
        let largest = |init| {
            let conv = seeded_as(conv.clone(), 1, init).expect("seeded");
            let weights = parameters(&conv).remove(0).1;
            weights.iter().fold(0.0f32, |m, v| m.max(v.abs()))
        };
        let (he, glorot) = (largest(Init::HeUniform), largest(Init::GlorotUniform));
        assert!(
            he <= (6.0f32 / 27.0).sqrt() && he > 0.9 * (6.0f32 / 27.0).sqrt(),
            "{he}"
        );
        let bound = (6.0f32 / (27.0 + 288.0)).sqrt();
        assert!(glorot <= bound && glorot > 0.9 * bound, "{glorot}");
    }

    #[test]
    fn seeding_keeps_a_batch_norms_constants() {
        let device = crate::device::by_name("cpu").expect("cpu").autodiff();
        let norm: BatchNorm = seeded(BatchNormConfig::new(3).init(&device), 7).expect("seeded");
        let values: Vec<Vec<f32>> = parameters(&norm).into_iter().map(|(_, v)| v).collect();
        // gamma, beta, running mean, running variance.
        assert_eq!(
            values,
            [vec![1.0; 3], vec![0.0; 3], vec![0.0; 3], vec![1.0; 3]]
        );
    }

    #[test]
    fn running_statistics_are_averaged_over_the_ranks_and_parameters_left_alone() {
        let results: Vec<_> = InProcess::group(2, Duration::from_secs(30))
            .into_iter()
            .map(|mut comm| {
                std::thread::spawn(move || {
                    let device = crate::device::by_name("cpu").expect("cpu").autodiff();
                    let norm: BatchNorm = BatchNormConfig::new(2).with_momentum(1.0).init(&device);
                    // Rank r sees channel values r and 3r: batch means (r, 3r).
                    let r = comm.rank() as f32;
                    let x = Tensor::<4>::from_data(
                        TensorData::new(vec![r, 3.0 * r, r, 3.0 * r], [2, 2, 1, 1]),
                        &device,
                    );
                    let _ = norm.forward(x);
                    let norm = average_running_stats(&mut comm, norm).expect("average");
                    parameters(&norm.valid())
                })
            })
            .collect();
        let results: Vec<_> = results
            .into_iter()
            .map(|h| h.join().expect("rank"))
            .collect();
        assert_eq!(results[0], results[1]);
        let values: Vec<&Vec<f32>> = results[0].iter().map(|(_, v)| v).collect();
        // gamma and beta untouched; the running mean is the mean of (0, 0) and (1, 3).
        assert_eq!(values[0], &vec![1.0, 1.0]);
        assert_eq!(values[1], &vec![0.0, 0.0]);
        assert_eq!(values[2], &vec![0.5, 1.5]);
    }
}
