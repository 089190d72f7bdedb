//! The pipeline definition: TOML parsed with the span of every key and value, and validated
//! completely before anything runs. Every problem is reported at once, each with its file, line
//! and column and what to do.
//!
//! ```toml
//! name = "shapes"
//! max_parallel = 4
//!
//! [params]
//! epochs = { type = "integer", default = 10 }
//! dir = "out"                       # the type is the default's
//!
//! [steps.manifests]
//! kind = "manifest"
//! source = "{{ params.dir }}/data"
//! out = "{{ params.dir }}/manifests"
//!
//! [steps.train]
//! kind = "train"
//! data = "{{ steps.process.outputs.out }}"
//! epochs = "{{ params.epochs }}"
//! retry = { attempts = 2, backoff_s = 1.0, on = ["infrastructure"] }
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::Serialize;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::spec::{CONTRACTS, Field, KINDS, Kind, OPS};
use crate::value::{Ref, Template, Ty, Value};

/// A place in the definition file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Pos {
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub col: usize,
}

/// One problem of a definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Where it is.
    pub at: Pos,
    /// What is wrong and what to do.
    pub message: String,
}

/// A definition that cannot run: every problem found.
#[derive(Debug, Clone, thiserror::Error)]
pub struct Invalid {
    /// The file.
    pub file: String,
    /// The problems, in file order.
    pub problems: Vec<Problem>,
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        write!(
            f,
            "pipeline {}: {n} problem{} in the definition, nothing was run:",
            self.file,
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            write!(
                f,
                "\n  {}:{}:{}: {}",
                self.file, p.at.line, p.at.col, p.message
            )?;
        }
        Ok(())
    }
}

/// A typed parameter.
#[derive(Debug, Clone, PartialEq)]
pub struct Param {
    /// Its name.
    pub name: String,
    /// Its type.
    pub ty: Ty,
    /// Its default.
    pub default: Value,
    /// What it is for.
    pub description: Option<String>,
}

/// Which failures of a step are tried again.
#[derive(Debug, Clone, PartialEq)]
pub struct Retry {
    /// Attempts in all (1: no retry).
    pub attempts: usize,
    /// Seconds before the second attempt, doubled before each later one.
    pub backoff_s: f64,
    /// Also retry a user program that exited non-zero (by default only infrastructure faults
    /// are: a crashed instance, a store that failed).
    pub program: bool,
}

impl Default for Retry {
    fn default() -> Retry {
        Retry {
            attempts: 1,
            backoff_s: 1.0,
            program: false,
        }
    }
}

/// A setting as written, with where.
#[derive(Debug, Clone, PartialEq)]
pub struct Setting {
    /// The value, references unresolved.
    pub template: Template,
    /// Where the value is.
    pub at: Pos,
}

/// One validated step.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// Its name (the key under `[steps]`).
    pub name: String,
    /// Its kind.
    pub kind: Kind,
    /// Its settings by name.
    pub settings: BTreeMap<String, Setting>,
    /// The steps that must finish first: those it references, those in `after`, and the
    /// condition that chooses it.
    pub deps: BTreeSet<String>,
    /// Its retry policy.
    pub retry: Retry,
    /// Whether a cached result may be used.
    pub cache: bool,
    /// The names of its outputs.
    pub outputs: Vec<String>,
    /// The condition step and branch (true: `if_steps`) that choose it, if any.
    pub gate: Option<(String, bool)>,
    /// Where its table starts.
    pub at: Pos,
}

impl Step {
    /// A literal string setting (validation has checked the type of fixed settings).
    pub fn literal_str(&self, name: &str) -> Option<&str> {
        match self.settings.get(name).map(|s| &s.template) {
            Some(Template::Literal(Value::Str(s))) => Some(s),
            _ => None,
        }
    }

    /// A literal list of strings (`if_steps`).
    pub fn literal_list(&self, name: &str) -> Vec<String> {
        match self.settings.get(name).map(|s| &s.template) {
            Some(Template::List(items)) => items
                .iter()
                .filter_map(|t| match t {
                    Template::Literal(Value::Str(s)) => Some(s.clone()),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        }
    }
}

/// A validated pipeline.
#[derive(Debug, Clone, PartialEq)]
pub struct Definition {
    /// Its name.
    pub name: String,
    /// The file it came from (as given).
    pub file: String,
    /// The text of the file.
    pub text: String,
    /// Steps run at once, at most.
    pub max_parallel: usize,
    /// Its parameters, in file order.
    pub params: Vec<Param>,
    /// Its steps, in an order where every step comes after those it depends on (file order
    /// among those that could go either way).
    pub steps: Vec<Step>,
}

impl Definition {
    /// A step by name.
    pub fn step(&self, name: &str) -> Option<&Step> {
        self.steps.iter().find(|s| s.name == name)
    }

    /// The parameters' values: the defaults, overridden by `overrides` (`key=value` texts, as
    /// given on the command line, parsed as each parameter's type).
    pub fn param_values(
        &self,
        overrides: &[(String, String)],
    ) -> Result<BTreeMap<String, Value>, String> {
        let mut values: BTreeMap<String, Value> = self
            .params
            .iter()
            .map(|p| (p.name.clone(), p.default.clone()))
            .collect();
        for (key, text) in overrides {
            let param = self.params.iter().find(|p| &p.name == key).ok_or_else(|| {
                let names: Vec<&str> = self.params.iter().map(|p| p.name.as_str()).collect();
                format!(
                    "--param {key}: the pipeline has no parameter {key:?}{}",
                    if names.is_empty() {
                        " (it has none)".to_string()
                    } else {
                        format!("; its parameters are {}", names.join(", "))
                    }
                )
            })?;
            let value = param
                .ty
                .parse_text(text)
                .map_err(|e| format!("--param {key}={text}: {e}"))?;
            values.insert(key.clone(), value);
        }
        Ok(values)
    }
}

/// Parses `key=value` command-line parameters.
pub fn parse_overrides(texts: &[String]) -> Result<Vec<(String, String)>, String> {
    texts
        .iter()
        .map(|t| {
            t.split_once('=')
                .map(|(k, v)| (k.trim().to_string(), v.to_string()))
                .ok_or_else(|| format!("--param {t:?} is not KEY=VALUE"))
        })
        .collect()
}

/// Line and column of byte offsets in a text (line starts found once, then searched).
struct Lines<'a> {
    text: &'a str,
    starts: Vec<usize>,
}

impl<'a> Lines<'a> {
    fn new(text: &'a str) -> Lines<'a> {
        let starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Lines { text, starts }
    }

    fn pos(&self, offset: usize) -> Pos {
        let offset = offset.min(self.text.len());
        let line = self.starts.partition_point(|&s| s <= offset);
        let start = self.starts[line - 1];
        Pos {
            line,
            col: self.text[start..offset].chars().count() + 1,
        }
    }
}

/// The closest of `names` to `name`, for "did you mean".
fn closest<'a>(name: &str, names: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    fn distance(a: &str, b: &str) -> usize {
        let b: Vec<char> = b.chars().collect();
        let mut row: Vec<usize> = (0..=b.len()).collect();
        for (i, ca) in a.chars().enumerate() {
            let mut prev = row[0];
            row[0] = i + 1;
            for (j, cb) in b.iter().enumerate() {
                let next = (row[j + 1] + 1)
                    .min(row[j] + 1)
                    .min(prev + usize::from(ca != *cb));
                prev = row[j + 1];
                row[j + 1] = next;
            }
        }
        row[b.len()]
    }
    names
        .into_iter()
        .map(|n| (distance(name, n), n))
        .filter(|(d, n)| *d <= (n.len() / 3).max(2) && *d < n.len())
        .min()
        .map(|(_, n)| n)
}

fn did_you_mean<'a>(name: &str, names: impl IntoIterator<Item = &'a str>) -> String {
    closest(name, names).map_or(String::new(), |n| format!("did you mean `{n}`? "))
}

/// "did you mean `x`?", or the names there are.
fn which<'a>(name: &str, what: &str, names: impl IntoIterator<Item = &'a str> + Clone) -> String {
    match closest(name, names.clone()) {
        Some(n) => format!("did you mean `{n}`?"),
        None => {
            let all: Vec<&str> = names.into_iter().collect();
            format!("the {what} are {}", all.join(", "))
        }
    }
}

struct Checker<'a> {
    lines: Lines<'a>,
    problems: Vec<Problem>,
}

impl Checker<'_> {
    fn problem(&mut self, span: std::ops::Range<usize>, message: impl Into<String>) {
        self.problems.push(Problem {
            at: self.lines.pos(span.start),
            message: message.into(),
        });
    }
}

/// A TOML value as a template; strings are parsed for references.
fn template(value: &Spanned<DeValue<'_>>, c: &mut Checker<'_>) -> Option<Template> {
    let span = value.span();
    Some(match value.get_ref() {
        DeValue::String(s) => match Template::parse_str(s) {
            Ok(t) => t,
            Err(e) => {
                c.problem(span, e);
                return None;
            }
        },
        DeValue::Integer(i) => match i64::from_str_radix(i.as_str(), i.radix()) {
            Ok(i) => Template::Literal(Value::Int(i)),
            Err(_) => {
                c.problem(span, format!("{} does not fit in 64 bits", i.as_str()));
                return None;
            }
        },
        DeValue::Float(x) => match x.as_str().replace('_', "").parse::<f64>() {
            Ok(x) if x.is_finite() => Template::Literal(Value::Float(x)),
            _ => {
                c.problem(
                    span,
                    format!(
                        "{} is not a finite number; write one such as 0.5",
                        x.as_str()
                    ),
                );
                return None;
            }
        },
        DeValue::Boolean(b) => Template::Literal(Value::Bool(*b)),
        DeValue::Datetime(_) => {
            c.problem(span, "dates are not a setting type; write a string");
            return None;
        }
        DeValue::Array(items) => {
            let items: Vec<Option<Template>> = items.iter().map(|v| template(v, c)).collect();
            let items: Option<Vec<Template>> = items.into_iter().collect();
            let items = items?;
            match items
                .iter()
                .map(|t| match t {
                    Template::Literal(v) => Some(v.clone()),
                    _ => None,
                })
                .collect::<Option<Vec<Value>>>()
            {
                Some(values) => Template::Literal(Value::List(values)),
                None => Template::List(items),
            }
        }
        DeValue::Table(table) => {
            let mut map = BTreeMap::new();
            let mut all_literal = true;
            for (k, v) in table.iter() {
                let t = template(v, c)?;
                all_literal &= matches!(t, Template::Literal(_));
                map.insert(k.get_ref().to_string(), t);
            }
            if all_literal {
                Template::Literal(Value::Table(
                    map.into_iter()
                        .filter_map(|(k, t)| match t {
                            Template::Literal(v) => Some((k, v)),
                            _ => None,
                        })
                        .collect(),
                ))
            } else {
                Template::Table(map)
            }
        }
    })
}

/// Whether a value of type `from` may fill a setting of type `to` (as [`Value::coerce`] does).
fn fits(from: Ty, to: Ty) -> bool {
    from == to
        || to == Ty::Any
        || from == Ty::Any
        || (from == Ty::Int && to == Ty::Float)
        || (to == Ty::Str && matches!(from, Ty::Int | Ty::Float | Ty::Bool))
}

/// The static type of a template, where it is known (`Any` for a report value).
fn static_ty(t: &Template, params: &BTreeMap<String, Param>) -> Ty {
    match t {
        Template::Literal(v) => v.ty(),
        Template::Ref(Ref::Param(p)) => params.get(p).map_or(Ty::Any, |p| p.ty),
        Template::Ref(Ref::Output { .. }) | Template::Text(_) => Ty::Str,
        Template::Ref(Ref::Report { .. }) => Ty::Any,
        Template::List(_) => Ty::List,
        Template::Table(_) => Ty::Table,
    }
}

/// The outputs a step of `kind` has, from its literal settings.
fn outputs(kind: Kind, settings: &BTreeMap<String, Setting>) -> Vec<String> {
    let mut names = Vec::new();
    match kind {
        Kind::Datagen | Kind::Transform | Kind::Command => names.push("out".to_string()),
        Kind::Manifest => {
            names.push("out".to_string());
            let split = match settings.get("split").map(|s| &s.template) {
                Some(Template::Literal(Value::Str(text))) => text.parse().unwrap_or_default(),
                _ => shardline_manifest::Split::default(),
            };
            names.extend(split.channels().map(|c| c.name().to_string()));
        }
        Kind::Process => {
            names.push("out".to_string());
            match settings.get("inputs").map(|s| &s.template) {
                Some(Template::Literal(Value::Table(t))) => names.extend(t.keys().cloned()),
                Some(Template::Table(t)) => names.extend(t.keys().cloned()),
                _ => {}
            }
        }
        Kind::Train => names.push("model".to_string()),
        Kind::Evaluate => names.push("report".to_string()),
        Kind::Register => names.push("model".to_string()),
        Kind::Condition | Kind::Fail => {}
    }
    names
}

struct RawStep {
    name: String,
    kind: Kind,
    settings: BTreeMap<String, Setting>,
    spans: BTreeMap<String, std::ops::Range<usize>>,
    after: Vec<(String, std::ops::Range<usize>)>,
    retry: Retry,
    cache: bool,
    span: std::ops::Range<usize>,
}

fn parse_retry(value: &Spanned<DeValue<'_>>, c: &mut Checker<'_>) -> Retry {
    let mut retry = Retry::default();
    let Some(table) = value.get_ref().as_table() else {
        c.problem(
            value.span(),
            "`retry` must be a table: { attempts = 3, backoff_s = 1.0, on = [\"infrastructure\"] }",
        );
        return retry;
    };
    for (key, v) in table.iter() {
        let is_ref = v.get_ref().as_str().is_some_and(|s| s.contains("{{"));
        if is_ref {
            c.problem(
                v.span(),
                format!(
                    "`retry.{}` cannot use a reference: the retry policy is fixed when the pipeline is validated; write the value",
                    key.get_ref()
                ),
            );
            continue;
        }
        match (key.get_ref().as_ref(), v.get_ref()) {
            ("attempts", DeValue::Integer(i)) => match i.as_str().parse::<usize>() {
                Ok(n) if n >= 1 => retry.attempts = n,
                _ => c.problem(v.span(), "`retry.attempts` must be at least 1"),
            },
            ("backoff_s", DeValue::Integer(i)) => {
                retry.backoff_s = i.as_str().parse().unwrap_or(0.0);
            }
            ("backoff_s", DeValue::Float(x)) => match x.as_str().parse::<f64>() {
                Ok(s) if s >= 0.0 && s.is_finite() => retry.backoff_s = s,
                _ => c.problem(v.span(), "`retry.backoff_s` must be 0 or more seconds"),
            },
            ("on", DeValue::Array(items)) => {
                for item in items {
                    match item.get_ref().as_str() {
                        Some("infrastructure") => {}
                        Some("program") => retry.program = true,
                        _ => c.problem(
                            item.span(),
                            "`retry.on` lists \"infrastructure\" (crashed instances, store errors) and \"program\" (a user program that exited non-zero)",
                        ),
                    }
                }
            }
            ("attempts" | "backoff_s" | "on", other) => c.problem(
                v.span(),
                format!(
                    "`retry.{}` has the wrong type ({}): attempts is an integer, backoff_s a number, on a list",
                    key.get_ref(),
                    other.type_str()
                ),
            ),
            (other, _) => c.problem(
                key.span(),
                format!(
                    "`retry` has no setting `{other}`; {}its settings are attempts, backoff_s, on",
                    did_you_mean(other, ["attempts", "backoff_s", "on"])
                ),
            ),
        }
    }
    retry
}

fn parse_step(
    name: &Spanned<std::borrow::Cow<'_, str>>,
    value: &Spanned<DeValue<'_>>,
    c: &mut Checker<'_>,
) -> Option<RawStep> {
    let step_name = name.get_ref().to_string();
    let Some(table) = value.get_ref().as_table() else {
        c.problem(
            value.span(),
            format!("step `{step_name}` must be a table ([steps.{step_name}])"),
        );
        return None;
    };
    if step_name.contains('.') || step_name.contains("{{") {
        c.problem(
            name.span(),
            format!("step name {step_name:?} may not contain `.` or `{{{{`"),
        );
    }
    let kind = match table.get("kind") {
        None => {
            c.problem(
                name.span(),
                format!(
                    "step `{step_name}` has no `kind`; give one of {}",
                    KINDS.map(|k| k.name()).join(", ")
                ),
            );
            return None;
        }
        Some(k) => match k.get_ref().as_str() {
            Some(text) if text.contains("{{") => {
                c.problem(
                    k.span(),
                    "`kind` cannot use a reference: a step's kind is fixed when the pipeline is validated",
                );
                return None;
            }
            Some(text) => match text.parse::<Kind>() {
                Ok(kind) => kind,
                Err(()) => {
                    c.problem(
                        k.span(),
                        format!(
                            "unknown step kind {text:?}; {}the kinds are {}",
                            did_you_mean(text, KINDS.map(|k| k.name())),
                            KINDS.map(|k| k.name()).join(", ")
                        ),
                    );
                    return None;
                }
            },
            None => {
                c.problem(k.span(), "`kind` must be a string");
                return None;
            }
        },
    };
    let mut step = RawStep {
        name: step_name.clone(),
        kind,
        settings: BTreeMap::new(),
        spans: BTreeMap::new(),
        after: Vec::new(),
        retry: Retry::default(),
        cache: true,
        span: name.span(),
    };
    for (key, v) in table.iter() {
        let key_name = key.get_ref().as_ref();
        match key_name {
            "kind" | "description" => continue,
            "retry" => {
                step.retry = parse_retry(v, c);
                continue;
            }
            "cache" => {
                match v.get_ref().as_bool() {
                    Some(b) => step.cache = b,
                    None => c.problem(v.span(), "`cache` must be true or false"),
                }
                continue;
            }
            "after" => {
                match v.get_ref().as_array() {
                    Some(items) => {
                        for item in items {
                            match item.get_ref().as_str() {
                                Some(s) if !s.contains("{{") => {
                                    step.after.push((s.to_string(), item.span()));
                                }
                                _ => c.problem(
                                    item.span(),
                                    "`after` lists step names (no references: the order is fixed when the pipeline is validated)",
                                ),
                            }
                        }
                    }
                    None => c.problem(v.span(), "`after` must be a list of step names"),
                }
                continue;
            }
            _ => {}
        }
        let Some(field) = kind.field(key_name) else {
            let names: Vec<&str> = kind.fields().iter().map(|f| f.name).collect();
            c.problem(
                key.span(),
                format!(
                    "a {kind} step has no setting `{key_name}`; {}its settings are {} (and kind, after, retry, cache, description)",
                    did_you_mean(key_name, names.iter().copied()),
                    names.join(", ")
                ),
            );
            continue;
        };
        let Some(t) = template(v, c) else { continue };
        check_setting(&step_name, field, &t, v.span(), c);
        step.spans.insert(key_name.to_string(), v.span());
        step.settings.insert(
            key_name.to_string(),
            Setting {
                template: t,
                at: c.lines.pos(v.span().start),
            },
        );
    }
    for field in kind.fields() {
        if field.required && !step.settings.contains_key(field.name) {
            c.problem(
                name.span(),
                format!(
                    "step `{step_name}` ({kind}) needs the setting `{}` ({})",
                    field.name,
                    field.ty.name()
                ),
            );
        }
    }
    Some(step)
}

/// Checks what can be checked of one setting without the others: fixed values and literal types.
fn check_setting(
    step: &str,
    field: &Field,
    t: &Template,
    span: std::ops::Range<usize>,
    c: &mut Checker<'_>,
) {
    if field.fixed && !t.refs().is_empty() {
        c.problem(
            span.clone(),
            format!(
                "`{}` of step `{step}` cannot use a reference ({}): it decides the shape of the pipeline, which is fixed before the run; write the value",
                field.name,
                t.refs()[0]
            ),
        );
        return;
    }
    if let Template::Literal(v) = t
        && v.coerce(field.ty).is_none()
    {
        c.problem(
            span.clone(),
            format!(
                "`{}` of step `{step}` must be {}, not {} ({v})",
                field.name,
                field.ty.a(),
                v.ty().a()
            ),
        );
    }
    // Every integer setting of a step is a count, a size or a seed: none is negative (the run
    // would refuse it, but only when the step starts).
    if field.ty == Ty::Int
        && let Template::Literal(Value::Int(i)) = t
        && *i < 0
    {
        c.problem(
            span.clone(),
            format!(
                "`{}` of step `{step}` must be 0 or more, not {i}",
                field.name
            ),
        );
    }
    if field.name == "op"
        && let Template::Literal(Value::Str(op)) = t
        && !OPS.contains(&op.as_str())
    {
        c.problem(
            span.clone(),
            format!("`op` {op:?} is not one of {}", OPS.join(" ")),
        );
    }
    if field.name == "contract"
        && let Template::Literal(Value::Str(contract)) = t
        && !CONTRACTS.contains(&contract.as_str())
    {
        c.problem(
            span.clone(),
            format!(
                "`contract` {contract:?} is not one of {}",
                CONTRACTS.join(", ")
            ),
        );
    }
    if field.name == "split"
        && let Template::Literal(Value::Str(text)) = t
        && let Err(e) = text.parse::<shardline_manifest::Split>()
    {
        c.problem(span, format!("`split`: {e}"));
    }
}

fn parse_params(value: &Spanned<DeValue<'_>>, c: &mut Checker<'_>) -> Vec<Param> {
    let Some(table) = value.get_ref().as_table() else {
        c.problem(value.span(), "`params` must be a table");
        return Vec::new();
    };
    let mut params: Vec<(usize, Param)> = Vec::new();
    for (key, v) in table.iter() {
        let name = key.get_ref().to_string();
        let (ty, default, description) = match v.get_ref().as_table() {
            Some(t) if t.contains_key("type") || t.contains_key("default") => {
                let ty = match t.get("type").map(|v| (v.get_ref().as_str(), v.span())) {
                    Some((Some(text), span)) => match Ty::parse(text) {
                        Some(ty) => Some(ty),
                        None => {
                            c.problem(
                                span,
                                format!(
                                    "parameter `{name}`: unknown type {text:?}; the types are string, integer, float, boolean, list"
                                ),
                            );
                            continue;
                        }
                    },
                    Some((None, span)) => {
                        c.problem(span, "`type` must be a string");
                        continue;
                    }
                    None => None,
                };
                for (k, _) in t.iter() {
                    if !["type", "default", "description"].contains(&k.get_ref().as_ref()) {
                        c.problem(
                            k.span(),
                            format!(
                                "parameter `{name}` has no `{}`; give type, default, description",
                                k.get_ref()
                            ),
                        );
                    }
                }
                let Some(default) = t.get("default") else {
                    c.problem(key.span(), format!("parameter `{name}` needs a `default`"));
                    continue;
                };
                let description = t
                    .get("description")
                    .and_then(|d| d.get_ref().as_str().map(str::to_string));
                (ty, default, description)
            }
            _ => (None, v, None),
        };
        let value = match template(default, c) {
            Some(Template::Literal(v)) => v,
            Some(_) => {
                c.problem(
                    default.span(),
                    format!("the default of parameter `{name}` cannot use a reference"),
                );
                continue;
            }
            None => continue,
        };
        let ty = ty.unwrap_or(value.ty());
        if matches!(ty, Ty::Table) {
            c.problem(
                default.span(),
                format!("parameter `{name}` cannot be a table; the types are string, integer, float, boolean, list"),
            );
            continue;
        }
        let Some(value) = value.coerce(ty).filter(|v| v.ty() == ty) else {
            c.problem(
                default.span(),
                format!(
                    "the default of parameter `{name}` is {}, not {}",
                    value.ty().a(),
                    ty.a()
                ),
            );
            continue;
        };
        params.push((
            key.span().start,
            Param {
                name,
                ty,
                default: value,
                description,
            },
        ));
    }
    params.sort_by_key(|(at, _)| *at);
    params.into_iter().map(|(_, p)| p).collect()
}

/// Parses and validates a definition; `file` names it in messages.
pub fn parse(file: &str, text: &str) -> Result<Definition, Invalid> {
    let mut c = Checker {
        lines: Lines::new(text),
        problems: Vec::new(),
    };
    let invalid = |c: Checker<'_>| Invalid {
        file: file.to_string(),
        problems: c.problems,
    };
    let (doc, errors) = DeTable::parse_recoverable(text);
    for e in &errors {
        let span = e.span().unwrap_or(0..0);
        let message = e
            .message()
            .lines()
            .next()
            .unwrap_or("not valid TOML")
            .to_string();
        c.problem(span, format!("not valid TOML: {message}"));
    }
    if !errors.is_empty() {
        return Err(invalid(c));
    }
    let doc = doc.get_ref();
    let mut name = None;
    let mut max_parallel = 4;
    let mut params = Vec::new();
    let mut raw_steps: Vec<RawStep> = Vec::new();
    for (key, v) in doc.iter() {
        match key.get_ref().as_ref() {
            "name" => match v.get_ref().as_str() {
                Some(n) if !n.is_empty() && !n.contains("{{") => name = Some(n.to_string()),
                _ => c.problem(v.span(), "`name` must be a plain, non-empty string"),
            },
            "description" => {}
            "max_parallel" => match v.get_ref().as_integer().map(|i| i.as_str().parse::<usize>()) {
                Some(Ok(n)) if n >= 1 => max_parallel = n,
                _ => c.problem(v.span(), "`max_parallel` must be an integer of at least 1"),
            },
            "params" => params = parse_params(v, &mut c),
            "steps" => match v.get_ref().as_table() {
                Some(steps) => {
                    for (step_name, step) in steps.iter() {
                        if let Some(step) = parse_step(step_name, step, &mut c) {
                            raw_steps.push(step);
                        }
                    }
                }
                None => c.problem(v.span(), "`steps` must be a table of steps ([steps.NAME])"),
            },
            other => c.problem(
                key.span(),
                format!(
                    "unknown top-level key `{other}`; {}a definition has name, description, max_parallel, [params] and [steps.NAME]",
                    did_you_mean(other, ["name", "description", "max_parallel", "params", "steps"])
                ),
            ),
        }
    }
    if !doc.contains_key("steps") {
        c.problem(
            0..0,
            "the definition has no steps; add [steps.NAME] tables with a kind",
        );
    }
    let name = name.unwrap_or_else(|| {
        std::path::Path::new(file)
            .file_stem()
            .map_or("pipeline".into(), |s| s.to_string_lossy().into_owned())
    });
    raw_steps.sort_by_key(|s| s.span.start);
    let steps = link(raw_steps, &params, &mut c);
    c.problems.sort_by_key(|p| (p.at.line, p.at.col));
    if !c.problems.is_empty() {
        return Err(invalid(c));
    }
    Ok(Definition {
        name,
        file: file.to_string(),
        text: text.to_string(),
        max_parallel,
        params,
        steps,
    })
}

/// Checks every reference, derives the dependencies, finds cycles and orders the steps.
fn link(raw: Vec<RawStep>, params: &[Param], c: &mut Checker<'_>) -> Vec<Step> {
    let params: BTreeMap<String, Param> =
        params.iter().map(|p| (p.name.clone(), p.clone())).collect();
    let kinds: BTreeMap<String, Kind> = raw.iter().map(|s| (s.name.clone(), s.kind)).collect();
    let outputs_of: BTreeMap<String, Vec<String>> = raw
        .iter()
        .map(|s| (s.name.clone(), outputs(s.kind, &s.settings)))
        .collect();
    let mut gates: BTreeMap<String, (String, bool)> = BTreeMap::new();
    for s in raw.iter().filter(|s| s.kind == Kind::Condition) {
        for (branch, key) in [(true, "if_steps"), (false, "else_steps")] {
            let Some(setting) = s.settings.get(key) else {
                continue;
            };
            let span = s.spans[key].clone();
            let names = match &setting.template {
                Template::Literal(Value::List(items)) => items.clone(),
                _ => Vec::new(),
            };
            for item in names {
                let Value::Str(target) = item else {
                    c.problem(span.clone(), format!("`{key}` lists step names"));
                    continue;
                };
                if !kinds.contains_key(target.as_str()) {
                    c.problem(
                        span.clone(),
                        format!(
                            "`{key}` of step `{}` names step `{target}`, which does not exist; {}",
                            s.name,
                            which(&target, "steps", kinds.keys().map(String::as_str))
                        ),
                    );
                } else if target == s.name {
                    c.problem(
                        span.clone(),
                        format!("condition `{}` cannot choose itself", s.name),
                    );
                } else if let Some((other, _)) = gates.get(&target) {
                    c.problem(
                        span.clone(),
                        format!(
                            "step `{target}` is already chosen by condition `{other}`; a step is in one branch of one condition"
                        ),
                    );
                } else {
                    gates.insert(target, (s.name.clone(), branch));
                }
            }
        }
    }
    let mut steps = Vec::new();
    for s in raw {
        let mut deps = BTreeSet::new();
        for (setting_name, setting) in &s.settings {
            let span = s.spans[setting_name].clone();
            let field = s.kind.field(setting_name).copied();
            for r in setting.template.refs() {
                match r {
                    Ref::Param(p) => {
                        if !params.contains_key(p) {
                            c.problem(
                                span.clone(),
                                format!(
                                    "`{setting_name}` of step `{}` uses parameter `{p}`, which is not declared; {}add it under [params]",
                                    s.name,
                                    did_you_mean(p, params.keys().map(String::as_str))
                                ),
                            );
                        }
                    }
                    Ref::Output { step, .. } | Ref::Report { step, .. } if step == &s.name => {
                        c.problem(
                            span.clone(),
                            format!("step `{}` cannot use its own outputs or report", s.name),
                        );
                    }
                    Ref::Output { step, name } => match outputs_of.get(step.as_str()) {
                        None => c.problem(
                            span.clone(),
                            format!(
                                "`{setting_name}` of step `{}` uses step `{step}`, which does not exist; {}",
                                s.name,
                                which(step, "steps", kinds.keys().map(String::as_str))
                            ),
                        ),
                        Some(outs) if !outs.contains(name) => c.problem(
                            span.clone(),
                            format!(
                                "step `{step}` ({}) has no output `{name}`; {}its outputs are {}",
                                kinds[step.as_str()],
                                did_you_mean(name, outs.iter().map(String::as_str)),
                                if outs.is_empty() { "none".to_string() } else { outs.join(", ") }
                            ),
                        ),
                        Some(_) => {
                            deps.insert(step.clone());
                        }
                    },
                    Ref::Report { step, path } => match kinds.get(step.as_str()) {
                        None => c.problem(
                            span.clone(),
                            format!(
                                "`{setting_name}` of step `{}` uses the report of step `{step}`, which does not exist; {}",
                                s.name,
                                which(step, "steps", kinds.keys().map(String::as_str))
                            ),
                        ),
                        Some(kind) => {
                            if let Some(keys) = kind.report_keys()
                                && let Some(first) = path.first()
                                && !keys.contains(&first.as_str())
                            {
                                c.problem(
                                    span.clone(),
                                    format!(
                                        "no step produces `{r}`: a {kind} step's report has no `{}`; {}its keys are {}",
                                        first,
                                        did_you_mean(first, keys.iter().copied()),
                                        if keys.is_empty() { "none".to_string() } else { keys.join(", ") }
                                    ),
                                );
                            }
                            deps.insert(step.clone());
                        }
                    },
                }
            }
            if let Some(field) = field {
                let ty = static_ty(&setting.template, &params);
                if !matches!(setting.template, Template::Literal(_)) && !fits(ty, field.ty) {
                    let what = match &setting.template {
                        Template::Ref(r) => format!("{r} is {}", ty.a()),
                        _ => "a string with references is a string".to_string(),
                    };
                    c.problem(
                        span.clone(),
                        format!(
                            "`{setting_name}` of step `{}` must be {}, but {what}",
                            s.name,
                            field.ty.a()
                        ),
                    );
                }
            }
        }
        for (after, span) in &s.after {
            if !kinds.contains_key(after.as_str()) {
                c.problem(
                    span.clone(),
                    format!(
                        "`after` of step `{}` names step `{after}`, which does not exist; {}",
                        s.name,
                        which(after, "steps", kinds.keys().map(String::as_str))
                    ),
                );
            } else {
                deps.insert(after.clone());
            }
        }
        let gate = gates.get(&s.name).cloned();
        if let Some((condition, _)) = &gate {
            deps.insert(condition.clone());
        }
        steps.push((
            s.span.clone(),
            Step {
                outputs: outputs(s.kind, &s.settings),
                name: s.name,
                kind: s.kind,
                settings: s.settings,
                deps,
                retry: s.retry,
                cache: s.cache,
                gate,
                at: c.lines.pos(s.span.start),
            },
        ));
    }
    order(steps, c)
}

/// Orders the steps so that each follows its dependencies (file order otherwise); a cycle is a
/// problem at each step on it.
fn order(steps: Vec<(std::ops::Range<usize>, Step)>, c: &mut Checker<'_>) -> Vec<Step> {
    let mut placed: BTreeSet<String> = BTreeSet::new();
    let mut out = Vec::with_capacity(steps.len());
    let mut left: Vec<(std::ops::Range<usize>, Step)> = steps;
    loop {
        let before = left.len();
        let mut rest = Vec::new();
        for (span, step) in left {
            // Unknown dependencies were reported already; they do not hold a step back.
            if step.deps.iter().all(|d| placed.contains(d)) {
                placed.insert(step.name.clone());
                out.push(step);
            } else {
                rest.push((span, step));
            }
        }
        left = rest;
        if left.is_empty() {
            return out;
        }
        if left.len() == before {
            break;
        }
    }
    // What is left is on a cycle or behind one; name each cycle once.
    let waiting: BTreeMap<String, BTreeSet<String>> = left
        .iter()
        .map(|(_, s)| (s.name.clone(), s.deps.clone()))
        .collect();
    let mut reported: BTreeSet<String> = BTreeSet::new();
    for (span, step) in &left {
        if reported.contains(&step.name) {
            continue;
        }
        // Walk dependencies from this step until one repeats.
        let mut path = vec![step.name.clone()];
        let mut at = step.name.clone();
        let cycle = loop {
            let Some(next) = waiting
                .get(&at)
                .and_then(|d| d.iter().find(|d| waiting.contains_key(*d)))
            else {
                break None;
            };
            if let Some(i) = path.iter().position(|p| p == next) {
                break Some(path[i..].to_vec());
            }
            path.push(next.clone());
            at = next.clone();
        };
        if let Some(cycle) = cycle
            && cycle.contains(&step.name)
        {
            let mut shown = cycle.clone();
            shown.push(cycle[0].clone());
            c.problem(
                span.clone(),
                format!(
                    "steps form a cycle: {}; each step must come from the ones it uses, remove one of these dependencies",
                    shown.join(" → ")
                ),
            );
            reported.extend(cycle);
        }
    }
    out.extend(left.into_iter().map(|(_, s)| s));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(text: &str) -> Vec<String> {
        match parse("p.toml", text) {
            Ok(_) => Vec::new(),
            Err(e) => e
                .problems
                .iter()
                .map(|p| format!("{}:{}: {}", p.at.line, p.at.col, p.message))
                .collect(),
        }
    }

    fn has(found: &[String], expected: &str) {
        assert!(
            found.iter().any(|p| p.starts_with(expected)),
            "no problem starting {expected:?} in {found:#?}"
        );
    }

    #[test]
    fn every_kind_of_problem_is_found_at_once_with_its_place() {
        let found = problems(
            r#"[params]
epochs = 3
name = "x"
[steps.a]
kind = "datagen"
out = "a"
classes = "four"
per_class = "{{ params.name }}"
[steps.b]
kind = "manifest"
source = "{{ steps.a.outputs.model }}"
out = "{{ steps.c.outputs.out }}"
[steps.c]
kind = "manifest"
source = "{{ steps.b.outputs.out }}"
out = "c"
[steps.d]
kind = "condition"
left = "{{ steps.a.report.accuracy }}"
op = "=>"
right = 1
if_steps = ["zz"]
[steps.e]
kind = "train"
data = "x"
out = "y"
retry = { attempts = "{{ params.epochs }}" }
[steps.f]
kind = "evaluate"
"#,
        );
        has(
            &found,
            "7:11: `classes` of step `a` must be an integer, not a string",
        );
        has(
            &found,
            "8:13: `per_class` of step `a` must be an integer, but params.name is a string",
        );
        has(
            &found,
            "11:10: step `a` (datagen) has no output `model`; its outputs are out",
        );
        has(&found, "19:8: no step produces `steps.a.report.accuracy`");
        has(&found, "20:6: `op` \"=>\" is not one of");
        has(
            &found,
            "22:12: `if_steps` of step `d` names step `zz`, which does not exist",
        );
        has(&found, "27:22: `retry.attempts` cannot use a reference");
        has(
            &found,
            "28:8: step `f` (evaluate) needs the setting `model`",
        );
        assert!(
            found
                .iter()
                .any(|p| p.contains("steps form a cycle: b → c → b")),
            "{found:#?}"
        );
    }

    #[test]
    fn negative_counts_are_refused_at_validation() {
        let found = problems(
            "[steps.a]\nkind = \"datagen\"\nout = \"d\"\n[steps.m]\nkind = \"manifest\"\nsource = \"{{ steps.a.outputs.out }}\"\nout = \"m\"\npart_keys = -5\n",
        );
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].starts_with("8:") && found[0].contains("must be 0 or more"),
            "{found:?}"
        );
    }

    #[test]
    fn floats_that_are_not_finite_are_refused_at_their_place() {
        let found =
            problems("[params]\nlr = nan\nb = -inf\n[steps.a]\nkind = \"datagen\"\nout = \"d\"\n");
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(
            found.iter().all(|p| p.contains("not a finite number")),
            "{found:?}"
        );
        assert!(
            found[0].starts_with("2:") && found[1].starts_with("3:"),
            "{found:?}"
        );
    }

    #[test]
    fn toml_syntax_errors_have_their_place() {
        let found = problems("[steps.a]\nkind = \"datagen\"\nout = \n");
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].starts_with("3:"), "{found:?}");
        assert!(found[0].contains("not valid TOML"), "{found:?}");
    }

    #[test]
    fn references_make_dependencies_and_order() {
        let def = parse(
            "p.toml",
            r#"
[params]
n = 2
[steps.second]
kind = "manifest"
source = "{{ steps.first.outputs.out }}"
out = "m"
[steps.first]
kind = "datagen"
out = "d"
per_class = "{{ params.n }}"
"#,
        )
        .expect("valid");
        let names: Vec<&str> = def.steps.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["first", "second"]);
        assert!(def.step("second").expect("step").deps.contains("first"));
        let values = def
            .param_values(&[("n".into(), "5".into())])
            .expect("param");
        assert_eq!(values["n"], Value::Int(5));
        let e = def
            .param_values(&[("n".into(), "five".into())])
            .expect_err("bad");
        assert!(e.contains("\"five\" is not an integer"), "{e}");
        let e = def
            .param_values(&[("m".into(), "1".into())])
            .expect_err("unknown");
        assert!(e.contains("its parameters are n"), "{e}");
    }
}
