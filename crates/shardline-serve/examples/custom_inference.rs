//! Custom inference: the built-in classifier's input and predict hooks, with an output hook of
//! our own that answers `text/plain` with the single most probable label and refuses
//! predictions below a confidence threshold.
//!
//! ```sh
//! cargo run --release -p shardline-serve --example custom_inference -- quickstart-out/model 8080
//! curl -X POST -H 'Content-Type: image/jpeg' --data-binary @cat.jpg localhost:8080/invocations
//! ```

use std::time::Duration;

use shardline_serve::{
    Answer, ClassifierOptions, ImageClassifier, Images, Inference, InferenceError, Loaded,
    ModelFiles, Probabilities, Reply, Request, Server, ServerConfig,
};

/// The built-in classifier, answering with one label as plain text.
struct TopLabel {
    inner: ImageClassifier,
    /// Below this probability the answer is "unsure".
    threshold: f32,
}

impl Inference for TopLabel {
    type Model = Loaded;
    type Input = Images;
    type Output = Probabilities;

    fn load(&self) -> Result<Loaded, String> {
        self.inner.load()
    }

    fn input(&self, request: Request<'_>) -> Result<Images, InferenceError> {
        self.inner.input(request)
    }

    fn predict(
        &self,
        model: &mut Loaded,
        inputs: Vec<Images>,
    ) -> Result<Vec<Probabilities>, InferenceError> {
        self.inner.predict(model, inputs)
    }

    fn output(&self, output: Probabilities, _answer: &Answer) -> Result<Reply, InferenceError> {
        let mut body = String::new();
        for row in &output {
            let best = self.inner.top_k(row, 1);
            match best.first() {
                Some((label, p)) if *p >= self.threshold => body.push_str(label),
                _ => body.push_str("unsure"),
            }
            body.push('\n');
        }
        Ok(Reply {
            content_type: "text/plain".into(),
            body: body.into_bytes(),
        })
    }
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(model), port) = (args.next(), args.next()) else {
        eprintln!("usage: custom_inference MODEL_DIR [PORT]");
        std::process::exit(2);
    };
    let port: u16 = port.and_then(|p| p.parse().ok()).unwrap_or(8080);
    let files = match ModelFiles::load(&model).await {
        Ok(files) => files,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    };
    let handler = TopLabel {
        inner: ImageClassifier::new(files, ClassifierOptions::default()),
        threshold: 0.5,
    };
    let config = ServerConfig {
        timeout: Duration::from_secs(10),
        ..ServerConfig::default()
    };
    let server = Server::start(handler, config).unwrap_or_else(|e| {
        eprintln!("error: {e}");
        std::process::exit(1)
    });
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap_or_else(|e| {
            eprintln!("error: port {port}: {e}");
            std::process::exit(1)
        });
    println!(
        "custom inference on http://{}",
        listener.local_addr().expect("address")
    );
    let stop = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    if let Err(e) = shardline_serve::serve(
        listener,
        shardline_serve::app(server),
        shardline_serve::ConnectionLimits::default(),
        stop,
    )
    .await
    {
        eprintln!("error: {e}");
    }
}
