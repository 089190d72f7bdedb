//! What each step kind accepts and produces: its settings (by the library config's field
//! names), their types, which of them name what the step reads or writes, its outputs and the
//! keys of its JSON report. Validation, caching and export read it; nothing here does I/O.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::value::Ty;

/// The kinds of step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// The generated shapes dataset (`shardline_datagen::generate`).
    Datagen,
    /// Manifests, table and lineage (`shardline_manifest::run`).
    Manifest,
    /// Sharded processing on N instances (`shardline_process::run`).
    Process,
    /// Data-parallel training (`shardline_train::run`).
    Train,
    /// A model on one channel (`shardline_train::evaluate::run`).
    Evaluate,
    /// Chooses a branch from a comparison.
    Condition,
    /// A new version in the model registry.
    Register,
    /// Batch transform (`shardline_serve::transform::run`).
    Transform,
    /// Ends the execution with a message.
    Fail,
    /// A user's own program under the processing or training container contract.
    Command,
}

/// Every kind, in the order the documentation lists them.
pub const KINDS: [Kind; 10] = [
    Kind::Datagen,
    Kind::Manifest,
    Kind::Process,
    Kind::Train,
    Kind::Evaluate,
    Kind::Condition,
    Kind::Register,
    Kind::Transform,
    Kind::Fail,
    Kind::Command,
];

impl Kind {
    /// Its name in a definition.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Datagen => "datagen",
            Kind::Manifest => "manifest",
            Kind::Process => "process",
            Kind::Train => "train",
            Kind::Evaluate => "evaluate",
            Kind::Condition => "condition",
            Kind::Register => "register",
            Kind::Transform => "transform",
            Kind::Fail => "fail",
            Kind::Command => "command",
        }
    }

    /// Its settings.
    pub fn fields(self) -> &'static [Field] {
        match self {
            Kind::Datagen => DATAGEN,
            Kind::Manifest => MANIFEST,
            Kind::Process => PROCESS,
            Kind::Train => TRAIN,
            Kind::Evaluate => EVALUATE,
            Kind::Condition => CONDITION,
            Kind::Register => REGISTER,
            Kind::Transform => TRANSFORM,
            Kind::Fail => FAIL,
            Kind::Command => COMMAND,
        }
    }

    /// One setting by name.
    pub fn field(self, name: &str) -> Option<&'static Field> {
        self.fields().iter().find(|f| f.name == name)
    }

    /// The keys of its JSON report; `None`: any (a command's report is the user's own file).
    pub fn report_keys(self) -> Option<&'static [&'static str]> {
        Some(match self {
            Kind::Datagen => &["images", "classes", "out"],
            Kind::Manifest => &["outcome", "objects", "classes", "channels", "out"],
            Kind::Process => &[
                "outcome",
                "objects",
                "samples",
                "quarantined",
                "instances",
                "job",
                "out",
            ],
            Kind::Train => &[
                "outcome",
                "test_accuracy",
                "validation_accuracy",
                "train_accuracy",
                "train_loss",
                "epochs",
                "job",
                "out",
            ],
            Kind::Evaluate => &[
                "model",
                "data",
                "samples",
                "accuracy",
                "classes",
                "confusion_matrix",
            ],
            Kind::Condition => &["outcome"],
            Kind::Register => &["name", "version", "artifact"],
            Kind::Transform => &["objects", "predicted", "failed", "predictions"],
            Kind::Fail => &[],
            Kind::Command => return None,
        })
    }

    /// Whether its results can come from the cache (a condition is always decided again, a fail
    /// step always fails).
    pub fn cacheable(self) -> bool {
        !matches!(self, Kind::Condition | Kind::Fail)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Kind {
    type Err = ();
    fn from_str(name: &str) -> Result<Kind, ()> {
        KINDS.into_iter().find(|k| k.name() == name).ok_or(())
    }
}

/// What a setting is to the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// It decides the outputs: its value is part of the cache key.
    Setting,
    /// It names something the step reads: the content's digest is part of the key, never the
    /// name (a table: each value is a location).
    Input,
    /// It names where the step writes: part of the key, and checked before a cache hit is used.
    Output,
    /// It changes how the work is done, not what it produces (a device, a concurrency): not part
    /// of the key.
    Runtime,
}

/// One setting of a kind.
#[derive(Debug, Clone, Copy)]
pub struct Field {
    /// Its name, as in the library's config.
    pub name: &'static str,
    /// Its type.
    pub ty: Ty,
    /// It has no default.
    pub required: bool,
    /// It must be known when the definition is validated (no reference).
    pub fixed: bool,
    /// What it is to the cache.
    pub role: Role,
}

const fn f(name: &'static str, ty: Ty) -> Field {
    Field {
        name,
        ty,
        required: false,
        fixed: false,
        role: Role::Setting,
    }
}

const fn required(field: Field) -> Field {
    Field {
        required: true,
        ..field
    }
}

const fn fixed(field: Field) -> Field {
    Field {
        fixed: true,
        ..field
    }
}

const fn input(name: &'static str, ty: Ty) -> Field {
    Field {
        role: Role::Input,
        ..required(f(name, ty))
    }
}

const fn output(name: &'static str) -> Field {
    Field {
        role: Role::Output,
        ..required(f(name, Ty::Str))
    }
}

const fn runtime(name: &'static str, ty: Ty) -> Field {
    Field {
        role: Role::Runtime,
        ..f(name, ty)
    }
}

const DATAGEN: &[Field] = &[
    output("out"),
    f("classes", Ty::Int),
    f("per_class", Ty::Int),
    f("size", Ty::Int),
    f("height", Ty::Int),
    f("format", Ty::Str),
    f("seed", Ty::Int),
    runtime("force", Ty::Bool),
];

const MANIFEST: &[Field] = &[
    input("source", Ty::Str),
    output("out"),
    fixed(f("split", Ty::Str)),
    f("seed", Ty::Int),
    f("min_per_class", Ty::Int),
    f("augmented", Ty::Bool),
    runtime("force", Ty::Bool),
    runtime("concurrency", Ty::Int),
    f("part_keys", Ty::Int),
];

const PROCESS: &[Field] = &[
    input("inputs", Ty::Table),
    output("out"),
    f("instances", Ty::Int),
    f("distribution", Ty::Str),
    f("width", Ty::Int),
    f("height", Ty::Int),
    f("mode", Ty::Str),
    f("filter", Ty::Str),
    f("augment", Ty::List),
    f("augment_channels", Ty::List),
    f("seed", Ty::Int),
    f("shard_bytes", Ty::Int),
    f("max_pixels", Ty::Int),
    f("jpeg_scaling", Ty::Bool),
    f("error_budget", Ty::Float),
    runtime("max_attempts", Ty::Int),
    runtime("max_parallel", Ty::Int),
    runtime("force", Ty::Bool),
];

const TRAIN: &[Field] = &[
    input("data", Ty::Str),
    output("out"),
    f("workers", Ty::Int),
    f("epochs", Ty::Int),
    f("batch", Ty::Int),
    f("lr", Ty::Float),
    f("lr_scaling", Ty::Str),
    f("seed", Ty::Int),
    f("bucket_bytes", Ty::Int),
    f("warmup_epochs", Ty::Int),
    f("decay", Ty::Str),
    f("patience", Ty::Any),
    f("shift", Ty::Any),
    f("model", Ty::Str),
    runtime("force", Ty::Bool),
    runtime("device", Ty::Str),
];

const EVALUATE: &[Field] = &[
    input("model", Ty::Str),
    input("data", Ty::Str),
    f("channel", Ty::Str),
    runtime("device", Ty::Str),
];

const CONDITION: &[Field] = &[
    required(f("left", Ty::Any)),
    fixed(required(f("op", Ty::Str))),
    required(f("right", Ty::Any)),
    fixed(f("if_steps", Ty::List)),
    fixed(f("else_steps", Ty::List)),
];

const REGISTER: &[Field] = &[
    input("model", Ty::Str),
    required(f("name", Ty::Str)),
    f("registry", Ty::Str),
    f("description", Ty::Str),
    f("evaluation", Ty::Any),
];

const TRANSFORM: &[Field] = &[
    input("model", Ty::Str),
    input("manifest", Ty::Str),
    output("out"),
    f("instances", Ty::Int),
    f("k", Ty::Int),
    f("batch", Ty::Int),
    f("error_budget", Ty::Float),
    runtime("force", Ty::Bool),
    runtime("device", Ty::Str),
];

const FAIL: &[Field] = &[required(f("message", Ty::Str))];

const COMMAND: &[Field] = &[
    fixed(required(f("contract", Ty::Str))),
    required(f("program", Ty::Str)),
    Field {
        required: false,
        ..input("inputs", Ty::Table)
    },
    Field {
        required: false,
        ..input("data", Ty::Str)
    },
    output("out"),
    f("instances", Ty::Int),
    f("hyperparameters", Ty::Table),
    f("report", Ty::Str),
    runtime("force", Ty::Bool),
];

/// The comparison operators of a condition step.
pub const OPS: [&str; 6] = ["==", "!=", ">", ">=", "<", "<="];

/// The contracts a command step runs under.
pub const CONTRACTS: [&str; 2] = ["processing", "training"];
