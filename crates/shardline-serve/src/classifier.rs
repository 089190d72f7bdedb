//! The built-in [`Inference`]: an image classifier trained by `shardline train`. Raw JPEG or PNG
//! bytes get exactly the preprocessing the model was trained with (the model's own recipe, less
//! its augmentations: the same bounded decode, colour mode, resize and per-channel
//! normalisation); the answer is the top-k labels with their probabilities.

use std::cell::RefCell;
use std::sync::Arc;

use burn::tensor::{Device, Tensor as BurnTensor, TensorData};
use serde::Deserialize;
use shardline_contract::recipe::Recipe;
use shardline_dataset::Normalise;
use shardline_preprocess::{self as transform, Reject};

use crate::inference::{Answer, Inference, Reply, Request, Tensor, TensorSpec};
use crate::{InferenceError, ModelFiles};

/// Settings of the built-in classifier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassifierOptions {
    /// Labels in an answer when the request gives no `k`.
    pub default_k: usize,
    /// A lower limit on the largest image, in pixels, than the recipe's; `None` (the default)
    /// keeps the recipe's, so that the endpoint and batch transform accept exactly the images
    /// processing accepted for training (`max_pixels` in recipe.json, set by `process
    /// --max-pixels`). Read from the header, before decoding.
    pub max_pixels: Option<u64>,
    /// The most images one JSON tensor request may carry.
    pub max_images: usize,
    /// The Burn device the model threads run on, by name (`cpu`, or `cuda` / `wgpu` in a
    /// build with that backend); never Burn's own default.
    pub device: String,
}

impl Default for ClassifierOptions {
    fn default() -> ClassifierOptions {
        ClassifierOptions {
            default_k: 5,
            max_pixels: None,
            max_images: 256,
            device: "cpu".into(),
        }
    }
}

/// One request's images, normalised channel-first: `count` x `[channels, height, width]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Images {
    /// How many images.
    pub count: usize,
    /// Their values, image after image.
    pub values: Vec<f32>,
}

/// Class probabilities, one row per image of the request.
pub type Probabilities = Vec<Vec<f32>>;

/// The model on a model thread: Burn's module and its device.
pub struct Loaded {
    model: shardline_train::Model,
    device: Device,
}

/// An image classifier written by `shardline train`, as an [`Inference`].
#[derive(Debug, Clone)]
pub struct ImageClassifier {
    files: Arc<ModelFiles>,
    recipe: Recipe,
    normalise: Normalise,
    options: ClassifierOptions,
}

/// The body of a JSON tensor request to `/invocations`: `{"shape": [n, c, h, w] or [c, h, w],
/// "data": [...]}`, values already normalised as the model expects.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonTensor {
    shape: Vec<i64>,
    data: Vec<f32>,
}

thread_local! {
    /// One set of decode and resize buffers per thread, kept between images.
    static SCRATCH: RefCell<transform::Scratch> = RefCell::new(transform::Scratch::new());
}

impl ImageClassifier {
    /// The classifier for a loaded model.
    pub fn new(files: ModelFiles, options: ClassifierOptions) -> ImageClassifier {
        let mut recipe = files.recipe.clone();
        // Serving sees each image once, as it is: augmentations are for training only.
        recipe.augment.clear();
        if let Some(max) = options.max_pixels {
            recipe.max_pixels = recipe.max_pixels.min(max);
        }
        let normalise = Normalise::from_recipe(&recipe);
        ImageClassifier {
            files: Arc::new(files),
            recipe,
            normalise,
            options,
        }
    }

    /// The model's class names, in label-id order.
    pub fn classes(&self) -> &[String] {
        &self.files.classes
    }

    /// The model's files.
    pub fn files(&self) -> &ModelFiles {
        &self.files
    }

    /// The model's input, `[channels, height, width]`.
    pub fn input_shape(&self) -> [usize; 3] {
        self.files.config.input
    }

    /// Builds the model on the calling thread (the direct, unbatched path).
    pub fn load_model(&self) -> Result<Loaded, String> {
        let device =
            shardline_train::device::by_name(&self.options.device).map_err(|e| e.to_string())?;
        let model = self.files.build(&device).map_err(|e| e.to_string())?;
        Ok(Loaded { model, device })
    }

    /// Raw JPEG or PNG bytes → the normalised, channel-first tensor the model takes, exactly as
    /// training prepared its samples.
    pub fn preprocess(&self, bytes: &[u8]) -> Result<Vec<f32>, InferenceError> {
        let hwc = SCRATCH
            .with(|r| transform::process(bytes, "", 0, &self.recipe, &mut r.borrow_mut()))
            .map_err(|reject| {
                InferenceError::bad_request(match reject {
                    Reject::UnknownFormat => {
                        "the body is not a JPEG or PNG image; send the image's bytes as image/jpeg, image/png or application/x-image".to_string()
                    }
                    Reject::TooLarge { width, height, max_pixels } => format!(
                        "the image header declares {width}x{height} pixels, over the limit of {max_pixels}; send a smaller image"
                    ),
                    Reject::Decode(why) => format!("the image cannot be decoded: {why}"),
                })
            })?;
        let mut out = vec![0.0; self.normalise.len()];
        self.normalise.apply(&hwc, &mut out);
        Ok(out)
    }

    /// Checks a tensor's shape against the model's input and the data's length, before any
    /// tensor is built: `[c, h, w]` (one image) or `[n, c, h, w]`.
    pub fn check_tensor(&self, shape: &[i64], data: Vec<f32>) -> Result<Images, InferenceError> {
        let [c, h, w] = self.input_shape();
        let expected = format!("[n, {c}, {h}, {w}] or [{c}, {h}, {w}]");
        let bad =
            |why: String| InferenceError::bad_request(format!("tensor shape {shape:?}: {why}"));
        let dims: Vec<usize> = shape
            .iter()
            .map(|&d| usize::try_from(d).map_err(|_| bad("dimensions must be non-negative".into())))
            .collect::<Result<_, _>>()?;
        let count = match dims.as_slice() {
            [cc, hh, ww] if [*cc, *hh, *ww] == [c, h, w] => 1,
            [n, cc, hh, ww] if [*cc, *hh, *ww] == [c, h, w] => *n,
            _ => return Err(bad(format!("this model takes {expected}"))),
        };
        if count == 0 || count > self.options.max_images {
            return Err(bad(format!(
                "a request carries 1 to {} images",
                self.options.max_images
            )));
        }
        let values = count * c * h * w;
        if data.len() != values {
            return Err(bad(format!(
                "the shape needs {values} values, the data has {}",
                data.len()
            )));
        }
        // A value over FP32's range arrives as an infinity: the model would answer NaNs.
        if let Some(i) = data.iter().position(|v| !v.is_finite()) {
            return Err(InferenceError::bad_request(format!(
                "value {i} of the data is not a finite FP32 number (at most {:e} in magnitude)",
                f32::MAX
            )));
        }
        Ok(Images {
            count,
            values: data,
        })
    }

    /// The model over a batch of images: class probabilities per image (softmax of the logits).
    pub fn probabilities(
        &self,
        loaded: &Loaded,
        images: &[Images],
    ) -> Result<Vec<Vec<f32>>, InferenceError> {
        let [c, h, w] = self.input_shape();
        let n: usize = images.iter().map(|i| i.count).sum();
        let mut values = Vec::with_capacity(n * c * h * w);
        for image in images {
            values.extend_from_slice(&image.values);
        }
        let input =
            BurnTensor::<4>::from_data(TensorData::new(values, [n, c, h, w]), &loaded.device);
        let logits: Vec<f32> = loaded
            .model
            .forward(input)
            .into_data()
            .try_into_vec::<f32>()
            .map_err(|e| InferenceError::internal(format!("reading the model's output: {e:?}")))?;
        let classes = self.classes().len();
        Ok(logits.chunks_exact(classes).map(softmax).collect())
    }

    /// The `k` most probable labels of a probability row, most probable first (ties keep label
    /// order).
    pub fn top_k(&self, probabilities: &[f32], k: usize) -> Vec<(String, f32)> {
        let mut order: Vec<usize> = (0..probabilities.len()).collect();
        order.sort_by(|&a, &b| {
            probabilities[b]
                .total_cmp(&probabilities[a])
                .then(a.cmp(&b))
        });
        order
            .into_iter()
            .take(k)
            .map(|i| (self.classes()[i].clone(), probabilities[i]))
            .collect()
    }

    /// The number of labels asked for by `k` (default when absent; at most the classes).
    pub fn k_of(&self, answer: &Answer) -> Result<usize, InferenceError> {
        let classes = self.classes().len();
        match answer.params.get("k") {
            None => Ok(self.options.default_k.min(classes)),
            Some(text) => match text.parse::<usize>() {
                Ok(k) if k >= 1 => Ok(k.min(classes)),
                _ => Err(InferenceError::bad_request(format!(
                    "k={text:?}: k must be a whole number from 1 to {classes}"
                ))),
            },
        }
    }

    /// The JSON answer for a request's probabilities: `{"predictions": [{"labels": [...],
    /// "probabilities": [...]}, ...]}`, one entry per image.
    pub fn json_answer(&self, rows: &[Vec<f32>], k: usize) -> serde_json::Value {
        let predictions: Vec<serde_json::Value> = rows
            .iter()
            .map(|row| {
                let top = self.top_k(row, k);
                serde_json::json!({
                    "labels": top.iter().map(|(l, _)| l.as_str()).collect::<Vec<_>>(),
                    "probabilities": top.iter().map(|(_, p)| *p).collect::<Vec<_>>(),
                })
            })
            .collect();
        serde_json::json!({ "predictions": predictions })
    }
}

/// A numerically stable softmax.
fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exp: Vec<f32> = logits.iter().map(|&x| (x - max).exp()).collect();
    let sum: f32 = exp.iter().sum();
    exp.into_iter().map(|e| e / sum).collect()
}

/// Picks the first of `offered` that an `Accept` header allows, by the header's preference
/// (`q` values, then order); an empty header allows anything.
pub fn negotiate<'a>(accept: &str, offered: &[&'a str]) -> Option<&'a str> {
    if accept.trim().is_empty() {
        return offered.first().copied();
    }
    let mut ranges: Vec<(f32, usize, String)> = accept
        .split(',')
        .enumerate()
        .filter_map(|(i, part)| {
            let mut pieces = part.split(';');
            let range = pieces.next()?.trim().to_ascii_lowercase();
            let q = pieces
                .filter_map(|p| p.trim().strip_prefix("q="))
                .find_map(|q| q.trim().parse::<f32>().ok().filter(|q| q.is_finite()))
                .unwrap_or(1.0);
            (q > 0.0 && !range.is_empty()).then_some((q, i, range))
        })
        .collect();
    ranges.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    ranges.iter().find_map(|(_, _, range)| {
        offered.iter().copied().find(|media| {
            range == "*/*"
                || range == media
                || range
                    .strip_suffix("/*")
                    .is_some_and(|major| media.split('/').next() == Some(major))
        })
    })
}

impl Inference for ImageClassifier {
    type Model = Loaded;
    type Input = Images;
    type Output = Probabilities;

    fn load(&self) -> Result<Loaded, String> {
        self.load_model()
    }

    fn input(&self, request: Request<'_>) -> Result<Images, InferenceError> {
        match request.content_type {
            "image/jpeg" | "image/png" | "application/x-image" => Ok(Images {
                count: 1,
                values: self.preprocess(request.body)?,
            }),
            "application/json" => {
                let tensor: JsonTensor = serde_json::from_slice(request.body).map_err(|e| {
                    InferenceError::bad_request(format!(
                        "the JSON body must be {{\"shape\": [...], \"data\": [...]}}: {e}"
                    ))
                })?;
                self.check_tensor(&tensor.shape, tensor.data)
            }
            other => Err(InferenceError::unsupported_media_type(format!(
                "Content-Type {other:?} is not read here; send image/jpeg, image/png, application/x-image or application/json"
            ))),
        }
    }

    fn predict(
        &self,
        model: &mut Loaded,
        inputs: Vec<Images>,
    ) -> Result<Vec<Probabilities>, InferenceError> {
        let mut rows = self.probabilities(model, &inputs)?.into_iter();
        Ok(inputs
            .iter()
            .map(|images| rows.by_ref().take(images.count).collect())
            .collect())
    }

    fn output(&self, output: Probabilities, answer: &Answer) -> Result<Reply, InferenceError> {
        let k = self.k_of(answer)?;
        match negotiate(&answer.accept, &["application/json", "text/csv"]) {
            Some("text/csv") => {
                let mut body = String::from("image,label,probability\n");
                for (i, row) in output.iter().enumerate() {
                    for (label, p) in self.top_k(row, k) {
                        body.push_str(&format!("{i},{label},{p}\n"));
                    }
                }
                Ok(Reply {
                    content_type: "text/csv".into(),
                    body: body.into_bytes(),
                })
            }
            Some(_) => Ok(Reply {
                content_type: "application/json".into(),
                body: serde_json::to_vec(&self.json_answer(&output, k))
                    .map_err(|e| InferenceError::internal(e.to_string()))?,
            }),
            None => Err(InferenceError::not_acceptable(format!(
                "Accept {:?}: this model answers application/json or text/csv",
                answer.accept
            ))),
        }
    }

    fn input_tensors(&self, tensors: Vec<Tensor>) -> Result<Images, InferenceError> {
        let [tensor]: [Tensor; 1] = tensors.try_into().map_err(|t: Vec<Tensor>| {
            InferenceError::bad_request(format!(
                "this model takes exactly one input tensor, the request has {}",
                t.len()
            ))
        })?;
        if tensor.datatype != "FP32" {
            return Err(InferenceError::bad_request(format!(
                "input {:?} has datatype {:?}; this model takes FP32",
                tensor.name, tensor.datatype
            )));
        }
        self.check_tensor(&tensor.shape, tensor.data)
    }

    fn output_tensors(&self, output: Probabilities) -> Result<Vec<Tensor>, InferenceError> {
        let classes = self.classes().len();
        Ok(vec![Tensor {
            name: "probabilities".into(),
            shape: vec![output.len() as i64, classes as i64],
            datatype: "FP32".into(),
            data: output.into_iter().flatten().collect(),
        }])
    }

    fn signature(&self) -> (Vec<TensorSpec>, Vec<TensorSpec>) {
        let [c, h, w] = self.input_shape();
        (
            vec![TensorSpec {
                name: "input".into(),
                datatype: "FP32".into(),
                shape: vec![-1, c as i64, h as i64, w as i64],
            }],
            vec![TensorSpec {
                name: "probabilities".into(),
                datatype: "FP32".into(),
                shape: vec![-1, self.classes().len() as i64],
            }],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_headers_pick_by_preference() {
        let offered = ["application/json", "text/csv"];
        let check = |accept: &str, expected: Option<&str>| {
            assert_eq!(negotiate(accept, &offered), expected, "Accept: {accept}")
        };
        check("", Some("application/json"));
        check("*/*", Some("application/json"));
        check("text/csv", Some("text/csv"));
        check("text/*", Some("text/csv"));
        check("application/json;q=0.5, text/csv", Some("text/csv"));
        check("text/csv;q=0, application/*", Some("application/json"));
        check("image/png", None);
    }

    #[test]
    fn softmax_sums_to_one_and_keeps_order() {
        let p = softmax(&[1.0, 3.0, 2.0, 10.0]);
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(p[3] > 0.99 && p[1] > p[2] && p[2] > p[0]);
        // Large logits do not overflow.
        let p = softmax(&[1000.0, 0.0]);
        assert!(p.iter().all(|v| v.is_finite()) && p[0] > 0.999);
    }
}
