//! Values of parameters and settings, their types, and the `{{ ... }}` references inside them.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// A resolved value: what a parameter holds or a setting receives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Value {
    /// A boolean.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A floating-point number.
    Float(f64),
    /// A string.
    Str(String),
    /// A list.
    List(Vec<Value>),
    /// A table of named values.
    Table(BTreeMap<String, Value>),
}

impl Value {
    /// The value's type.
    pub fn ty(&self) -> Ty {
        match self {
            Value::Bool(_) => Ty::Bool,
            Value::Int(_) => Ty::Int,
            Value::Float(_) => Ty::Float,
            Value::Str(_) => Ty::Str,
            Value::List(_) => Ty::List,
            Value::Table(_) => Ty::Table,
        }
    }

    /// The value as JSON.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }

    /// A JSON value (from a step's report) as a value; `null` has none.
    pub fn from_json(json: &serde_json::Value) -> Option<Value> {
        Some(match json {
            serde_json::Value::Null => return None,
            serde_json::Value::Bool(b) => Value::Bool(*b),
            serde_json::Value::Number(n) => match n.as_i64() {
                Some(i) => Value::Int(i),
                None => Value::Float(n.as_f64()?),
            },
            serde_json::Value::String(s) => Value::Str(s.clone()),
            serde_json::Value::Array(items) => {
                Value::List(items.iter().filter_map(Value::from_json).collect())
            }
            serde_json::Value::Object(map) => Value::Table(
                map.iter()
                    .filter_map(|(k, v)| Some((k.clone(), Value::from_json(v)?)))
                    .collect(),
            ),
        })
    }

    /// The value converted to `ty`, if it can be without loss of meaning: an integer is a float,
    /// and a number or boolean written into a string setting is its text.
    pub fn coerce(&self, ty: Ty) -> Option<Value> {
        match (self, ty) {
            (_, Ty::Any) => Some(self.clone()),
            (v, t) if v.ty() == t => Some(self.clone()),
            (Value::Int(i), Ty::Float) => Some(Value::Float(*i as f64)),
            (Value::Float(f), Ty::Int) if f.fract() == 0.0 && f.abs() < 9e15 => {
                Some(Value::Int(*f as i64))
            }
            (Value::Int(_) | Value::Float(_) | Value::Bool(_), Ty::Str) => {
                Some(Value::Str(self.to_string()))
            }
            _ => None,
        }
    }

    /// The number, for comparisons.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Int(i) => Some(*i as f64),
            Value::Float(f) => Some(*f),
            _ => None,
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Bool(b) => write!(f, "{b}"),
            Value::Int(i) => write!(f, "{i}"),
            Value::Float(x) => write!(f, "{x}"),
            Value::Str(s) => f.write_str(s),
            Value::List(items) => {
                let items: Vec<String> = items.iter().map(|v| format!("{v:?}")).collect();
                write!(f, "[{}]", items.join(", "))
            }
            Value::Table(_) => f.write_str(&self.to_json().to_string()),
        }
    }
}

/// The type of a parameter or setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Ty {
    /// A string.
    Str,
    /// An integer.
    Int,
    /// A number.
    Float,
    /// A boolean.
    Bool,
    /// A list.
    List,
    /// A table.
    Table,
    /// Anything (a condition's operands).
    Any,
}

impl Ty {
    /// The type by the name a definition uses.
    pub fn parse(name: &str) -> Option<Ty> {
        Some(match name {
            "string" => Ty::Str,
            "integer" => Ty::Int,
            "float" => Ty::Float,
            "boolean" => Ty::Bool,
            "list" => Ty::List,
            _ => return None,
        })
    }

    /// Its name in a definition.
    pub fn name(self) -> &'static str {
        match self {
            Ty::Str => "string",
            Ty::Int => "integer",
            Ty::Float => "float",
            Ty::Bool => "boolean",
            Ty::List => "list",
            Ty::Table => "table",
            Ty::Any => "any value",
        }
    }

    /// Its name with an article: "an integer".
    pub fn a(self) -> &'static str {
        match self {
            Ty::Str => "a string",
            Ty::Int => "an integer",
            Ty::Float => "a float",
            Ty::Bool => "a boolean",
            Ty::List => "a list",
            Ty::Table => "a table",
            Ty::Any => "any value",
        }
    }

    /// Parses a command-line `--param key=value` value as this type.
    pub fn parse_text(self, text: &str) -> Result<Value, String> {
        let bad = || format!("{text:?} is not {}", self.a());
        Ok(match self {
            Ty::Str | Ty::Any => Value::Str(text.to_string()),
            Ty::Int => Value::Int(text.trim().parse().map_err(|_| bad())?),
            Ty::Float => Value::Float(
                text.trim()
                    .parse::<f64>()
                    .ok()
                    .filter(|x| x.is_finite())
                    .ok_or_else(|| format!("{text:?} is not a finite float"))?,
            ),
            Ty::Bool => match text.trim() {
                "true" => Value::Bool(true),
                "false" => Value::Bool(false),
                _ => return Err(format!("{text:?} is not a boolean (true or false)")),
            },
            Ty::List => Value::List(
                text.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| Value::Str(s.to_string()))
                    .collect(),
            ),
            Ty::Table => return Err("a table cannot be given on the command line".into()),
        })
    }
}

/// What a `{{ ... }}` reference names.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Ref {
    /// `params.NAME`.
    Param(String),
    /// `steps.STEP.outputs.NAME`: the URI of one of a step's outputs.
    Output {
        /// The step.
        step: String,
        /// The output.
        name: String,
    },
    /// `steps.STEP.report.PATH...`: a value of a step's JSON report (SageMaker's `JsonGet`), or
    /// the whole report (`steps.STEP.report`).
    Report {
        /// The step.
        step: String,
        /// The path into the report.
        path: Vec<String>,
    },
}

impl Ref {
    /// Parses the text between the braces.
    pub fn parse(text: &str) -> Result<Ref, String> {
        let parts: Vec<&str> = text.trim().split('.').map(str::trim).collect();
        if parts.iter().any(|p| p.is_empty()) {
            return Err(format!("`{{{{ {} }}}}` has an empty name", text.trim()));
        }
        match parts.as_slice() {
            ["params", name] => Ok(Ref::Param(name.to_string())),
            ["steps", step, "outputs", name] => Ok(Ref::Output {
                step: step.to_string(),
                name: name.to_string(),
            }),
            ["steps", step, "report", path @ ..] => Ok(Ref::Report {
                step: step.to_string(),
                path: path.iter().map(|s| s.to_string()).collect(),
            }),
            _ => Err(format!(
                "`{{{{ {} }}}}` is not a reference; write {{{{ params.NAME }}}}, {{{{ steps.STEP.outputs.NAME }}}} or {{{{ steps.STEP.report.KEY }}}}",
                text.trim()
            )),
        }
    }

    /// The step it names, if any.
    pub fn step(&self) -> Option<&str> {
        match self {
            Ref::Param(_) => None,
            Ref::Output { step, .. } | Ref::Report { step, .. } => Some(step),
        }
    }
}

impl fmt::Display for Ref {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ref::Param(name) => write!(f, "params.{name}"),
            Ref::Output { step, name } => write!(f, "steps.{step}.outputs.{name}"),
            Ref::Report { step, path } if path.is_empty() => write!(f, "steps.{step}.report"),
            Ref::Report { step, path } => write!(f, "steps.{step}.report.{}", path.join(".")),
        }
    }
}

/// A setting as written: a literal, one reference (which keeps the type of what it names), or a
/// string with references inside.
#[derive(Debug, Clone, PartialEq)]
pub enum Template {
    /// A value with no reference.
    Literal(Value),
    /// The whole value is one reference.
    Ref(Ref),
    /// Text and references, joined as a string.
    Text(Vec<Piece>),
    /// A list of templates.
    List(Vec<Template>),
    /// A table of templates.
    Table(BTreeMap<String, Template>),
}

/// A part of a [`Template::Text`].
#[derive(Debug, Clone, PartialEq)]
pub enum Piece {
    /// Literal text.
    Text(String),
    /// A reference, written as text.
    Ref(Ref),
}

impl Template {
    /// Parses the references in a string.
    pub fn parse_str(text: &str) -> Result<Template, String> {
        let mut pieces = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find("{{") {
            let after = &rest[open + 2..];
            let close = after
                .find("}}")
                .ok_or_else(|| format!("{text:?} opens `{{{{` without closing it with `}}}}`"))?;
            if open > 0 {
                pieces.push(Piece::Text(rest[..open].to_string()));
            }
            pieces.push(Piece::Ref(Ref::parse(&after[..close])?));
            rest = &after[close + 2..];
        }
        if rest.contains("}}") {
            return Err(format!("{text:?} closes `}}}}` that was never opened"));
        }
        if !rest.is_empty() {
            pieces.push(Piece::Text(rest.to_string()));
        }
        Ok(match pieces.as_slice() {
            [] => Template::Literal(Value::Str(String::new())),
            [Piece::Text(t)] => Template::Literal(Value::Str(t.clone())),
            [Piece::Ref(r)] => Template::Ref(r.clone()),
            _ => Template::Text(pieces),
        })
    }

    /// Every reference inside.
    pub fn refs(&self) -> Vec<&Ref> {
        match self {
            Template::Literal(_) => Vec::new(),
            Template::Ref(r) => vec![r],
            Template::Text(pieces) => pieces
                .iter()
                .filter_map(|p| match p {
                    Piece::Ref(r) => Some(r),
                    Piece::Text(_) => None,
                })
                .collect(),
            Template::List(items) => items.iter().flat_map(Template::refs).collect(),
            Template::Table(map) => map.values().flat_map(Template::refs).collect(),
        }
    }

    /// The value, with each reference replaced by what `lookup` gives.
    pub fn resolve(&self, lookup: &dyn Fn(&Ref) -> Result<Value, String>) -> Result<Value, String> {
        Ok(match self {
            Template::Literal(v) => v.clone(),
            Template::Ref(r) => lookup(r)?,
            Template::Text(pieces) => {
                let mut out = String::new();
                for piece in pieces {
                    match piece {
                        Piece::Text(t) => out.push_str(t),
                        Piece::Ref(r) => out.push_str(&lookup(r)?.to_string()),
                    }
                }
                Value::Str(out)
            }
            Template::List(items) => Value::List(
                items
                    .iter()
                    .map(|t| t.resolve(lookup))
                    .collect::<Result<_, _>>()?,
            ),
            Template::Table(map) => Value::Table(
                map.iter()
                    .map(|(k, t)| Ok((k.clone(), t.resolve(lookup)?)))
                    .collect::<Result<_, String>>()?,
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_parse_inside_strings() {
        assert_eq!(
            Template::parse_str("{{ params.epochs }}").expect("ok"),
            Template::Ref(Ref::Param("epochs".into()))
        );
        let t = Template::parse_str("{{params.dir}}/data").expect("ok");
        assert_eq!(
            t,
            Template::Text(vec![
                Piece::Ref(Ref::Param("dir".into())),
                Piece::Text("/data".into())
            ])
        );
        assert_eq!(
            Ref::parse("steps.evaluate.report.classes.0").expect("ok"),
            Ref::Report {
                step: "evaluate".into(),
                path: vec!["classes".into(), "0".into()]
            }
        );
        assert!(Template::parse_str("{{ params.x").is_err());
        assert!(Template::parse_str("{{ nothing }}").is_err());
        assert!(Template::parse_str("a }} b").is_err());
        let v = t
            .resolve(&|_| Ok(Value::Str("/tmp/q".into())))
            .expect("resolves");
        assert_eq!(v, Value::Str("/tmp/q/data".into()));
    }

    #[test]
    fn coercion_keeps_meaning() {
        assert_eq!(Value::Int(3).coerce(Ty::Float), Some(Value::Float(3.0)));
        assert_eq!(Value::Float(2.5).coerce(Ty::Int), None);
        assert_eq!(Value::Str("x".into()).coerce(Ty::Int), None);
        assert_eq!(Value::Int(7).coerce(Ty::Str), Some(Value::Str("7".into())));
        assert_eq!(
            Ty::Bool.parse_text("yes").unwrap_err(),
            "\"yes\" is not a boolean (true or false)"
        );
        // Floats from users are finite: a NaN or infinite learning rate is refused at the flag.
        for text in ["nan", "inf", "-infinity", "1e999"] {
            let e = Ty::Float.parse_text(text).unwrap_err();
            assert!(e.contains("not a finite float"), "{text}: {e}");
        }
        assert_eq!(Ty::Float.parse_text(" 0.5 "), Ok(Value::Float(0.5)));
    }
}
