//! Export of a definition to another orchestrator: a SageMaker Pipelines definition
//! (`"Version": "2020-12-01"`), as the SageMaker Python SDK emits it.
//!
//! Every step runs the Shardline image (`--image`) under SageMaker's container contracts:
//! processing steps read their inputs under `/opt/ml/processing/input/<channel>` and write
//! under `/opt/ml/processing/output/<output>`; the training step reads
//! `/opt/ml/input/data/<channel>` and writes the model to `/opt/ml/model`.
//!
//! | Shardline | SageMaker |
//! |---|---|
//! | parameter (string, integer, float, boolean) | `Parameters` entry |
//! | `manifest` | `Processing`: `shardline manifest`, output `out` |
//! | `process` | `Processing`: one `ManifestFile` input per channel, `ShardedByS3Key` |
//! | `train` | `Training`: `InstanceCount` = `workers`, `HyperParameters` = settings |
//! | `evaluate` | `Processing` with the property file `evaluation` (`evaluation.json`) |
//! | `condition` | `Condition`, its branches' steps nested in `IfSteps` / `ElseSteps` |
//! | `register` | `RegisterModel` in the model package group `name` |
//! | `transform` | a `Model` step (`<step>-model`) and a `Transform` step |
//! | `fail` | `Fail` with `ErrorMessage` |
//! | `command` (processing contract) | `Processing` running `sh -c PROGRAM` |
//!
//! References become `Get` expressions on the other step's properties, a report value of an
//! `evaluate` step becomes `Std:JsonGet` on its property file, and a string with references
//! becomes `Std:Join`. Dependencies the references do not express become `DependsOn`.
//!
//! What cannot be exported is an error, every case at once ([`ExportError`]): a `datagen`
//! step (no SageMaker equivalent; point `manifest.source` at the data in S3), a `command` step
//! with the training contract, inputs that are local paths, a local `out` when no bucket is
//! given, `retry.on = ["program"]` (SageMaker retries service faults and capacity errors, never
//! a failing program), report values of steps other than `evaluate`, a list parameter, a
//! boolean flag given by a reference, a step outside a condition's branch that uses a step in
//! it, a condition inside a branch, and names SageMaker does not accept.
//!
//! Not carried over: `max_parallel` (SageMaker schedules), `force` (every job starts empty),
//! `registry` of a register step (the model goes to SageMaker's model registry). Caching
//! differs: SageMaker's cache keys on the job request (S3 URIs compared as text), Shardline's
//! on content digests.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde_json::{Value as Json, json};

use crate::def::{Definition, Step};
use crate::spec::Kind;
use crate::value::{Piece, Ref, Template, Ty, Value};

/// How to export.
#[derive(Debug, Clone)]
pub struct ExportOptions {
    /// The Shardline container image every step runs (ECR URI).
    pub image: String,
    /// The IAM role the jobs run as.
    pub role: String,
    /// Where outputs whose `out` is not an S3 URI go: `s3://bucket/prefix`.
    pub bucket: Option<String>,
    /// Parameters' defaults changed, `key=value` texts as on the command line.
    pub params: Vec<(String, String)>,
    /// The instance type of every job.
    pub instance_type: String,
}

impl Default for ExportOptions {
    fn default() -> ExportOptions {
        ExportOptions {
            image: "shardline:latest".into(),
            role: "arn:aws:iam::111122223333:role/SageMakerExecutionRole".into(),
            bucket: None,
            params: Vec::new(),
            instance_type: "ml.m5.xlarge".into(),
        }
    }
}

/// One thing that cannot be exported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsupported {
    /// The step, where it is one step's (None: the pipeline's, e.g. a parameter or an option).
    pub step: Option<String>,
    /// What cannot be exported and what to do.
    pub message: String,
}

/// A definition that cannot be exported: every reason found.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ExportError {
    /// The definition's file.
    pub file: String,
    /// What the target has no equivalent of.
    pub target: &'static str,
    /// Every reason, in step order.
    pub problems: Vec<Unsupported>,
}

impl fmt::Display for ExportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        write!(
            f,
            "pipeline {}: cannot export to {}, {n} problem{}:",
            self.file,
            self.target,
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            match &p.step {
                Some(step) => write!(f, "\n  step `{step}`: {}", p.message)?,
                None => write!(f, "\n  {}", p.message)?,
            }
        }
        Ok(())
    }
}

const PROCESSING_IN: &str = "/opt/ml/processing/input";
const PROCESSING_OUT: &str = "/opt/ml/processing/output";
/// The property file of an evaluate step, and its output.
const EVALUATION: &str = "evaluation";

/// The SageMaker Pipelines definition of `def`.
pub fn sagemaker(def: &Definition, options: &ExportOptions) -> Result<Json, ExportError> {
    let values = def.param_values(&options.params).map_err(|e| ExportError {
        file: def.file.clone(),
        target: "sagemaker",
        problems: vec![Unsupported {
            step: None,
            message: e,
        }],
    })?;
    let mut x = Exporter {
        def,
        options,
        values,
        problems: Vec::new(),
    };
    if let Some(b) = &options.bucket
        && !b.starts_with("s3://")
    {
        x.problem(
            None,
            format!("--bucket {b:?} is not an S3 URI; give s3://BUCKET/PREFIX"),
        );
    }
    let parameters = x.parameters();
    let mut bodies: BTreeMap<String, Vec<Json>> = BTreeMap::new();
    for step in &def.steps {
        x.check_names_and_gates(step);
        let jsons = x.step(step);
        bodies.insert(step.name.clone(), jsons);
    }
    // Gated steps go into their condition's branch, in order; the rest to the top level.
    let mut top = Vec::new();
    let mut branches: BTreeMap<(String, bool), Vec<Json>> = BTreeMap::new();
    for step in &def.steps {
        let jsons = bodies.remove(&step.name).unwrap_or_default();
        match &step.gate {
            Some((cond, branch)) => branches
                .entry((cond.clone(), *branch))
                .or_default()
                .extend(jsons),
            None => top.extend(jsons),
        }
    }
    for s in top.iter_mut() {
        fill_branches(s, &mut branches);
    }
    if !x.problems.is_empty() {
        return Err(ExportError {
            file: def.file.clone(),
            target: "sagemaker",
            problems: x.problems,
        });
    }
    Ok(json!({
        "Version": "2020-12-01",
        "Metadata": {},
        "Parameters": parameters,
        "PipelineExperimentConfig": {
            "ExperimentName": {"Get": "Execution.PipelineName"},
            "TrialName": {"Get": "Execution.PipelineExecutionId"}
        },
        "Steps": top
    }))
}

/// Puts the branches' steps into a condition step's arguments.
fn fill_branches(step: &mut Json, branches: &mut BTreeMap<(String, bool), Vec<Json>>) {
    if step["Type"] != "Condition" {
        return;
    }
    let name = step["Name"].as_str().unwrap_or_default().to_string();
    for (branch, key) in [(true, "IfSteps"), (false, "ElseSteps")] {
        let mut steps = branches.remove(&(name.clone(), branch)).unwrap_or_default();
        for s in steps.iter_mut() {
            fill_branches(s, branches);
        }
        step["Arguments"][key] = Json::Array(steps);
    }
}

struct Exporter<'a> {
    def: &'a Definition,
    options: &'a ExportOptions,
    values: BTreeMap<String, Value>,
    problems: Vec<Unsupported>,
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

fn get(path: String) -> Json {
    json!({ "Get": path })
}

fn join(on: &str, values: Vec<Json>) -> Json {
    json!({"Std:Join": {"On": on, "Values": values}})
}

fn processing_output(step: &str, output: &str) -> Json {
    get(format!(
        "Steps.{step}.ProcessingOutputConfig.Outputs['{output}'].S3Output.S3Uri"
    ))
}

/// The steps a JSON value reads with `Get` (and property files).
fn referenced_steps(json: &Json, out: &mut BTreeSet<String>) {
    match json {
        Json::String(s) => {
            if let Some(rest) = s.strip_prefix("Steps.")
                && let Some(name) = rest.split('.').next()
            {
                out.insert(name.to_string());
            }
        }
        Json::Array(items) => items.iter().for_each(|i| referenced_steps(i, out)),
        Json::Object(map) => map
            .iter()
            .filter(|(k, _)| k.as_str() != "IfSteps" && k.as_str() != "ElseSteps")
            .for_each(|(_, v)| referenced_steps(v, out)),
        _ => {}
    }
}

impl Exporter<'_> {
    fn problem(&mut self, step: Option<&str>, message: impl Into<String>) {
        self.problems.push(Unsupported {
            step: step.map(str::to_string),
            message: message.into(),
        });
    }

    fn parameters(&mut self) -> Vec<Json> {
        let mut out = Vec::new();
        for p in &self.def.params {
            if !valid_name(&p.name) {
                self.problem(
                    None,
                    format!(
                        "parameter `{}`: SageMaker parameter names are 1 to 64 letters, digits, `-` and `_`; rename it",
                        p.name
                    ),
                );
            }
            let value = self.values.get(&p.name).unwrap_or(&p.default).clone();
            let ty = match p.ty {
                Ty::Str => "String",
                Ty::Int => "Integer",
                Ty::Float => "Float",
                Ty::Bool => "Boolean",
                Ty::List | Ty::Table | Ty::Any => {
                    self.problem(
                        None,
                        format!(
                            "parameter `{}` is {}; SageMaker parameters are String, Integer, Float or Boolean: write the list into the steps that use it",
                            p.name,
                            p.ty.a()
                        ),
                    );
                    continue;
                }
            };
            let mut param = json!({"Name": p.name, "Type": ty, "DefaultValue": value.to_json()});
            if let Some(d) = &p.description {
                param["Description"] = json!(d);
            }
            out.push(param);
        }
        out
    }

    fn check_names_and_gates(&mut self, step: &Step) {
        if !valid_name(&step.name) {
            self.problem(
                Some(&step.name),
                "SageMaker step names are 1 to 64 letters, digits, `-` and `_`; rename the step",
            );
        }
        for dep in &step.deps {
            let Some(d) = self.def.step(dep) else {
                continue;
            };
            if let Some((cond, branch)) = &d.gate
                && step.gate.as_ref() != Some(&(cond.clone(), *branch))
            {
                self.problem(
                    Some(&step.name),
                    format!(
                        "it uses step `{dep}`, which runs only in the {} branch of condition `{cond}`; SageMaker cannot depend on a conditional step from outside its branch: list `{}` in the same branch",
                        if *branch { "if_steps" } else { "else_steps" },
                        step.name
                    ),
                );
            }
        }
        if step.kind == Kind::Condition && step.gate.is_some() {
            self.problem(
                Some(&step.name),
                "a condition inside another condition's branch cannot be exported (SageMaker branches hold processing, training, transform, register and fail steps); make it a top-level step",
            );
        }
        if step.retry.program && step.retry.attempts > 1 {
            self.problem(
                Some(&step.name),
                "`retry.on` includes \"program\": SageMaker retries service faults, throttling and capacity errors, never a program that exited non-zero; remove \"program\"",
            );
        }
    }

    /// The value of a template with the parameters' values, if it has no step reference.
    fn resolved(&self, t: &Template) -> Option<Value> {
        t.resolve(&|r| match r {
            Ref::Param(p) => self.values.get(p).cloned().ok_or_else(String::new),
            _ => Err(String::new()),
        })
        .ok()
    }

    /// An expression for one reference.
    fn reference(&mut self, step: &Step, r: &Ref) -> Json {
        match r {
            Ref::Param(p) => get(format!("Parameters.{p}")),
            Ref::Output { step: other, name } => self.output(step, other, name),
            Ref::Report { step: other, path } => {
                let kind = self.def.step(other).map(|s| s.kind);
                if kind == Some(Kind::Evaluate) && !path.is_empty() {
                    json!({"Std:JsonGet": {
                        "PropertyFile": get(format!("Steps.{other}.PropertyFiles.{EVALUATION}")),
                        "Path": path.join(".")
                    }})
                } else if kind == Some(Kind::Evaluate) {
                    join(
                        "/",
                        vec![
                            processing_output(other, EVALUATION),
                            json!("evaluation.json"),
                        ],
                    )
                } else {
                    self.problem(
                        Some(&step.name),
                        format!(
                            "it uses {r}: only an evaluate step's report is a SageMaker property file; read the value from an evaluate step"
                        ),
                    );
                    Json::Null
                }
            }
        }
    }

    /// The S3 URI of another step's output.
    fn output(&mut self, step: &Step, other: &str, name: &str) -> Json {
        let Some(o) = self.def.step(other) else {
            return Json::Null;
        };
        match (o.kind, name) {
            (Kind::Train, _) => get(format!("Steps.{other}.ModelArtifacts.S3ModelArtifacts")),
            (Kind::Register, _) => match o.settings.get("model") {
                Some(s) => {
                    let t = s.template.clone();
                    self.string(o, &t)
                }
                None => Json::Null,
            },
            (Kind::Transform, _) => get(format!("Steps.{other}.TransformOutput.S3OutputPath")),
            (Kind::Evaluate, _) => processing_output(other, EVALUATION),
            (Kind::Manifest, "out") | (Kind::Process, "out") | (Kind::Command, _) => {
                processing_output(other, "out")
            }
            (Kind::Manifest, channel) => join(
                "/",
                vec![
                    processing_output(other, "out"),
                    json!(format!("{channel}.manifest")),
                ],
            ),
            (Kind::Process, channel) => {
                join("/", vec![processing_output(other, "out"), json!(channel)])
            }
            (Kind::Datagen, _) => {
                self.problem(
                    Some(&step.name),
                    format!(
                        "it uses the output of datagen step `{other}`, which cannot be exported; read the data from S3"
                    ),
                );
                Json::Null
            }
            (Kind::Condition | Kind::Fail, _) => Json::Null,
        }
    }

    /// A template as a value of its own type (numbers stay numbers).
    fn value(&mut self, step: &Step, t: &Template) -> Json {
        match t {
            Template::Literal(v) => v.to_json(),
            Template::Ref(r) => self.reference(step, r),
            _ => self.string(step, t),
        }
    }

    /// A template as a string expression.
    fn string(&mut self, step: &Step, t: &Template) -> Json {
        match t {
            Template::Literal(Value::Str(s)) => json!(s),
            Template::Literal(Value::List(items)) => json!(
                items
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            Template::Literal(v) => json!(v.to_string()),
            Template::Ref(r) => {
                let e = self.reference(step, r);
                let is_string = match r {
                    Ref::Param(p) => self.values.get(p).is_some_and(|v| v.ty() == Ty::Str),
                    Ref::Output { .. } => true,
                    Ref::Report { .. } => false,
                };
                if is_string || e.get("Std:Join").is_some() {
                    e
                } else {
                    join("", vec![e])
                }
            }
            Template::Text(pieces) => {
                let values = pieces
                    .iter()
                    .map(|p| match p {
                        Piece::Text(s) => json!(s),
                        Piece::Ref(r) => self.reference(step, r),
                    })
                    .collect();
                join("", values)
            }
            Template::List(_) | Template::Table(_) => {
                self.problem(
                    Some(&step.name),
                    "a list or table with references inside cannot be a SageMaker argument; write it without references",
                );
                Json::Null
            }
        }
    }

    /// An S3 location: the template if it is one, else `None` after a problem.
    fn s3_input(&mut self, step: &Step, setting: &str) -> Json {
        let Some(t) = step.settings.get(setting).map(|s| s.template.clone()) else {
            return Json::Null;
        };
        let local = t
            .refs()
            .iter()
            .all(|r| matches!(r, Ref::Param(_)))
            .then(|| self.resolved(&t))
            .flatten()
            .map(|v| v.to_string())
            .filter(|v| !v.starts_with("s3://"));
        if let Some(path) = local {
            self.problem(
                Some(&step.name),
                format!(
                    "`{setting}` is the local path {path:?}; a SageMaker job reads from S3: give an s3:// URI"
                ),
            );
        }
        self.string(step, &t)
    }

    /// Where a step's output goes: its `out` if that is an S3 URI, else under --bucket.
    fn s3_output(&mut self, step: &Step, output: &str) -> Json {
        let t = step.settings.get("out").map(|s| s.template.clone());
        if let Some(t) = &t
            && let Some(v) = self.resolved(t)
            && v.to_string().starts_with("s3://")
        {
            return self.string(step, t);
        }
        match &self.options.bucket {
            Some(bucket) => join(
                "/",
                vec![
                    json!(bucket.trim_end_matches('/')),
                    json!(self.def.name),
                    get("Execution.PipelineExecutionId".into()),
                    json!(step.name),
                    json!(output),
                ],
            ),
            None => {
                let message = match t.as_ref().and_then(|t| self.resolved(t)) {
                    Some(v) => format!(
                        "`out` ({:?}) is not an S3 URI; give --bucket s3://BUCKET/PREFIX or make `out` an s3:// URI",
                        v.to_string()
                    ),
                    None if t.is_some() => "`out` is not known to be an S3 URI; give --bucket s3://BUCKET/PREFIX or make `out` an s3:// URI".to_string(),
                    None => format!(
                        "its output `{output}` needs a place in S3; give --bucket s3://BUCKET/PREFIX"
                    ),
                };
                self.problem(Some(&step.name), message);
                Json::Null
            }
        }
    }

    /// Command-line flags for the step's settings except `skip`.
    fn flags(&mut self, step: &Step, skip: &[&str]) -> Vec<Json> {
        let mut args = Vec::new();
        let settings: Vec<(String, Template)> = step
            .settings
            .iter()
            .filter(|(k, _)| !skip.contains(&k.as_str()) && k.as_str() != "force")
            .map(|(k, s)| (k.clone(), s.template.clone()))
            .collect();
        for (name, t) in settings {
            let flag = format!("--{}", name.replace('_', "-"));
            let ty = step.kind.field(&name).map_or(Ty::Any, |f| f.ty);
            match (&t, ty) {
                (Template::Literal(Value::Bool(true)), _) => args.push(json!(flag)),
                (Template::Literal(Value::Bool(false)), _) => {}
                (_, Ty::Bool) => self.problem(
                    Some(&step.name),
                    format!(
                        "`{name}` is a switch and cannot be set by a reference in SageMaker; write true or false"
                    ),
                ),
                _ => {
                    args.push(json!(flag));
                    let v = self.string(step, &t);
                    args.push(v);
                }
            }
        }
        args
    }

    fn retry(&self, step: &Step) -> Option<Json> {
        (step.retry.attempts > 1).then(|| {
            json!([{
                "ExceptionType": ["SageMaker.JOB_INTERNAL_ERROR", "SageMaker.CAPACITY_ERROR"],
                "IntervalSeconds": step.retry.backoff_s.ceil().max(1.0) as i64,
                "BackoffRate": 2.0,
                "MaxAttempts": step.retry.attempts - 1
            }])
        })
    }

    fn instance_count(&mut self, step: &Step, setting: &str) -> Json {
        match step.settings.get(setting).map(|s| s.template.clone()) {
            Some(t) => self.value(step, &t),
            None => json!(1),
        }
    }

    /// A processing job's arguments.
    fn processing(
        &mut self,
        step: &Step,
        entrypoint: Vec<Json>,
        args: Vec<Json>,
        inputs: Vec<Json>,
        outputs: &[&str],
        instances: Json,
    ) -> Json {
        let outputs: Vec<Json> = outputs
            .iter()
            .map(|o| {
                json!({
                    "OutputName": o,
                    "S3Output": {
                        "S3Uri": self.s3_output(step, o),
                        "LocalPath": format!("{PROCESSING_OUT}/{o}"),
                        "S3UploadMode": "EndOfJob"
                    }
                })
            })
            .collect();
        json!({
            "ProcessingResources": {"ClusterConfig": {
                "InstanceCount": instances,
                "InstanceType": self.options.instance_type,
                "VolumeSizeInGB": 30
            }},
            "AppSpecification": {
                "ImageUri": self.options.image,
                "ContainerEntrypoint": entrypoint,
                "ContainerArguments": args
            },
            "RoleArn": self.options.role,
            "ProcessingInputs": inputs,
            "ProcessingOutputConfig": {"Outputs": outputs}
        })
    }

    fn input(name: &str, uri: Json, data_type: &str, distribution: &str) -> Json {
        json!({
            "InputName": name,
            "S3Input": {
                "S3Uri": uri,
                "LocalPath": format!("{PROCESSING_IN}/{name}"),
                "S3DataType": data_type,
                "S3InputMode": "File",
                "S3DataDistributionType": distribution
            }
        })
    }

    /// The JSON of one step (two for a transform: its model, then the job).
    fn step(&mut self, step: &Step) -> Vec<Json> {
        let name = step.name.clone();
        let mut extra = Vec::new();
        let (ty, arguments) = match step.kind {
            Kind::Datagen => {
                self.problem(
                    Some(&name),
                    "a datagen step cannot be exported: SageMaker has no equivalent; generate the data once, upload it to S3 and point the manifest step's `source` at it",
                );
                return Vec::new();
            }
            Kind::Manifest => {
                let source = self.s3_input(step, "source");
                let mut args = vec![
                    json!("--source"),
                    source,
                    json!("--out"),
                    json!(format!("{PROCESSING_OUT}/out")),
                ];
                args.extend(self.flags(step, &["source", "out"]));
                let a = self.processing(
                    step,
                    vec![json!("shardline"), json!("manifest")],
                    args,
                    Vec::new(),
                    &["out"],
                    json!(1),
                );
                ("Processing", a)
            }
            Kind::Process => self.process(step),
            Kind::Train => ("Training", self.train(step)),
            Kind::Evaluate => {
                let model = self.s3_input(step, "model");
                let data = self.s3_input(step, "data");
                let inputs = vec![
                    Self::input("model", model, "S3Prefix", "FullyReplicated"),
                    Self::input("data", data, "S3Prefix", "FullyReplicated"),
                ];
                let mut args = vec![
                    json!("--model"),
                    json!(format!("{PROCESSING_IN}/model/model.tar.gz")),
                    json!("--data"),
                    json!(format!("{PROCESSING_IN}/data")),
                    json!("--json"),
                    json!(format!("{PROCESSING_OUT}/{EVALUATION}/evaluation.json")),
                ];
                args.extend(self.flags(step, &["model", "data"]));
                let a = self.processing(
                    step,
                    vec![json!("shardline"), json!("evaluate")],
                    args,
                    inputs,
                    &[EVALUATION],
                    json!(1),
                );
                ("Processing", a)
            }
            Kind::Condition => ("Condition", self.condition(step)),
            Kind::Register => ("RegisterModel", self.register(step)),
            Kind::Transform => {
                let (model_step, a) = self.transform(step);
                extra.push(model_step);
                ("Transform", a)
            }
            Kind::Fail => {
                let message = step
                    .settings
                    .get("message")
                    .map(|s| s.template.clone())
                    .map_or(Json::Null, |t| self.string(step, &t));
                ("Fail", json!({ "ErrorMessage": message }))
            }
            Kind::Command => match step.literal_str("contract") {
                Some("processing") => {
                    let mut inputs = Vec::new();
                    if let Some(Template::Table(_) | Template::Literal(Value::Table(_))) =
                        step.settings.get("inputs").map(|s| &s.template)
                    {
                        for (channel, t) in self.channels(step) {
                            let uri = self.channel_uri(step, &channel, &t);
                            inputs.push(Self::input(&channel, uri, "S3Prefix", "FullyReplicated"));
                        }
                    }
                    if step.settings.contains_key("data") {
                        let uri = self.s3_input(step, "data");
                        inputs.push(Self::input("data", uri, "S3Prefix", "FullyReplicated"));
                    }
                    let program = step
                        .settings
                        .get("program")
                        .map(|s| s.template.clone())
                        .map_or(Json::Null, |t| self.string(step, &t));
                    let instances = self.instance_count(step, "instances");
                    let a = self.processing(
                        step,
                        vec![json!("sh"), json!("-c")],
                        vec![program],
                        inputs,
                        &["out"],
                        instances,
                    );
                    ("Processing", a)
                }
                _ => {
                    self.problem(
                        Some(&name),
                        "a command step with the training contract cannot be exported yet; use the processing contract or a train step",
                    );
                    return Vec::new();
                }
            },
        };
        let mut json = json!({"Name": name, "Type": ty, "Arguments": arguments});
        if step.kind == Kind::Evaluate {
            json["PropertyFiles"] = json!([{
                "PropertyFileName": EVALUATION,
                "OutputName": EVALUATION,
                "FilePath": "evaluation.json"
            }]);
        }
        if let Some(r) = self.retry(step) {
            if matches!(step.kind, Kind::Condition | Kind::Fail) {
                self.problem(
                    Some(&name),
                    format!(
                        "a {} step has no retry policy in SageMaker; remove `retry`",
                        step.kind
                    ),
                );
            } else {
                json["RetryPolicies"] = r;
            }
        }
        if step.cache && matches!(ty, "Processing" | "Training" | "Transform") {
            json["CacheConfig"] = json!({"Enabled": true, "ExpireAfter": "P30D"});
        }
        // DependsOn: what the references do not already express.
        let mut expressed = BTreeSet::new();
        referenced_steps(&json["Arguments"], &mut expressed);
        for e in &extra {
            referenced_steps(&e["Arguments"], &mut expressed);
        }
        let gate = step.gate.as_ref().map(|(c, _)| c.clone());
        let depends: Vec<&String> = step
            .deps
            .iter()
            .filter(|d| !expressed.contains(*d) && Some(*d) != gate.as_ref())
            .collect();
        if !depends.is_empty() {
            json["DependsOn"] = json!(depends);
        }
        extra.push(json);
        extra
    }

    fn channels(&self, step: &Step) -> Vec<(String, Template)> {
        match step.settings.get("inputs").map(|s| &s.template) {
            Some(Template::Table(map)) => map.iter().map(|(k, t)| (k.clone(), t.clone())).collect(),
            Some(Template::Literal(Value::Table(map))) => map
                .iter()
                .map(|(k, v)| (k.clone(), Template::Literal(v.clone())))
                .collect(),
            _ => Vec::new(),
        }
    }

    fn channel_uri(&mut self, step: &Step, channel: &str, t: &Template) -> Json {
        if t.refs().iter().all(|r| matches!(r, Ref::Param(_)))
            && let Some(v) = self.resolved(t)
            && !v.to_string().starts_with("s3://")
        {
            self.problem(
                Some(&step.name),
                format!(
                    "input `{channel}` is the local path {:?}; a SageMaker job reads from S3: give an s3:// URI",
                    v.to_string()
                ),
            );
        }
        self.string(step, t)
    }

    fn process(&mut self, step: &Step) -> (&'static str, Json) {
        let distribution = match step.settings.get("distribution").map(|s| &s.template) {
            None => "ShardedByS3Key",
            Some(Template::Literal(Value::Str(d))) if d.contains("replicated") => "FullyReplicated",
            Some(Template::Literal(Value::Str(_))) => "ShardedByS3Key",
            Some(_) => {
                self.problem(
                    Some(&step.name),
                    "`distribution` decides the SageMaker input's S3DataDistributionType and cannot be a reference; write the value",
                );
                "ShardedByS3Key"
            }
        };
        let mut inputs = Vec::new();
        let mut args = Vec::new();
        for (channel, t) in self.channels(step) {
            let uri = self.channel_uri(step, &channel, &t);
            inputs.push(Self::input(&channel, uri, "ManifestFile", distribution));
            args.push(json!("--input"));
            args.push(json!(format!("{channel}={PROCESSING_IN}/{channel}")));
        }
        args.push(json!("--out"));
        args.push(json!(format!("{PROCESSING_OUT}/out")));
        let mut skip = vec![
            "inputs",
            "out",
            "instances",
            "distribution",
            "width",
            "height",
            "jpeg_scaling",
            "shard_bytes",
            "max_attempts",
        ];
        if step.settings.contains_key("width") || step.settings.contains_key("height") {
            let w = step.settings.get("width").map(|s| s.template.clone());
            let h = step.settings.get("height").map(|s| s.template.clone());
            let w = w.map_or(json!("64"), |t| self.string(step, &t));
            let h = h.map_or(json!("64"), |t| self.string(step, &t));
            args.push(json!("--size"));
            args.push(match (w.as_str(), h.as_str()) {
                (Some(w), Some(h)) => json!(format!("{w}x{h}")),
                _ => join("", vec![w, json!("x"), h]),
            });
        }
        match step.settings.get("jpeg_scaling").map(|s| &s.template) {
            Some(Template::Literal(Value::Bool(false))) => args.push(json!("--full-decode")),
            Some(Template::Literal(Value::Bool(true))) | None => {}
            Some(_) => self.problem(
                Some(&step.name),
                "`jpeg_scaling` is a switch and cannot be set by a reference in SageMaker; write true or false",
            ),
        }
        if let Some(t) = step.settings.get("shard_bytes").map(|s| s.template.clone()) {
            args.push(json!("--shard-size"));
            let v = self.string(step, &t);
            args.push(v);
        }
        skip.push("force");
        args.extend(self.flags(step, &skip));
        let instances = self.instance_count(step, "instances");
        let a = self.processing(
            step,
            vec![json!("shardline"), json!("process")],
            args,
            inputs,
            &["out"],
            instances,
        );
        ("Processing", a)
    }

    fn train(&mut self, step: &Step) -> Json {
        let data = self.s3_input(step, "data");
        let mut args = vec![
            json!("--data"),
            json!("/opt/ml/input/data/data"),
            json!("--out"),
            json!("/opt/ml/model"),
        ];
        if let Some(t) = step
            .settings
            .get("bucket_bytes")
            .map(|s| s.template.clone())
        {
            match t {
                Template::Literal(Value::Int(b)) => {
                    args.push(json!("--bucket-mib"));
                    args.push(json!((b >> 20).to_string()));
                }
                _ => self.problem(
                    Some(&step.name),
                    "`bucket_bytes` by a reference cannot be exported (the container takes MiB); write the value",
                ),
            }
        }
        let skip = ["data", "out", "workers", "bucket_bytes"];
        args.extend(self.flags(step, &skip));
        let mut hyper = serde_json::Map::new();
        let settings: Vec<(String, Template)> = step
            .settings
            .iter()
            .filter(|(k, _)| !["data", "out", "workers", "force"].contains(&k.as_str()))
            .map(|(k, s)| (k.clone(), s.template.clone()))
            .collect();
        for (k, t) in settings {
            let v = self.string(step, &t);
            hyper.insert(k, v);
        }
        let output = self.s3_output(step, "model");
        let workers = self.instance_count(step, "workers");
        json!({
            "AlgorithmSpecification": {
                "TrainingImage": self.options.image,
                "TrainingInputMode": "File",
                "ContainerEntrypoint": ["shardline", "train"],
                "ContainerArguments": args
            },
            "OutputDataConfig": {"S3OutputPath": output},
            "StoppingCondition": {"MaxRuntimeInSeconds": 86400},
            "ResourceConfig": {
                "InstanceCount": workers,
                "InstanceType": self.options.instance_type,
                "VolumeSizeInGB": 30
            },
            "RoleArn": self.options.role,
            "InputDataConfig": [{
                "ChannelName": "data",
                "DataSource": {"S3DataSource": {
                    "S3DataType": "S3Prefix",
                    "S3Uri": data,
                    "S3DataDistributionType": "FullyReplicated"
                }}
            }],
            "HyperParameters": Json::Object(hyper)
        })
    }

    fn condition(&mut self, step: &Step) -> Json {
        let left = step.settings.get("left").map(|s| s.template.clone());
        let right = step.settings.get("right").map(|s| s.template.clone());
        let left = left.map_or(Json::Null, |t| self.value(step, &t));
        let right = right.map_or(Json::Null, |t| self.value(step, &t));
        let op = step.literal_str("op").unwrap_or("==");
        let ty = match op {
            ">" => "GreaterThan",
            ">=" => "GreaterThanOrEqualTo",
            "<" => "LessThan",
            "<=" => "LessThanOrEqualTo",
            _ => "Equals",
        };
        let mut condition = json!({"Type": ty, "LeftValue": left, "RightValue": right});
        if op == "!=" {
            condition = json!({"Type": "Not", "Expression": condition});
        }
        json!({"Conditions": [condition], "IfSteps": [], "ElseSteps": []})
    }

    fn register(&mut self, step: &Step) -> Json {
        let model = self.s3_input(step, "model");
        let group = step
            .settings
            .get("name")
            .map(|s| s.template.clone())
            .map_or(Json::Null, |t| self.string(step, &t));
        let mut a = json!({
            "ModelPackageGroupName": group,
            "InferenceSpecification": {
                "Containers": [{"Image": self.options.image, "ModelDataUrl": model}],
                "SupportedContentTypes": ["application/x-image", "image/jpeg", "image/png", "application/json"],
                "SupportedResponseMIMETypes": ["application/json"],
                "SupportedRealtimeInferenceInstanceTypes": [self.options.instance_type],
                "SupportedTransformInstanceTypes": [self.options.instance_type]
            },
            "ModelApprovalStatus": "PendingManualApproval"
        });
        if let Some(t) = step.settings.get("description").map(|s| s.template.clone()) {
            a["ModelPackageDescription"] = self.string(step, &t);
        }
        if let Some(t) = step.settings.get("evaluation").map(|s| s.template.clone()) {
            let uri = match &t {
                Template::Ref(Ref::Report { step: other, path })
                    if path.is_empty()
                        && self.def.step(other).map(|s| s.kind) == Some(Kind::Evaluate) =>
                {
                    self.value(step, &t)
                }
                _ => {
                    self.problem(
                        Some(&step.name),
                        "`evaluation` can be exported only as a whole evaluate step's report ({{ steps.EVALUATE.report }}), which becomes the model package's ModelQuality statistics",
                    );
                    Json::Null
                }
            };
            a["ModelMetrics"] = json!({"ModelQuality": {"Statistics": {
                "ContentType": "application/json",
                "S3Uri": uri
            }}});
        }
        a
    }

    fn transform(&mut self, step: &Step) -> (Json, Json) {
        let model = self.s3_input(step, "model");
        let model_step = format!("{}-model", step.name);
        if self.def.step(&model_step).is_some() || !valid_name(&model_step) {
            self.problem(
                Some(&step.name),
                format!(
                    "its SageMaker model step would be named `{model_step}`, which is taken or too long; rename the step"
                ),
            );
        }
        let mut environment = serde_json::Map::new();
        for (setting, var) in [("k", "SHARDLINE_TOP_K"), ("batch", "SHARDLINE_BATCH")] {
            if let Some(t) = step.settings.get(setting).map(|s| s.template.clone()) {
                let v = self.string(step, &t);
                environment.insert(var.into(), v);
            }
        }
        let mut container = json!({"Image": self.options.image, "ModelDataUrl": model});
        if !environment.is_empty() {
            container["Environment"] = Json::Object(environment);
        }
        let create = json!({
            "Name": model_step,
            "Type": "Model",
            "Arguments": {
                "ExecutionRoleArn": self.options.role,
                "PrimaryContainer": container
            }
        });
        let manifest = self.s3_input(step, "manifest");
        let out = self.s3_output(step, "out");
        let instances = self.instance_count(step, "instances");
        let a = json!({
            "ModelName": get(format!("Steps.{model_step}.ModelName")),
            "TransformInput": {
                "DataSource": {"S3DataSource": {"S3DataType": "ManifestFile", "S3Uri": manifest}},
                "ContentType": "application/x-image"
            },
            "TransformOutput": {"S3OutputPath": out, "Accept": "application/json"},
            "TransformResources": {
                "InstanceCount": instances,
                "InstanceType": self.options.instance_type
            }
        });
        (create, a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};

    /// The quickstart without its datagen step: the data is read from S3.
    const QUICKSTART: &str = r#"
name = "quickstart"
max_parallel = 2

[params]
source = { type = "string", default = "s3://shardline-examples/shapes/", description = "the images, in S3" }
dir = { type = "string", default = "quickstart-out" }
instances = { type = "integer", default = 2, description = "processing instances, and training workers" }
epochs = { type = "integer", default = 30 }
min_accuracy = { type = "float", default = 0.6 }
model_name = { type = "string", default = "shapes" }

[steps.manifests]
kind = "manifest"
source = "{{ params.source }}"
out = "{{ params.dir }}/manifests"
min_per_class = 2
augmented = true

[steps.process]
kind = "process"
inputs = { train = "{{ steps.manifests.outputs.train }}", validation = "{{ steps.manifests.outputs.validation }}", test = "{{ steps.manifests.outputs.test }}" }
out = "{{ params.dir }}/processed"
instances = "{{ params.instances }}"
width = 32
height = 32
retry = { attempts = 2, backoff_s = 1.0 }

[steps.train]
kind = "train"
data = "{{ steps.process.outputs.out }}"
out = "{{ params.dir }}/model"
workers = "{{ params.instances }}"
epochs = "{{ params.epochs }}"
batch = 16
lr = 0.002

[steps.evaluate]
kind = "evaluate"
model = "{{ steps.train.outputs.model }}"
data = "{{ steps.process.outputs.out }}"
channel = "test"

[steps.check]
kind = "condition"
left = "{{ steps.evaluate.report.accuracy }}"
op = ">="
right = "{{ params.min_accuracy }}"
if_steps = ["register", "predict"]
else_steps = ["too_low"]

[steps.register]
kind = "register"
model = "{{ steps.train.outputs.model }}"
name = "{{ params.model_name }}"
registry = "{{ params.dir }}/registry"
evaluation = "{{ steps.evaluate.report }}"
description = "the quickstart's CNN on the shapes dataset"

[steps.predict]
kind = "transform"
model = "{{ steps.register.outputs.model }}"
manifest = "{{ steps.manifests.outputs.test }}"
out = "{{ params.dir }}/predictions"
instances = "{{ params.instances }}"

[steps.too_low]
kind = "fail"
message = "test accuracy {{ steps.evaluate.report.accuracy }} is below {{ params.min_accuracy }}; the model was not registered"
"#;

    fn options() -> ExportOptions {
        ExportOptions {
            image: "111122223333.dkr.ecr.eu-west-1.amazonaws.com/shardline:0.1".into(),
            role: "arn:aws:iam::111122223333:role/ShardlinePipelines".into(),
            bucket: Some("s3://shardline-runs/pipelines".into()),
            params: Vec::new(),
            instance_type: "ml.m5.xlarge".into(),
        }
    }

    fn crate_dir() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
    }

    #[test]
    fn quickstart_matches_the_golden_file() {
        let def = crate::parse("quickstart.toml", QUICKSTART).expect("valid definition");
        let json = sagemaker(&def, &options()).expect("exports");
        let text = serde_json::to_string_pretty(&json).expect("json") + "\n";
        let golden = crate_dir().join("tests/data/quickstart.sagemaker.json");
        if std::env::var_os("SHARDLINE_BLESS").is_some() {
            std::fs::create_dir_all(golden.parent().unwrap_or(Path::new("."))).expect("dir");
            std::fs::write(&golden, &text).expect("write golden");
        }
        let expected = std::fs::read_to_string(&golden).expect(
            "tests/data/quickstart.sagemaker.json is missing; run the test with SHARDLINE_BLESS=1 once and review it",
        );
        assert!(
            text == expected,
            "the export differs from {}; if the change is intended, rerun with SHARDLINE_BLESS=1 and review the diff\n{text}",
            golden.display()
        );
        // The branches hold the conditional steps; nothing else does.
        let steps = json["Steps"].as_array().expect("steps");
        let names: Vec<&str> = steps.iter().filter_map(|s| s["Name"].as_str()).collect();
        assert_eq!(
            names,
            ["manifests", "process", "train", "evaluate", "check"]
        );
    }

    #[test]
    fn overridden_parameters_change_the_defaults() {
        let def = crate::parse("quickstart.toml", QUICKSTART).expect("valid definition");
        let mut o = options();
        o.params = vec![("epochs".into(), "5".into())];
        let json = sagemaker(&def, &o).expect("exports");
        let epochs = json["Parameters"]
            .as_array()
            .expect("parameters")
            .iter()
            .find(|p| p["Name"] == "epochs")
            .expect("epochs");
        assert_eq!(epochs["DefaultValue"], 5);
        o.params = vec![("epochs".into(), "many".into())];
        let e = sagemaker(&def, &o).expect_err("bad value");
        assert!(e.to_string().contains("--param epochs=many"), "{e}");
    }

    #[test]
    fn unsupported_features_are_errors_naming_the_step() {
        let def = crate::parse(
            "local.toml",
            r#"
[params]
dir = "out"
tags = { type = "list", default = ["a"] }
[steps.data]
kind = "datagen"
out = "{{ params.dir }}/data"
[steps.manifests]
kind = "manifest"
source = "/data/images"
out = "{{ params.dir }}/manifests"
retry = { attempts = 3, on = ["program"] }
[steps.check]
kind = "condition"
left = "{{ steps.manifests.report.objects }}"
op = ">"
right = 0
"#,
        )
        .expect("valid definition");
        let mut o = options();
        o.bucket = None;
        let e = sagemaker(&def, &o).expect_err("not exportable");
        let text = e.to_string();
        let has = |step: Option<&str>, part: &str| {
            assert!(
                e.problems
                    .iter()
                    .any(|p| p.step.as_deref() == step && p.message.contains(part)),
                "no problem of {step:?} containing {part:?} in\n{text}"
            );
        };
        has(Some("data"), "a datagen step cannot be exported");
        has(
            Some("manifests"),
            "`source` is the local path \"/data/images\"",
        );
        has(Some("manifests"), "give --bucket");
        has(Some("manifests"), "\"program\"");
        has(Some("check"), "only an evaluate step's report");
        has(None, "parameter `tags` is a list");
        assert!(
            text.starts_with("pipeline local.toml: cannot export to sagemaker"),
            "{text}"
        );
        assert!(text.contains("step `data`: a datagen step"), "{text}");
    }

    #[test]
    fn using_a_conditional_step_from_outside_its_branch_is_an_error() {
        let def = crate::parse(
            "p.toml",
            r#"
[steps.m]
kind = "manifest"
source = "s3://b/images/"
out = "s3://b/manifests"
[steps.check]
kind = "condition"
left = 1
op = "!="
right = 2
if_steps = ["again"]
[steps.again]
kind = "manifest"
source = "s3://b/images/"
out = "s3://b/manifests2"
[steps.after]
kind = "manifest"
source = "{{ steps.again.outputs.out }}"
out = "s3://b/m3"
"#,
        )
        .expect("valid definition");
        let e = sagemaker(&def, &options()).expect_err("not exportable");
        assert!(
            e.problems
                .iter()
                .any(|p| p.step.as_deref() == Some("after")
                    && p.message.contains("condition `check`")),
            "{e}"
        );
    }
}
