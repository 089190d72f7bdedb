//! `run`: a trained model on one channel of processed data — accuracy, per-class precision and
//! recall, the confusion matrix.

use serde::{Deserialize, Serialize};
use shardline_contract::model::{self as files, Labels};
use shardline_contract::recipe::Recipe;
use shardline_contract::shards::{Index, index_key};
use shardline_dataset::Normalise;
use shardline_store::Store;

use crate::{Channel, Error, Model, ModelConfig};

/// What to evaluate.
#[derive(Debug, Clone)]
pub struct EvaluateConfig {
    /// The model directory written by the train stage.
    pub model: String,
    /// The output of the process step.
    pub data: String,
    /// The channel to evaluate on.
    pub channel: String,
    /// The Burn device by name.
    pub device: String,
}

impl Default for EvaluateConfig {
    fn default() -> EvaluateConfig {
        EvaluateConfig {
            model: String::new(),
            data: String::new(),
            channel: "test".into(),
            device: "cpu".into(),
        }
    }
}

/// One class's line of the report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassLine {
    /// The class name.
    pub class: String,
    /// Of the samples predicted as this class, the fraction that are.
    pub precision: f64,
    /// Of the samples of this class, the fraction predicted as it.
    pub recall: f64,
    /// Samples of this class.
    pub support: u64,
}

/// The evaluation report (also its JSON form).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvaluateReport {
    /// The model's URI.
    pub model: String,
    /// The channel's URI.
    pub data: String,
    /// Samples evaluated.
    pub samples: u64,
    /// Fraction predicted right.
    pub accuracy: f64,
    /// Per class, in label-id order.
    pub classes: Vec<ClassLine>,
    /// `confusion_matrix[true class][predicted class]`.
    pub confusion_matrix: Vec<Vec<u64>>,
}

/// Reads and parses a JSON file; `what` starts the error message and says what it should be.
pub(crate) async fn read<T: serde::de::DeserializeOwned>(
    store: &Store,
    key: &str,
    what: &str,
) -> Result<T, Error> {
    let bytes = store
        .get(key)
        .await
        .map_err(|e| Error::Data(format!("{what}: cannot read {} ({e})", store.uri_of(key))))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| Error::Data(format!("{what}: {} is not valid ({e})", store.uri_of(key))))
}

/// Evaluates the model on the channel.
pub async fn run(config: &EvaluateConfig) -> Result<EvaluateReport, Error> {
    let open = |what: &str, url: &str| {
        Store::open(url).map_err(|e| Error::Setting(format!("{what} {url}: {e}")))
    };
    let model_dir = open("model", &config.model)?;
    let data = open("data", &config.data)?;
    let device = crate::device::by_name(&config.device)?;
    let not_a_model = "the model must be a directory written by `shardline train`";
    let model_config: ModelConfig = read(&model_dir, files::CONFIG, not_a_model).await?;
    let Labels { classes } = read(&model_dir, files::LABELS, not_a_model).await?;
    let model_recipe: Recipe = read(&model_dir, files::RECIPE, not_a_model).await?;
    let data_recipe: Recipe = read(
        &data,
        "recipe.json",
        "the data must be the output of `shardline process`",
    )
    .await?;
    if model_recipe.shape() != data_recipe.shape() || model_recipe.mode != data_recipe.mode {
        return Err(Error::Data(format!(
            "the data was processed to {:?} {:?}, the model was trained on {:?} {:?}; process the data with the model's recipe",
            data_recipe.shape(),
            data_recipe.mode,
            model_recipe.shape(),
            model_recipe.mode
        )));
    }
    let index: Index = read(
        &data,
        &index_key(&config.channel),
        &format!("the {} channel", config.channel),
    )
    .await?;
    let channel = Channel {
        store: data.child(&config.channel),
        shards: index.shardlist,
    };
    let weights = model_dir
        .get(files::WEIGHTS)
        .await
        .map_err(|e| Error::Data(format!("{not_a_model}: {e}")))?;
    let model = crate::weights::decode(model_config.init(&device), &weights)?;
    // The model's own normalisation, so that evaluation preprocesses exactly as training did.
    let normalise = Normalise::from_recipe(&model_recipe);
    let matrix = crate::train::confusion(&model, &channel, &normalise, classes.len(), &device)?;
    Ok(report(
        model_dir.uri(),
        data.uri_of(&config.channel),
        &classes,
        matrix,
    ))
}

/// The report of a confusion matrix (pure).
pub fn report(
    model: String,
    data: String,
    classes: &[String],
    matrix: Vec<Vec<u64>>,
) -> EvaluateReport {
    let total: u64 = matrix.iter().flatten().sum();
    let correct: u64 = (0..classes.len()).map(|i| matrix[i][i]).sum();
    let ratio = |a: f64, b: u64| if b > 0 { a / b as f64 } else { 0.0 };
    let classes = classes
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let tp = matrix[i][i] as f64;
            let predicted: u64 = matrix.iter().map(|row| row[i]).sum();
            let actual: u64 = matrix[i].iter().sum();
            ClassLine {
                class: name.clone(),
                precision: ratio(tp, predicted),
                recall: ratio(tp, actual),
                support: actual,
            }
        })
        .collect();
    EvaluateReport {
        model,
        data,
        samples: total,
        accuracy: ratio(correct as f64, total),
        classes,
        confusion_matrix: matrix,
    }
}

/// Inference samples/s of `model` on `device` at `batch` images of `input` (`[c, h, w]`), as the
/// endpoint and batch transform run it: one warm-up batch, then batches for at least `seconds`.
pub fn inference_rate(
    model: &Model,
    input: [usize; 3],
    batch: usize,
    seconds: f64,
    device: &burn::tensor::Device,
) -> f64 {
    let [c, h, w] = input;
    let images = burn::tensor::Tensor::<4>::random(
        [batch.max(1), c, h, w],
        burn::tensor::Distribution::Normal(0.0, 1.0),
        device,
    );
    let _ = model.forward(images.clone()).into_data();
    let started = std::time::Instant::now();
    let mut samples = 0;
    while samples == 0 || started.elapsed().as_secs_f64() < seconds {
        let _ = model.forward(images.clone()).into_data();
        samples += batch.max(1);
    }
    samples as f64 / started.elapsed().as_secs_f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precision_and_recall_follow_the_matrix() {
        let r = report(
            "m".into(),
            "d".into(),
            &["a".into(), "b".into()],
            vec![vec![3, 1], vec![0, 4]],
        );
        assert_eq!(r.samples, 8);
        assert!((r.accuracy - 7.0 / 8.0).abs() < 1e-12);
        assert!((r.classes[0].precision - 1.0).abs() < 1e-12);
        assert!((r.classes[0].recall - 0.75).abs() < 1e-12);
        assert!((r.classes[1].precision - 0.8).abs() < 1e-12);
        assert_eq!(r.classes[1].support, 4);
    }
}
