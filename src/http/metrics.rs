//! Prometheus metrics, all prefixed `gradcam_`, through the Prometheus project's own client
//! (`prometheus-client`) in the text exposition format 0.0.4. One registry per server, so
//! that servers in one process (the tests') count apart.

use std::sync::atomic::Ordering;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::explanation::Timing;
use crate::worker::WorkerGauges;

/// Upper bounds of the latency histogram buckets, in seconds.
const BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    endpoint: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabels {
    stage: &'static str,
}

#[derive(Clone)]
struct StageBuckets;

impl MetricConstructor<Histogram> for StageBuckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new(BUCKETS)
    }
}

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    stages: Family<StageLabels, Histogram, StageBuckets>,
}

impl Metrics {
    /// The registry of one server: its requests and stages, its workers' queue and
    /// counters (read at each scrape), its model.
    pub fn new(workers: WorkerGauges) -> Self {
        let mut registry = Registry::with_prefix("gradcam");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "HTTP requests by endpoint and status",
            requests.clone(),
        );
        let stages = Family::new_with_constructor(StageBuckets);
        registry.register(
            "stage_duration_seconds",
            "Time per explanation stage",
            stages.clone(),
        );
        let model = &workers.model;
        registry.register(
            "model",
            "The loaded model",
            Info::new(vec![
                ("name", model.architecture.clone()),
                ("classes", model.num_classes.to_string()),
                ("weights", model.weights.clone()),
            ]),
        );
        registry.register_collector(Box::new(WorkerCollector(workers)));
        Metrics {
            registry,
            requests,
            stages,
        }
    }

    pub fn count_request(&self, endpoint: &str, status: u16) {
        self.requests
            .get_or_create(&RequestLabels {
                endpoint: endpoint.to_string(),
                status,
            })
            .inc();
    }

    pub fn observe(&self, timing: &Timing) {
        for (stage, ms) in timing.stages() {
            self.stages
                .get_or_create(&StageLabels { stage })
                .observe(ms / 1e3);
        }
    }

    /// The text exposition (0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
            .expect("writing to a String does not fail");
        out
    }
}

/// The workers' gauges and counters, read when scraped.
#[derive(Debug)]
struct WorkerCollector(WorkerGauges);

impl Collector for WorkerCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let w = &self.0;
        let s = &w.stats;
        let sizes = s
            .batch_sizes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        // Batches of n images count in the bucket `le = n`.
        let buckets: Vec<(f64, u64)> = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| ((i + 1) as f64, n))
            .collect();
        let batches: u64 = sizes.iter().sum();
        // Help texts end in a full stop, as the registry's own metrics get one.
        let mut histogram = encoder.encode_descriptor(
            "batch_size",
            "Images per batch through the network.",
            None,
            MetricType::Histogram,
        )?;
        histogram.encode_histogram::<NoLabelSet>(
            s.batched_images.load(Ordering::SeqCst) as f64,
            batches,
            &buckets,
            None,
        )?;

        let gauges = [
            (
                "queue_depth",
                "Explanations admitted and not yet answered (decoding, waiting for a worker, \
                 running or rendering); past queue_capacity requests get 503.",
                w.in_flight() as i64,
            ),
            (
                "jobs_waiting",
                "Decoded images waiting for a model worker.",
                s.waiting.load(Ordering::SeqCst) as i64,
            ),
            (
                "jobs_running",
                "Images in a batch a model worker is computing.",
                s.running.load(Ordering::SeqCst) as i64,
            ),
            (
                "queue_capacity",
                "Most explanations admitted at once.",
                w.capacity() as i64,
            ),
            (
                "ready",
                "1 once the model is loaded and warmed up.",
                w.is_ready() as i64,
            ),
        ];
        for (name, help, value) in gauges {
            let gauge = ConstGauge::new(value);
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        let counters = [
            (
                "batches",
                "Passes through the network.",
                s.batches.load(Ordering::SeqCst),
            ),
            (
                "batched_images",
                "Images put through the network.",
                s.batched_images.load(Ordering::SeqCst),
            ),
            (
                "jobs_cancelled",
                "Queued jobs dropped because their client left.",
                s.cancelled.load(Ordering::SeqCst),
            ),
            (
                "worker_panics",
                "Panics caught in model workers.",
                s.panics.load(Ordering::SeqCst),
            ),
        ];
        for (name, help, value) in counters {
            let counter = ConstCounter::new(value);
            counter.encode(encoder.encode_descriptor(
                name,
                help,
                None,
                counter.metric_type(),
            )?)?;
        }
        Ok(())
    }
}
