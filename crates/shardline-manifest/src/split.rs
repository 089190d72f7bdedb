//! Channels and the validated split of a dataset into them.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::Error;

/// A SageMaker data channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    /// Data the model is fitted on.
    Train,
    /// Data used to select the model during training.
    Validation,
    /// Data held out for the final evaluation.
    Test,
}

impl Channel {
    /// Every channel, in the order their hash intervals are laid out.
    pub const ALL: [Channel; 3] = [Channel::Train, Channel::Validation, Channel::Test];

    /// The channel's name as written in files and flags.
    pub fn name(self) -> &'static str {
        match self {
            Channel::Train => "train",
            Channel::Validation => "validation",
            Channel::Test => "test",
        }
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Channel {
    type Err = Error;

    fn from_str(name: &str) -> Result<Channel, Error> {
        Channel::ALL
            .into_iter()
            .find(|c| c.name() == name)
            .ok_or_else(|| {
                Error::BadSplit(format!(
                    "unknown channel {name:?}; the channels are train, validation and test"
                ))
            })
    }
}

/// A validated split: one or more distinct channels, in canonical order, with fractions in
/// (0, 1] that sum to 1.
#[derive(Debug, Clone, PartialEq)]
pub struct Split {
    parts: Vec<(Channel, f64)>,
}

impl Split {
    /// Builds a split from channel fractions, checking every rule.
    pub fn new(parts: Vec<(Channel, f64)>) -> Result<Split, Error> {
        if parts.is_empty() {
            return Err(Error::BadSplit("the split names no channel".into()));
        }
        let mut parts = parts;
        parts.sort_by_key(|(c, _)| *c);
        for pair in parts.windows(2) {
            if pair[0].0 == pair[1].0 {
                return Err(Error::BadSplit(format!(
                    "channel {} is given twice",
                    pair[0].0
                )));
            }
        }
        for (channel, fraction) in &parts {
            if !(fraction.is_finite() && *fraction > 0.0 && *fraction <= 1.0) {
                return Err(Error::BadSplit(format!(
                    "channel {channel} has fraction {fraction}; each fraction must be above 0 and at most 1"
                )));
            }
        }
        let sum: f64 = parts.iter().map(|(_, f)| f).sum();
        if (sum - 1.0).abs() > 1e-6 {
            return Err(Error::BadSplit(format!(
                "the fractions sum to {sum}, not 1; for example train=0.8,validation=0.1,test=0.1"
            )));
        }
        Ok(Split { parts })
    }

    /// The channels and their fractions, in canonical order.
    pub fn parts(&self) -> &[(Channel, f64)] {
        &self.parts
    }

    /// The channels, in canonical order.
    pub fn channels(&self) -> impl Iterator<Item = Channel> + '_ {
        self.parts.iter().map(|(c, _)| *c)
    }

    /// The position of a channel in this split, if it is part of it.
    pub fn index_of(&self, channel: Channel) -> Option<usize> {
        self.parts.iter().position(|(c, _)| *c == channel)
    }
}

impl Default for Split {
    fn default() -> Split {
        Split {
            parts: vec![
                (Channel::Train, 0.8),
                (Channel::Validation, 0.1),
                (Channel::Test, 0.1),
            ],
        }
    }
}

impl FromStr for Split {
    type Err = Error;

    /// Parses `train=0.8,validation=0.1,test=0.1`.
    fn from_str(text: &str) -> Result<Split, Error> {
        let mut parts = Vec::new();
        for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (name, value) = item.split_once('=').ok_or_else(|| {
                Error::BadSplit(format!("{item:?} is not CHANNEL=FRACTION, e.g. train=0.8"))
            })?;
            let channel: Channel = name.trim().parse()?;
            let fraction: f64 = value.trim().parse().map_err(|_| {
                Error::BadSplit(format!("{value:?} (for {channel}) is not a number"))
            })?;
            parts.push((channel, fraction));
        }
        Split::new(parts)
    }
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text: Vec<String> = self.parts.iter().map(|(c, x)| format!("{c}={x}")).collect();
        f.write_str(&text.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_err(text: &str, needle: &str) {
        let err = text.parse::<Split>().expect_err(text).to_string();
        assert!(err.contains(needle), "{text}: {err}");
    }

    #[test]
    fn parses_and_orders_channels() {
        let split: Split = "test=0.1, train=0.8,validation=0.1".parse().expect("valid");
        assert_eq!(split.to_string(), "train=0.8,validation=0.1,test=0.1");
        assert_eq!(split, Split::default());
        let two: Split = "train=0.9,test=0.1".parse().expect("valid");
        assert_eq!(two.index_of(Channel::Test), Some(1));
        assert_eq!(two.index_of(Channel::Validation), None);
    }

    #[test]
    fn rejects_bad_splits() {
        check_err("train=0.8,valid=0.2", "unknown channel \"valid\"");
        check_err("train=0.8,test=0.1", "sum to");
        check_err("train=0.5,train=0.5", "given twice");
        check_err("train=1.2,test=-0.2", "above 0");
        check_err("train", "CHANNEL=FRACTION");
        check_err("train=x", "not a number");
        check_err("", "no channel");
    }
}
