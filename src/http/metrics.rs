//! Prometheus metrics, in the text exposition format, all prefixed `gradcam_`.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::Ordering;
use std::sync::Mutex;

use crate::explanation::Timing;
use crate::worker::Workers;

/// Upper bounds of the latency histogram buckets, in seconds.
const BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

#[derive(Default, Clone)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        for (i, bound) in BUCKETS.iter().enumerate() {
            if seconds <= *bound {
                self.counts[i] += 1;
            }
        }
        self.count += 1;
        self.sum += seconds;
    }
}

#[derive(Default)]
pub struct Metrics {
    /// (endpoint, status) -> count
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    stages: Mutex<BTreeMap<&'static str, Histogram>>,
}

impl Metrics {
    pub fn count_request(&self, endpoint: &str, status: u16) {
        let mut map = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        *map.entry((endpoint.to_string(), status)).or_default() += 1;
    }

    pub fn observe(&self, timing: &Timing) {
        let mut stages = self.stages.lock().unwrap_or_else(|e| e.into_inner());
        for (stage, ms) in timing.stages() {
            stages.entry(stage).or_default().observe(ms / 1e3);
        }
    }

    pub fn render(&self, workers: &Workers) -> String {
        let mut out = String::new();
        let w = &mut out;
        let _ = writeln!(
            w,
            "# HELP gradcam_requests_total HTTP requests by endpoint and status."
        );
        let _ = writeln!(w, "# TYPE gradcam_requests_total counter");
        for ((endpoint, status), n) in self
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let _ = writeln!(
                w,
                "gradcam_requests_total{{endpoint=\"{endpoint}\",status=\"{status}\"}} {n}"
            );
        }
        let _ = writeln!(
            w,
            "# HELP gradcam_stage_duration_seconds Time per explanation stage."
        );
        let _ = writeln!(w, "# TYPE gradcam_stage_duration_seconds histogram");
        for (stage, h) in self.stages.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            for (bound, count) in BUCKETS.iter().zip(h.counts) {
                let _ = writeln!(w, "gradcam_stage_duration_seconds_bucket{{stage=\"{stage}\",le=\"{bound}\"}} {count}");
            }
            let _ = writeln!(
                w,
                "gradcam_stage_duration_seconds_bucket{{stage=\"{stage}\",le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                w,
                "gradcam_stage_duration_seconds_sum{{stage=\"{stage}\"}} {}",
                h.sum
            );
            let _ = writeln!(
                w,
                "gradcam_stage_duration_seconds_count{{stage=\"{stage}\"}} {}",
                h.count
            );
        }
        let s = &workers.stats;
        let _ = writeln!(
            w,
            "# HELP gradcam_batch_size Images per batch through the network.\n# TYPE gradcam_batch_size histogram"
        );
        let sizes = s
            .batch_sizes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut cumulative = 0;
        for (i, n) in sizes.iter().enumerate() {
            cumulative += n;
            let _ = writeln!(
                w,
                "gradcam_batch_size_bucket{{le=\"{}\"}} {cumulative}",
                i + 1
            );
        }
        let _ = writeln!(w, "gradcam_batch_size_bucket{{le=\"+Inf\"}} {cumulative}");
        let _ = writeln!(
            w,
            "gradcam_batch_size_sum {}\ngradcam_batch_size_count {cumulative}",
            s.batched_images.load(Ordering::SeqCst)
        );
        let gauges = [
            (
                "gradcam_queue_depth",
                "Explanations admitted and not yet answered (decoding, waiting for a worker, \
                 running or rendering); past queue_capacity requests get 503.",
                "gauge",
                workers.in_flight() as u64,
            ),
            (
                "gradcam_jobs_waiting",
                "Decoded images waiting for a model worker.",
                "gauge",
                s.waiting.load(Ordering::SeqCst) as u64,
            ),
            (
                "gradcam_jobs_running",
                "Images in a batch a model worker is computing.",
                "gauge",
                s.running.load(Ordering::SeqCst) as u64,
            ),
            (
                "gradcam_queue_capacity",
                "Most explanations admitted at once.",
                "gauge",
                workers.capacity() as u64,
            ),
            (
                "gradcam_batches_total",
                "Passes through the network.",
                "counter",
                s.batches.load(Ordering::SeqCst),
            ),
            (
                "gradcam_batched_images_total",
                "Images put through the network.",
                "counter",
                s.batched_images.load(Ordering::SeqCst),
            ),
            (
                "gradcam_jobs_cancelled_total",
                "Queued jobs dropped because their client left.",
                "counter",
                s.cancelled.load(Ordering::SeqCst),
            ),
            (
                "gradcam_worker_panics_total",
                "Panics caught in model workers.",
                "counter",
                s.panics.load(Ordering::SeqCst),
            ),
            (
                "gradcam_ready",
                "1 once the model is loaded and warmed up.",
                "gauge",
                workers.is_ready() as u64,
            ),
        ];
        for (name, help, kind, value) in gauges {
            let _ = writeln!(
                w,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
        let model = &workers.model;
        let _ = writeln!(
            w,
            "# HELP gradcam_model_info The loaded model.\n# TYPE gradcam_model_info gauge"
        );
        let _ = writeln!(
            w,
            "gradcam_model_info{{name=\"{}\",classes=\"{}\",weights=\"{}\"}} 1",
            model.architecture, model.num_classes, model.weights
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let mut h = Histogram::default();
        h.observe(0.003);
        h.observe(0.2);
        assert_eq!(h.counts[0], 0); // <= 1 ms
        assert_eq!(h.counts[2], 1); // <= 5 ms
        assert_eq!(h.counts[7], 2); // <= 250 ms
        assert_eq!(h.count, 2);
    }
}
