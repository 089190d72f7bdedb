//! A trained model's files, read from a model directory written by `shardline train` or from its
//! `model.tar.gz` (SageMaker's artefact form), on any store.

use std::collections::HashMap;

use shardline_contract::model::{self, Labels};
use shardline_contract::recipe::Recipe;
use shardline_store::Store;
use shardline_train::ModelConfig;

use crate::Error;

/// The files of a model directory that serving needs, checked against each other.
#[derive(Debug, Clone)]
pub struct ModelFiles {
    /// Where the model was read from.
    pub source: String,
    /// The architecture (`model.json`).
    pub config: ModelConfig,
    /// The encoded weights (`weights.bin`).
    pub weights: Vec<u8>,
    /// The class names, in label-id order (`labels.json`'s `classes`).
    pub classes: Vec<String>,
    /// The preprocessing recipe the model was trained with (`recipe.json`).
    pub recipe: Recipe,
    /// The model's lineage record (`lineage.json`), when it has one.
    pub lineage: Option<serde_json::Value>,
    /// The per-epoch metrics (`metrics.csv`), when there are some.
    pub metrics_csv: Option<String>,
}

/// The files of a model directory that serving reads.
const FILES: [&str; 6] = [
    model::CONFIG,
    model::WEIGHTS,
    model::LABELS,
    model::RECIPE,
    model::LINEAGE,
    model::METRICS,
];

/// The serving files of a `model.tar.gz`.
fn unpack(bytes: &[u8]) -> Result<HashMap<String, Vec<u8>>, shardline_contract::Error> {
    Ok(model::unpack(bytes, &|name| FILES.contains(&name))?
        .into_iter()
        .collect())
}

impl ModelFiles {
    /// Reads a model from `url`: a directory written by `shardline train` (local or on any
    /// store), a directory holding only `model.tar.gz`, or the URL of a `.tar.gz` itself.
    pub async fn load(url: &str) -> Result<ModelFiles, Error> {
        let bad = |reason: String| Error::BadModel {
            url: url.to_string(),
            reason,
        };
        let files = if url.ends_with(".tar.gz") || url.ends_with(".tgz") {
            let full = shardline_store::Location::parse(url)?.uri();
            let (dir, name) = full
                .trim_end_matches('/')
                .rsplit_once('/')
                .ok_or_else(|| bad("not a URL of a file".into()))?;
            let bytes = Store::open(dir)?.get(name).await?;
            unpack(&bytes).map_err(|e| bad(format!("not a readable model.tar.gz ({e})")))?
        } else {
            let store = Store::open(url)?;
            shardline_store::commit::recover(&store).await?;
            if store.exists("model.json").await? {
                let mut files = HashMap::new();
                for name in FILES {
                    if let Some(bytes) = store.get_opt(name).await? {
                        files.insert(name.to_string(), bytes.to_vec());
                    }
                }
                files
            } else if let Some(bytes) = store.get_opt("model.tar.gz").await? {
                unpack(&bytes).map_err(|e| bad(format!("model.tar.gz is not readable ({e})")))?
            } else {
                return Err(bad(
                    "holds neither model.json nor model.tar.gz; give the output of `shardline train`"
                        .into(),
                ));
            }
        };
        ModelFiles::from_files(url, files)
    }

    /// Checks and assembles a model from its files by name.
    pub fn from_files(url: &str, mut files: HashMap<String, Vec<u8>>) -> Result<ModelFiles, Error> {
        let bad = |reason: String| Error::BadModel {
            url: url.to_string(),
            reason,
        };
        let mut take = |name: &str| {
            files.remove(name).ok_or_else(|| {
                bad(format!(
                    "{name} is missing; is this a model written by `shardline train`?"
                ))
            })
        };
        let config: ModelConfig = serde_json::from_slice(&take("model.json")?)
            .map_err(|e| bad(format!("model.json is not valid ({e})")))?;
        config
            .validate()
            .map_err(|e| bad(format!("model.json: {e}")))?;
        let weights = take("weights.bin")?;
        let Labels { classes } = serde_json::from_slice(&take("labels.json")?)
            .map_err(|e| bad(format!("labels.json is not {{\"classes\": [names]}} ({e})")))?;
        let recipe: Recipe = serde_json::from_slice(&take("recipe.json")?)
            .map_err(|e| bad(format!("recipe.json is not valid ({e})")))?;
        if classes.len() != config.classes {
            return Err(bad(format!(
                "labels.json names {} classes, model.json has {}",
                classes.len(),
                config.classes
            )));
        }
        let [h, w, c] = recipe.shape();
        if config.input != [c, h, w] {
            return Err(bad(format!(
                "recipe.json makes {c}x{h}x{w} tensors, model.json expects {:?}",
                config.input
            )));
        }
        if recipe.mean.len() != c || recipe.std.len() != c || recipe.std.iter().any(|&s| s <= 0.0) {
            return Err(bad(format!(
                "recipe.json needs {c} means and {c} positive standard deviations"
            )));
        }
        let lineage = files
            .remove("lineage.json")
            .and_then(|bytes| serde_json::from_slice(&bytes).ok());
        let metrics_csv = files
            .remove("metrics.csv")
            .and_then(|bytes| String::from_utf8(bytes).ok());
        Ok(ModelFiles {
            source: url.to_string(),
            config,
            weights,
            classes,
            recipe,
            lineage,
            metrics_csv,
        })
    }

    /// Builds the Burn model with these weights (on the calling thread: Burn's model is not
    /// shared between threads).
    pub fn build(&self, device: &burn::tensor::Device) -> Result<shardline_train::Model, Error> {
        Ok(shardline_train::weights::decode(
            self.config.init(device),
            &self.weights,
        )?)
    }

    /// Loads the model at `url` as the endpoint does and builds it once on the CPU, weights and
    /// all: what registering checks, so that no version is one the endpoint cannot serve.
    pub async fn check(url: &str) -> Result<ModelFiles, Error> {
        let files = ModelFiles::load(url).await?;
        let device = shardline_train::device::by_name("cpu")?;
        files.build(&device).map_err(|e| Error::BadModel {
            url: url.to_string(),
            reason: format!("its weights do not load into its model.json ({e})"),
        })?;
        Ok(files)
    }
}
