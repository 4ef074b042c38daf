//! The service in process on port 0, with a stand-in explainer that the test controls: it
//! reports every batch it is handed and holds it until the test releases it. Tests of
//! queueing, cancellation, timeouts and shutdown wait for these reports and for the
//! server's own counters, never for time to pass.

use std::future::Future;
use std::pin::Pin;
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gradcam_serve::cam::{CamAsk, CamMaps, Method};
use gradcam_serve::config::Config;
use gradcam_serve::engine::{Backend, Explainer, ModelDescription};
use gradcam_serve::faithfulness::Score;
use gradcam_serve::gradcam::{Ask, GradCamError, GradCamMap, PassTimings};
use gradcam_serve::http::AppState;
use gradcam_serve::labels::Labels;
use gradcam_serve::model::resnet::Architecture;
use gradcam_serve::preprocess::{ModelInput, MEAN, STD};
use gradcam_serve::server::Application;

/// A target class that makes the held explainer panic (to test that a worker survives).
pub const PANIC_TARGET: usize = 6;
pub const CLASSES: usize = 10;

/// Long enough for any machine; a test that waits this long has failed.
const PATIENCE: Duration = Duration::from_secs(60);

pub struct HeldExplainer {
    batches: Sender<Vec<Ask>>,
    cams: Sender<CamEvent>,
    release: Arc<Mutex<Receiver<()>>>,
}

/// What the held explainer did with a job of another CAM method (one that does not batch).
#[derive(Debug, Clone, PartialEq)]
pub enum CamEvent {
    /// It was handed the job.
    Started(Method),
    /// It saw between two of its "chunks" that nobody waits for the answer, and stopped.
    Abandoned(Method),
}

impl Explainer for HeldExplainer {
    fn gradcam_batch(
        &self,
        inputs: &[&ModelInput],
        asks: &[Ask],
    ) -> Result<(Vec<GradCamMap>, PassTimings), GradCamError> {
        let _ = self.batches.send(asks.to_vec());
        // Held until the test releases it (or drops its side: then it runs through).
        let _ = self.release.lock().unwrap().recv();
        if asks.iter().any(|a| a.target == Some(PANIC_TARGET)) {
            panic!("the held explainer was asked to panic");
        }
        Ok((made_up(inputs, asks), PassTimings::default()))
    }

    /// Works in "chunks" as AblationCAM and ScoreCAM do, asking `abandoned` between them,
    /// until the test releases it.
    fn cam(
        &self,
        input: &ModelInput,
        ask: &CamAsk,
        abandoned: &dyn Fn() -> bool,
    ) -> Result<(CamMaps, PassTimings), GradCamError> {
        let _ = self.cams.send(CamEvent::Started(ask.method));
        loop {
            if abandoned() {
                let _ = self.cams.send(CamEvent::Abandoned(ask.method));
                return Err(GradCamError::Abandoned);
            }
            match self
                .release
                .lock()
                .unwrap()
                .recv_timeout(Duration::from_millis(1))
            {
                Ok(()) | Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {}
            }
        }
        let plain = Ask {
            target: None,
            layer: ask.layers[0].clone(),
        };
        let mut answer = CamMaps::from(made_up(&[input], &[plain]).remove(0));
        answer.method = ask.method;
        Ok((answer, PassTimings::default()))
    }
}

/// Answers that depend on the input and the ask, nothing more.
fn made_up(inputs: &[&ModelInput], asks: &[Ask]) -> Vec<GradCamMap> {
    inputs
        .iter()
        .zip(asks)
        .map(|(input, ask)| {
            let mean = input.chw.iter().sum::<f32>() / input.chw.len() as f32;
            let mut probabilities: Vec<f32> =
                (0..CLASSES).map(|c| 1.0 + c as f32 * mean.abs()).collect();
            let total: f32 = probabilities.iter().sum();
            probabilities.iter_mut().for_each(|p| *p /= total);
            let top = gradcam_serve::gradcam::top_k(&probabilities, 1)[0].0;
            GradCamMap {
                probabilities,
                target: ask.target.unwrap_or(top),
                layer: ask.layer.clone(),
                cam: (0..49).map(|i| i as f32 * mean.abs()).collect(),
                width: 7,
                height: 7,
            }
        })
        .collect()
}

/// The test's side: what the explainer was handed, and the lever that lets it go on.
pub struct Gate {
    batches: Receiver<Vec<Ask>>,
    cams: Receiver<CamEvent>,
    release: Sender<()>,
}

impl Gate {
    /// Waits until the explainer is handed its next batch, and returns its asks.
    pub fn next_batch(&self) -> Vec<Ask> {
        self.batches
            .recv_timeout(PATIENCE)
            .expect("the explainer was handed a batch")
    }

    /// Waits for what the explainer does next with a job of another CAM method.
    pub fn next_cam_event(&self) -> CamEvent {
        self.cams
            .recv_timeout(PATIENCE)
            .expect("the explainer reported on a CAM job")
    }

    /// Lets one held batch finish.
    pub fn release(&self) {
        self.release.send(()).expect("the explainer is there");
    }

    /// No batch is handed over while the server is left alone: checks that what was
    /// already handed is all (used after the server's counters say the queue is empty).
    pub fn no_more_batches(&self) {
        match self.batches.recv_timeout(Duration::ZERO) {
            Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => {}
            Ok(batch) => panic!("an unexpected batch: {batch:?}"),
        }
    }
}

pub fn held_explainer() -> (HeldExplainer, Gate) {
    let (batches_tx, batches) = channel();
    let (cams_tx, cams) = channel();
    let (release, release_rx) = channel();
    (
        HeldExplainer {
            batches: batches_tx,
            cams: cams_tx,
            release: Arc::new(Mutex::new(release_rx)),
        },
        Gate {
            batches,
            cams,
            release,
        },
    )
}

/// What a client learns of the held explainer's model: a 10-class resnet18.
pub fn description() -> ModelDescription {
    let architecture = Architecture::named("resnet18", CLASSES).unwrap();
    let labels = Labels::default_for(CLASSES);
    ModelDescription {
        architecture: "resnet18".into(),
        backend: Backend::Native,
        num_classes: CLASSES,
        labels: labels.names().to_vec(),
        labels_source: labels.source,
        layers: architecture
            .layers()
            .iter()
            .map(ToString::to_string)
            .collect(),
        default_layer: "layer4".into(),
        input_size: 64,
        mean: MEAN,
        std: STD,
        weights: "held-for-tests".into(),
        methods: Method::ALL.into_iter().map(|m| m.info(None)).collect(),
        scores: Score::ALL.map(Score::info).to_vec(),
    }
}

/// A running in-process server; stopped (gracefully) on drop.
pub struct App {
    pub url: String,
    pub state: Arc<AppState>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
}

impl App {
    /// The service with `config` (bind forced to 127.0.0.1:0) and one held explainer.
    pub fn start(mut config: Config) -> (App, Gate) {
        config.server.bind = "127.0.0.1:0".into();
        config.model.input_size = Some(64);
        config.explain.top_k = 3;
        let (explainer, gate) = held_explainer();
        let app = Application::build(config, vec![Box::new(explainer)], description()).unwrap();
        let url = format!("http://{}", app.address());
        let state = app.state().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let shutdown: Pin<Box<dyn Future<Output = ()> + Send>> = Box::pin(async move {
            let _ = stopped.await;
        });
        let thread = std::thread::spawn(move || {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap()
                .block_on(app.run_until(shutdown))
        });
        let app = App {
            url,
            state,
            stop: Some(stop),
            thread: Some(thread),
        };
        app.wait_for("the workers to be ready", |s| s.workers.is_ready());
        (app, gate)
    }

    /// Waits until `condition` holds of the server's state (its counters, its queue).
    pub fn wait_for(&self, what: &str, condition: impl Fn(&AppState) -> bool) {
        let deadline = Instant::now() + PATIENCE;
        while !condition(&self.state) {
            assert!(Instant::now() < deadline, "waited {PATIENCE:?} for {what}");
            std::thread::yield_now();
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Asks for a graceful shutdown and returns how the server's run ended.
    pub fn shut_down(mut self) -> anyhow::Result<()> {
        let _ = self.stop.take().unwrap().send(());
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for App {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        // The thread ends once the held explainer is let go (the gate is dropped first
        // in every test, or all its work was released).
    }
}
