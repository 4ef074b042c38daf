//! Model workers: dedicated threads that own an [`Explainer`] each (a copy of the network,
//! or a test's stand-in), fed by one channel, behind a semaphore that bounds how many
//! explanations are admitted at once.
//!
//! libtorch work never runs on the async runtime. A request is admitted only while a
//! permit is free (else the caller answers 503 at once), so the queue cannot grow without
//! bound. Each job carries a oneshot for its answer; a job whose caller has gone (client
//! disconnected, timed out) is dropped before it is computed. A worker takes whatever is
//! already queued, up to `max_batch`, into one pass through the network, and waits up to
//! `batch_wait_ms` for more only while admitted requests are still on their way to the
//! queue (being decoded): with nobody else in flight, a lone request starts at once.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, watch, OwnedSemaphorePermit, Semaphore};

use crate::cam::CamAsk;
use crate::config::ServerConfig;
use crate::engine::{self, Explainer, ModelDescription};
use crate::faithfulness::{ScoreAsk, Scored};
use crate::gradcam::{Ask, GradCamError};
use crate::preprocess::ModelInput;

/// One explanation's network result (with its scores) and where its time went.
pub struct JobOutput {
    pub scored: Scored,
    pub queue_ms: f64,
    pub batch_size: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("the model failed on this input: {0}")]
    Model(String),
    /// The model (or this server) cannot do what the job asks: a request's fault, not the
    /// model's.
    #[error("{0}")]
    Unsupported(String),
    #[error(
        "the model worker panicked on this input; the error was logged and the worker goes on"
    )]
    Panicked,
    #[error("the model workers have stopped")]
    Stopped,
}

/// What a job asks of the network.
enum Work {
    /// Plain Grad-CAM: batched with the other such jobs at hand.
    Batched(Ask),
    /// Any other method, several targets or layers, scores: run alone, giving up between
    /// chunks when its caller has gone (see `cam::compute`).
    Alone(CamAsk, ScoreAsk),
}

struct Job {
    input: ModelInput,
    work: Work,
    enqueued: Instant,
    reply: oneshot::Sender<Result<JobOutput, WorkerError>>,
}

/// Counters and gauges the metrics endpoint reads.
#[derive(Default, Debug)]
pub struct WorkerStats {
    /// Requests admitted and not yet queued (being decoded): the ones a worker
    /// may wait for to fill a batch.
    pub arriving: AtomicUsize,
    /// Jobs sent to the workers and not yet taken into a batch.
    pub waiting: AtomicUsize,
    /// Jobs in a batch that a worker is computing.
    pub running: AtomicUsize,
    pub batches: AtomicU64,
    pub batched_images: AtomicU64,
    /// Batches by size: `batch_sizes[n - 1]` counts batches of n images.
    pub batch_sizes: Mutex<Vec<u64>>,
    pub cancelled: AtomicU64,
    pub panics: AtomicU64,
}

pub struct Workers {
    sender: Option<crossbeam_channel::Sender<Job>>,
    /// The queue's places, readiness and counters; the metrics hold a clone.
    gauges: WorkerGauges,
    threads: Vec<std::thread::JoinHandle<()>>,
    pub model: Arc<ModelDescription>,
    pub stats: Arc<WorkerStats>,
}

/// What [`Workers::gauges`] gives: the queue's state and the counters, without the workers.
#[derive(Debug, Clone)]
pub struct WorkerGauges {
    permits: Arc<Semaphore>,
    capacity: usize,
    ready: watch::Receiver<bool>,
    pub stats: Arc<WorkerStats>,
    pub model: Arc<ModelDescription>,
}

impl WorkerGauges {
    /// Explanations admitted and not yet answered: decoding, waiting, running or rendering.
    pub fn in_flight(&self) -> usize {
        self.capacity - self.permits.available_permits()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }
}

/// Admission to the queue; dropping it frees the place.
pub struct Admission {
    _permit: OwnedSemaphorePermit,
    stats: Arc<WorkerStats>,
    /// Counted in `stats.arriving` until its job is queued or it is dropped.
    arriving: AtomicBool,
}

impl Admission {
    fn new(permit: OwnedSemaphorePermit, stats: Arc<WorkerStats>) -> Self {
        stats.arriving.fetch_add(1, Ordering::SeqCst);
        Self {
            _permit: permit,
            stats,
            arriving: AtomicBool::new(true),
        }
    }

    /// Its job is in the queue (or will never be): no worker should wait for it any more.
    fn arrived(&self) {
        if self.arriving.swap(false, Ordering::SeqCst) {
            self.stats.arriving.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.arrived();
    }
}

impl Workers {
    /// Starts one thread per explainer (each warms its own up first); `ready()` turns true
    /// when all have. `model` describes what they run.
    pub fn start(
        explainers: Vec<Box<dyn Explainer>>,
        model: ModelDescription,
        server: &ServerConfig,
    ) -> Self {
        assert!(!explainers.is_empty(), "at least one worker");
        let workers = explainers.len();
        let (sender, receiver) = crossbeam_channel::unbounded::<Job>();
        let (ready_tx, ready) = watch::channel(false);
        let ready_tx = Arc::new(ready_tx);
        let warmed = Arc::new(AtomicUsize::new(0));
        let stats = Arc::new(WorkerStats {
            batch_sizes: Mutex::new(vec![0; server.max_batch]),
            ..WorkerStats::default()
        });
        let max_batch = server.max_batch;
        let batch_wait = Duration::from_millis(server.batch_wait_ms);
        let threads = explainers
            .into_iter()
            .enumerate()
            .map(|(id, explainer)| {
                let receiver = receiver.clone();
                let (ready_tx, warmed, stats) = (ready_tx.clone(), warmed.clone(), stats.clone());
                std::thread::Builder::new()
                    .name(format!("model-worker-{id}"))
                    .spawn(move || {
                        explainer.warm_up();
                        if warmed.fetch_add(1, Ordering::SeqCst) + 1 == workers {
                            let _ = ready_tx.send(true);
                        }
                        work(&*explainer, &receiver, max_batch, batch_wait, &stats);
                    })
                    .expect("spawning a model worker thread")
            })
            .collect();
        let capacity = server.queue_capacity;
        let model = Arc::new(model);
        Self {
            sender: Some(sender),
            gauges: WorkerGauges {
                permits: Arc::new(Semaphore::new(capacity)),
                capacity,
                ready,
                stats: stats.clone(),
                model: model.clone(),
            },
            threads,
            model,
            stats,
        }
    }

    pub fn is_ready(&self) -> bool {
        self.gauges.is_ready()
    }

    /// As [`WorkerGauges::in_flight`].
    pub fn in_flight(&self) -> usize {
        self.gauges.in_flight()
    }

    pub fn capacity(&self) -> usize {
        self.gauges.capacity
    }

    /// A view of the queue and the counters for the metrics, read at each scrape.
    pub fn gauges(&self) -> WorkerGauges {
        self.gauges.clone()
    }

    /// A place in the queue for a request that costs `passes` network passes (a scored
    /// one costs more: `ScoreAsk::passes`), or None when the queue has not that many
    /// places free. A request never takes more than the whole queue.
    pub fn try_admit(&self, passes: usize) -> Option<Admission> {
        let places = passes.clamp(1, self.gauges.capacity) as u32;
        let permit = self
            .gauges
            .permits
            .clone()
            .try_acquire_many_owned(places)
            .ok()?;
        Some(Admission::new(permit, self.stats.clone()))
    }

    /// Queues one input and waits for its result: plain Grad-CAM without scores is
    /// batched with the other such jobs at hand, anything else runs alone
    /// ([`CamAsk::batched`] decides). Dropping the returned future (the client went away)
    /// drops the job before a worker computes it, and stops a job that runs alone between
    /// its chunks (AblationCAM, ScoreCAM, the scores' batches).
    pub async fn submit(
        &self,
        admission: &Admission,
        input: ModelInput,
        ask: CamAsk,
        scores: ScoreAsk,
    ) -> Result<JobOutput, WorkerError> {
        let work = match ask.batched() {
            Some(one) if scores.scores.is_empty() => Work::Batched(one),
            _ => Work::Alone(ask, scores),
        };
        let (reply, answer) = oneshot::channel();
        let job = Job {
            input,
            work,
            enqueued: Instant::now(),
            reply,
        };
        let sender = self.sender.as_ref().ok_or(WorkerError::Stopped)?;
        self.stats.waiting.fetch_add(1, Ordering::SeqCst);
        admission.arrived();
        if sender.send(job).is_err() {
            self.stats.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(WorkerError::Stopped);
        }
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

fn work(
    explainer: &dyn Explainer,
    receiver: &crossbeam_channel::Receiver<Job>,
    max_batch: usize,
    batch_wait: Duration,
    stats: &WorkerStats,
) {
    while let Ok(first) = receiver.recv() {
        let mut batch = vec![first];
        let deadline = Instant::now() + batch_wait;
        while batch.len() < max_batch {
            // Wait only for requests already admitted and on their way: waiting for nobody
            // costs a lone request `batch_wait` for nothing.
            let next = match receiver.try_recv() {
                Ok(job) => Some(job),
                Err(_) if !batch_wait.is_zero() && stats.arriving.load(Ordering::SeqCst) > 0 => {
                    receiver.recv_deadline(deadline).ok()
                }
                Err(_) => None,
            };
            match next {
                Some(job) => batch.push(job),
                None => break,
            }
        }
        stats.waiting.fetch_sub(batch.len(), Ordering::SeqCst);
        // Nobody waits for these any more: don't spend the model on them.
        let before = batch.len();
        batch.retain(|job| !job.reply.is_closed());
        stats
            .cancelled
            .fetch_add((before - batch.len()) as u64, Ordering::SeqCst);
        if batch.is_empty() {
            continue;
        }
        let (batched, alone): (Vec<Job>, Vec<Job>) = batch
            .into_iter()
            .partition(|job| matches!(job.work, Work::Batched(_)));
        if !batched.is_empty() {
            stats.running.fetch_add(batched.len(), Ordering::SeqCst);
            run_batch(explainer, batched, stats);
        }
        for job in alone {
            stats.running.fetch_add(1, Ordering::SeqCst);
            run_alone(explainer, job, stats);
        }
    }
}

/// One job of a method that does not batch. Its caller may have gone while the batch
/// before it ran: then it is dropped, as queued jobs are.
fn run_alone(explainer: &dyn Explainer, job: Job, stats: &WorkerStats) {
    let Work::Alone(ask, scores) = &job.work else {
        unreachable!("only alone jobs")
    };
    if job.reply.is_closed() {
        stats.running.fetch_sub(1, Ordering::SeqCst);
        stats.cancelled.fetch_add(1, Ordering::SeqCst);
        return;
    }
    let started = Instant::now();
    let abandoned = || job.reply.is_closed();
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
        engine::run_network(explainer, &job.input, ask, scores, &abandoned)
    }));
    stats.running.fetch_sub(1, Ordering::SeqCst);
    stats.batches.fetch_add(1, Ordering::SeqCst);
    stats.batched_images.fetch_add(1, Ordering::SeqCst);
    if let Some(n) = stats
        .batch_sizes
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get_mut(0)
    {
        *n += 1;
    }
    let answer = match outcome {
        Ok(Ok(scored)) => Ok(JobOutput {
            scored,
            queue_ms: (started - job.enqueued).as_secs_f64() * 1e3,
            batch_size: 1,
        }),
        Ok(Err(GradCamError::Abandoned)) => {
            stats.cancelled.fetch_add(1, Ordering::SeqCst);
            return;
        }
        Ok(Err(e)) => Err(failure(e)),
        Err(panic) => {
            stats.panics.fetch_add(1, Ordering::SeqCst);
            tracing::error!("model worker panicked: {}", panic_text(&*panic));
            Err(WorkerError::Panicked)
        }
    };
    let _ = job.reply.send(answer);
}

/// What a job's error tells its caller: a refusal, or a failure (logged).
fn failure(e: GradCamError) -> WorkerError {
    match e {
        GradCamError::Unsupported(why) => WorkerError::Unsupported(why),
        e => {
            tracing::error!("model error: {e}");
            WorkerError::Model(e.to_string())
        }
    }
}

fn panic_text(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("unknown panic")
}

fn run_batch(explainer: &dyn Explainer, batch: Vec<Job>, stats: &WorkerStats) {
    let started = Instant::now();
    let inputs: Vec<&ModelInput> = batch.iter().map(|j| &j.input).collect();
    let asks: Vec<Ask> = batch
        .iter()
        .map(|j| match &j.work {
            Work::Batched(ask) => ask.clone(),
            Work::Alone(..) => unreachable!("only batched jobs"),
        })
        .collect();
    let outcome =
        std::panic::catch_unwind(AssertUnwindSafe(|| explainer.gradcam_batch(&inputs, &asks)));
    let size = batch.len();
    stats.running.fetch_sub(size, Ordering::SeqCst);
    stats.batches.fetch_add(1, Ordering::SeqCst);
    stats
        .batched_images
        .fetch_add(size as u64, Ordering::SeqCst);
    if let Some(n) = stats
        .batch_sizes
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get_mut(size - 1)
    {
        *n += 1;
    }
    match outcome {
        Ok(Ok((raws, _))) if raws.len() != size => {
            tracing::error!("the explainer answered {} of {size} inputs", raws.len());
            for job in batch {
                let _ = job.reply.send(Err(WorkerError::Model(
                    "the model answered another number of images than it was given".into(),
                )));
            }
        }
        Ok(Ok((raws, timings))) => {
            for (job, raw) in batch.into_iter().zip(raws) {
                let _ = job.reply.send(Ok(JobOutput {
                    scored: Scored::unscored(raw.into(), timings),
                    queue_ms: (started - job.enqueued).as_secs_f64() * 1e3,
                    batch_size: size,
                }));
            }
        }
        Ok(Err(e)) => {
            let text = e.to_string();
            let unsupported = matches!(e, GradCamError::Unsupported(_));
            if !unsupported {
                tracing::error!("model error on a batch of {size}: {text}");
            }
            for job in batch {
                let _ = job.reply.send(Err(if unsupported {
                    WorkerError::Unsupported(text.clone())
                } else {
                    WorkerError::Model(text.clone())
                }));
            }
        }
        Err(panic) => {
            stats.panics.fetch_add(1, Ordering::SeqCst);
            let what = panic_text(&*panic);
            tracing::error!("model worker panicked on a batch of {size}: {what}");
            for job in batch {
                let _ = job.reply.send(Err(WorkerError::Panicked));
            }
        }
    }
}
