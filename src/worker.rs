//! Model workers: dedicated threads that own a copy of the network each, fed by one
//! channel, behind a semaphore that bounds how many explanations are admitted at once.
//!
//! libtorch work never runs on the async runtime. A request is admitted only while a
//! permit is free (else the caller answers 503 at once), so the queue cannot grow without
//! bound. Each job carries a oneshot for its answer; a job whose caller has gone (client
//! disconnected, timed out) is dropped before it is computed. A worker takes whatever is
//! already queued, up to `max_batch`, into one pass through the network.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, watch, OwnedSemaphorePermit, Semaphore};

use crate::config::Config;
use crate::engine::{Engine, LoadError};
use crate::explanation::ModelInfo;
use crate::gradcam::RawExplanation;
use crate::preprocess::ModelInput;

/// One explanation's network result and where its time went.
pub struct JobOutput {
    pub raw: RawExplanation,
    pub queue_ms: f64,
    pub forward_ms: f64,
    pub backward_ms: f64,
    pub batch_size: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("the model failed on this input: {0}")]
    Model(String),
    #[error(
        "the model worker panicked on this input; the error was logged and the worker goes on"
    )]
    Panicked,
    #[error("the model workers have stopped")]
    Stopped,
}

struct Job {
    input: ModelInput,
    target: Option<usize>,
    enqueued: Instant,
    reply: oneshot::Sender<Result<JobOutput, WorkerError>>,
}

/// Counters the metrics endpoint reads.
#[derive(Default)]
pub struct WorkerStats {
    pub batches: AtomicU64,
    pub batched_images: AtomicU64,
    pub cancelled: AtomicU64,
    pub panics: AtomicU64,
}

pub struct Workers {
    sender: Option<crossbeam_channel::Sender<Job>>,
    permits: Arc<Semaphore>,
    capacity: usize,
    ready: watch::Receiver<bool>,
    threads: Vec<std::thread::JoinHandle<()>>,
    pub info: ModelInfo,
    pub stats: Arc<WorkerStats>,
}

/// Admission to the queue; dropping it frees the place.
pub struct Admission(#[allow(dead_code)] OwnedSemaphorePermit);

impl Workers {
    /// Loads the model once per worker (failing fast on bad weights), then warms each one
    /// up with a pass on a blank image; `ready()` turns true when all have.
    pub fn start(config: &Config) -> Result<Self, LoadError> {
        let workers = config.server.workers;
        let (sender, receiver) = crossbeam_channel::unbounded::<Job>();
        let (ready_tx, ready) = watch::channel(false);
        let ready_tx = Arc::new(ready_tx);
        let warmed = Arc::new(AtomicU64::new(0));
        let stats = Arc::new(WorkerStats::default());
        let mut threads = Vec::new();
        let mut info = None;
        for id in 0..workers {
            let engine = Engine::load(&config.model)?;
            info.get_or_insert_with(|| engine.info().clone());
            let receiver = receiver.clone();
            let (ready_tx, warmed, stats) = (ready_tx.clone(), warmed.clone(), stats.clone());
            let input_size = config.model.input_size;
            let max_batch = config.server.max_batch;
            let batch_wait = Duration::from_millis(config.server.batch_wait_ms);
            let handle = std::thread::Builder::new()
                .name(format!("model-worker-{id}"))
                .spawn(move || {
                    warm_up(&engine, input_size);
                    if warmed.fetch_add(1, Ordering::SeqCst) + 1 == workers as u64 {
                        let _ = ready_tx.send(true);
                    }
                    work(&engine, &receiver, max_batch, batch_wait, &stats);
                })
                .expect("spawning a model worker thread");
            threads.push(handle);
        }
        let capacity = config.server.queue_capacity;
        Ok(Self {
            sender: Some(sender),
            permits: Arc::new(Semaphore::new(capacity)),
            capacity,
            ready,
            threads,
            info: info.expect("at least one worker"),
            stats,
        })
    }

    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    /// Explanations admitted and not yet answered (queued or running).
    pub fn in_flight(&self) -> usize {
        self.capacity - self.permits.available_permits()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// A place in the queue, or None when it is full.
    pub fn try_admit(&self) -> Option<Admission> {
        self.permits.clone().try_acquire_owned().ok().map(Admission)
    }

    /// Queues one input and waits for its result. Dropping the returned future (the
    /// client went away) drops the job before a worker computes it.
    pub async fn explain(
        &self,
        _admission: &Admission,
        input: ModelInput,
        target: Option<usize>,
    ) -> Result<JobOutput, WorkerError> {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            input,
            target,
            enqueued: Instant::now(),
            reply,
        };
        let sender = self.sender.as_ref().ok_or(WorkerError::Stopped)?;
        sender.send(job).map_err(|_| WorkerError::Stopped)?;
        answer.await.map_err(|_| WorkerError::Stopped)?
    }

    /// Lets queued work finish, then stops the threads.
    pub fn shutdown(mut self) {
        self.sender = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn warm_up(engine: &Engine, size: u32) {
    let blank = ModelInput {
        chw: vec![0.0; (3 * size * size) as usize],
        size,
        region: crate::preprocess::Region {
            x: 0,
            y: 0,
            width: size,
            height: size,
        },
    };
    if let Err(e) = engine.run(&[&blank], &[None]) {
        tracing::error!("warm-up pass failed: {e}");
    }
}

fn work(
    engine: &Engine,
    receiver: &crossbeam_channel::Receiver<Job>,
    max_batch: usize,
    batch_wait: Duration,
    stats: &WorkerStats,
) {
    while let Ok(first) = receiver.recv() {
        let mut batch = vec![first];
        let deadline = Instant::now() + batch_wait;
        while batch.len() < max_batch {
            let next = if batch_wait.is_zero() {
                receiver.try_recv().ok()
            } else {
                receiver.recv_deadline(deadline).ok()
            };
            match next {
                Some(job) => batch.push(job),
                None => break,
            }
        }
        // Nobody waits for these any more: don't spend the model on them.
        let before = batch.len();
        batch.retain(|job| !job.reply.is_closed());
        stats
            .cancelled
            .fetch_add((before - batch.len()) as u64, Ordering::Relaxed);
        if batch.is_empty() {
            continue;
        }
        run_batch(engine, batch, stats);
    }
}

fn run_batch(engine: &Engine, batch: Vec<Job>, stats: &WorkerStats) {
    let started = Instant::now();
    let inputs: Vec<&ModelInput> = batch.iter().map(|j| &j.input).collect();
    let targets: Vec<Option<usize>> = batch.iter().map(|j| j.target).collect();
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| engine.run(&inputs, &targets)));
    let size = batch.len();
    stats.batches.fetch_add(1, Ordering::Relaxed);
    stats
        .batched_images
        .fetch_add(size as u64, Ordering::Relaxed);
    match outcome {
        Ok(Ok((raws, timings))) => {
            for (job, raw) in batch.into_iter().zip(raws) {
                let _ = job.reply.send(Ok(JobOutput {
                    raw,
                    queue_ms: (started - job.enqueued).as_secs_f64() * 1e3,
                    forward_ms: timings.forward_ms,
                    backward_ms: timings.backward_ms,
                    batch_size: size,
                }));
            }
        }
        Ok(Err(e)) => {
            tracing::error!("model error on a batch of {size}: {e}");
            for job in batch {
                let _ = job.reply.send(Err(WorkerError::Model(e.to_string())));
            }
        }
        Err(panic) => {
            stats.panics.fetch_add(1, Ordering::Relaxed);
            let what = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("unknown panic");
            tracing::error!("model worker panicked on a batch of {size}: {what}");
            for job in batch {
                let _ = job.reply.send(Err(WorkerError::Panicked));
            }
        }
    }
}
