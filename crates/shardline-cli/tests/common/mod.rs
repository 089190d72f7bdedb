//! Running the real `shardline` binary in a temporary directory, as a user would.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A temporary working directory and the environment the binary runs with.
pub struct TestDir {
    pub dir: tempfile::TempDir,
    pub env: Vec<(&'static str, String)>,
}

/// The result of one run.
pub struct Run {
    pub output: Output,
}

impl Run {
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }
    /// Asserts success and returns stdout.
    pub fn ok(self) -> String {
        assert!(
            self.output.status.success(),
            "expected success\nstdout:\n{}\nstderr:\n{}",
            self.stdout(),
            self.stderr()
        );
        self.stdout()
    }
    /// Asserts failure and returns stderr.
    pub fn fails(self) -> String {
        assert!(
            !self.output.status.success(),
            "expected failure\nstdout:\n{}\nstderr:\n{}",
            self.stdout(),
            self.stderr()
        );
        self.stderr()
    }
}

impl TestDir {
    pub fn new() -> TestDir {
        TestDir {
            dir: tempfile::tempdir().expect("tempdir"),
            env: Vec::new(),
        }
    }

    pub fn path(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative)
    }

    /// The path of `relative` as a string argument.
    pub fn arg(&self, relative: &str) -> String {
        self.path(relative).to_str().expect("utf-8").to_string()
    }

    pub fn run(&self, args: &[&str]) -> Run {
        self.run_program(env!("CARGO_BIN_EXE_shardline"), args)
    }

    /// Runs `program` (a binary of this package) in the directory.
    pub fn run_program(&self, program: &str, args: &[&str]) -> Run {
        let output = Command::new(program)
            .args(args)
            .current_dir(self.dir.path())
            .env_remove("AWS_ENDPOINT_URL")
            .envs(self.env.iter().map(|(k, v)| (*k, v.as_str())))
            .output()
            .unwrap_or_else(|e| panic!("run {program}: {e}"));
        Run { output }
    }

    /// Shapes at `data` (`classes` x `per_class`, 16 pixels) and their manifests at `m` (train
    /// 0.5, validation 0.25, test 0.25).
    pub fn manifests(&self, classes: usize, per_class: usize) {
        self.shapes("data", classes, per_class);
        self.run(&[
            "manifest",
            "--source",
            "data",
            "--out",
            "m",
            "--split",
            "train=0.5,validation=0.25,test=0.25",
        ])
        .ok();
    }

    /// The `--input` flags of the three channel manifests at `m`.
    pub fn inputs(&self) -> Vec<String> {
        ["train", "validation", "test"]
            .iter()
            .flat_map(|c| {
                [
                    "--input".to_string(),
                    format!("{c}={}/{c}.manifest", self.arg("m")),
                ]
            })
            .collect()
    }

    /// `shardline process` of the manifests at `m`, with `extra` flags (`--out` among them).
    pub fn process(&self, extra: &[&str]) -> Run {
        let mut args = vec!["process".to_string()];
        args.extend(self.inputs());
        args.extend(extra.iter().map(|a| a.to_string()));
        self.run(&args.iter().map(String::as_str).collect::<Vec<_>>())
    }

    /// [`TestDir::manifests`], then processed shards at `p` with `extra` process flags.
    pub fn processed(&self, classes: usize, per_class: usize, extra: &[&str]) {
        self.manifests(classes, per_class);
        let mut flags = vec!["--out", "p"];
        flags.extend_from_slice(extra);
        self.process(&flags).ok();
    }

    /// The samples a channel's `index.json` lists.
    pub fn samples(&self, index: &str) -> u64 {
        json_file(self.path(index))["shardlist"]
            .as_array()
            .expect("shardlist")
            .iter()
            .map(|s| s["nsamples"].as_u64().expect("nsamples"))
            .sum()
    }

    /// `shardline train` for one epoch (one worker, batches of 8) of the shards at `data`.
    pub fn train_one_epoch(&self, data: &str, out: &str) {
        self.run(&[
            "train",
            "--data",
            data,
            "--out",
            out,
            "--workers",
            "1",
            "--epochs",
            "1",
            "--batch",
            "8",
        ])
        .ok();
    }

    /// Generates a small shapes dataset at `relative`.
    pub fn shapes(&self, out: &str, classes: usize, per_class: usize) {
        self.run(&[
            "datagen",
            "shapes",
            "--out",
            out,
            "--classes",
            &classes.to_string(),
            "--per-class",
            &per_class.to_string(),
            "--size",
            "16",
        ])
        .ok();
    }
}

/// A JSON file, parsed.
pub fn json_file(path: PathBuf) -> serde_json::Value {
    serde_json::from_slice(
        &std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    )
    .expect("json")
}

/// Every file below `dir`, relative, sorted.
pub fn files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                out.push(
                    path.strip_prefix(root)
                        .expect("below")
                        .to_string_lossy()
                        .into_owned(),
                );
            }
        }
    }
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// Parses a SageMaker manifest into (prefix, keys).
pub fn manifest(path: &Path) -> (String, Vec<String>) {
    let value: serde_json::Value =
        serde_json::from_slice(&std::fs::read(path).expect("read manifest")).expect("json");
    let items = value.as_array().expect("array");
    let prefix = items[0]["prefix"].as_str().expect("prefix").to_string();
    let keys = items[1..]
        .iter()
        .map(|v| v.as_str().expect("key").to_string())
        .collect();
    (prefix, keys)
}
