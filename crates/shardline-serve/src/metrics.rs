//! Prometheus metrics of the endpoint, served at `/metrics` in the text exposition format:
//! requests and errors by route and status, request latency, batch sizes, queue time and depth.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// The labels of a finished request.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The route (`/invocations`, `/v2/models/{model}/infer`, ...; `unmatched` for no route).
    pub route: String,
    /// The HTTP status code.
    pub status: String,
}

/// The labels of a latency observation.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// The route.
    pub route: String,
}

fn latency_histogram() -> Histogram {
    // 0.1 ms to about 1.6 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 15))
}

/// Every metric of one server, and the registry that exposes them.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Requests answered, by route and status.
    pub requests: Family<RequestLabels, Counter>,
    /// Requests answered with a status of 400 or more, by route and status.
    pub errors: Family<RequestLabels, Counter>,
    /// Seconds from a request's arrival to its answer, by route.
    pub latency: Family<RouteLabels, Histogram, fn() -> Histogram>,
    /// Requests per model call.
    pub batch_size: Histogram,
    /// Seconds a request waited in the queue before its batch ran.
    pub queue_time: Histogram,
    /// Seconds one model call (`predict`) took.
    pub predict_time: Histogram,
    /// Requests waiting in the queue now.
    pub queue_depth: Gauge,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl Metrics {
    /// A fresh set of metrics in its own registry (no global state, so tests and several
    /// servers in one process do not mix).
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("shardline_serve");
        let requests = Family::<RequestLabels, Counter>::default();
        let errors = Family::<RequestLabels, Counter>::default();
        let latency = Family::<RouteLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram,
        );
        let batch_size = Histogram::new(exponential_buckets(1.0, 2.0, 10));
        let queue_time = latency_histogram();
        let predict_time = latency_histogram();
        let queue_depth = Gauge::default();
        registry.register(
            "requests",
            "Requests answered, by route and status",
            requests.clone(),
        );
        registry.register(
            "errors",
            "Requests answered with status 400 or more, by route and status",
            errors.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Seconds from a request's arrival to its answer",
            latency.clone(),
        );
        registry.register("batch_size", "Requests per model call", batch_size.clone());
        registry.register(
            "queue_seconds",
            "Seconds a request waited in the queue before its batch ran",
            queue_time.clone(),
        );
        registry.register(
            "predict_seconds",
            "Seconds one model call took",
            predict_time.clone(),
        );
        registry.register(
            "queue_depth",
            "Requests waiting in the queue",
            queue_depth.clone(),
        );
        Metrics {
            registry,
            requests,
            errors,
            latency,
            batch_size,
            queue_time,
            predict_time,
            queue_depth,
        }
    }

    /// Records one answered request.
    pub fn observe(&self, route: &str, status: u16, seconds: f64) {
        let labels = RequestLabels {
            route: route.to_string(),
            status: status.to_string(),
        };
        if status >= 400 {
            self.errors.get_or_create(&labels).inc();
        }
        self.requests.get_or_create(&labels).inc();
        self.latency
            .get_or_create(&RouteLabels {
                route: route.to_string(),
            })
            .observe(seconds);
    }

    /// The metrics in Prometheus' text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
