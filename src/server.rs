//! Start-up and shutdown of the HTTP service: logging, the model workers, the listener,
//! graceful shutdown on SIGINT/SIGTERM.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::config::Config;
use crate::engine::{Engine, Explainer, ModelDescription};
use crate::http::{self, metrics::Metrics, AppState};
use crate::options::Defaults;
use crate::worker::Workers;

/// The service, built and listening, not yet serving: tests build one in process on port
/// 0 with any explainer, `run` builds one with the real engine.
pub struct Application {
    listener: std::net::TcpListener,
    state: Arc<AppState>,
}

impl Application {
    /// Starts the workers (one per explainer, each running the model `model` describes)
    /// and binds `config.server.bind`.
    pub fn build(
        config: Config,
        explainers: Vec<Box<dyn Explainer>>,
        model: ModelDescription,
    ) -> anyhow::Result<Self> {
        if config.explain.top_k > model.num_classes {
            tracing::warn!(
                "explain.top_k = {} but the model has {} classes: answers list all {}",
                config.explain.top_k,
                model.num_classes,
                model.num_classes
            );
        }
        let bind = config.server.bind.clone();
        let listener = std::net::TcpListener::bind(&bind)
            .with_context(|| format!("cannot listen on {bind}"))?;
        listener.set_nonblocking(true)?;
        let workers = Workers::start(explainers, model, &config.server);
        let state = Arc::new(AppState {
            defaults: Defaults::from_config(&config),
            config,
            metrics: Metrics::new(workers.gauges()),
            workers,
        });
        Ok(Self { listener, state })
    }

    /// Where it listens (the real port when bound to port 0).
    pub fn address(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener")
    }

    pub fn state(&self) -> &Arc<AppState> {
        &self.state
    }

    /// Serves until `shutdown` completes, then answers the requests in flight, stops the
    /// workers after their queued work, and returns.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let listener = TcpListener::from_std(self.listener)?;
        let app = http::router(self.state.clone());
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await?;
        // In-flight requests are answered; let the workers drain and stop, off the async
        // threads (joining them blocks).
        let state = self.state;
        tokio::task::spawn_blocking(move || match Arc::try_unwrap(state) {
            Ok(state) => state.workers.shutdown(),
            Err(_) => tracing::warn!("state still shared at exit; workers stop with the process"),
        })
        .await?;
        Ok(())
    }
}

pub fn run(config: Config) -> anyhow::Result<()> {
    limit_malloc_arenas();
    let telemetry = crate::telemetry::init();
    if telemetry.exporting() {
        tracing::info!("exporting traces over OTLP (OTEL_EXPORTER_OTLP_* variables)");
    }
    log_effective_config(&config);
    let mut explainers: Vec<Box<dyn Explainer>> = Vec::new();
    let mut model = None;
    for _ in 0..config.server.workers {
        let engine = Engine::load(&config.model, config.explain.layer.as_deref())?;
        model.get_or_insert_with(|| engine.description().clone());
        explainers.push(Box::new(engine));
    }
    let model = model.expect("at least one worker");
    if model.is_demo() {
        tracing::warn!(
            "no weights at {}: serving seeded RANDOM demo weights; predictions are \
             meaningless and every answer says \"weights\": \"demo-random\"",
            config.model.weights.display()
        );
    } else {
        tracing::info!(sha256 = %model.weights, architecture = %model.architecture, "weights loaded");
    }
    if let Err(missing) = crate::cam::lapack::available() {
        tracing::warn!("{missing}; until then those requests get 422");
    }
    if model.labels_source == "generated" {
        tracing::warn!(
            "the model has {} classes and no labels file: classes are named `class 0` .. \
             `class {}`; set model.labels (--labels, GRADCAM_LABELS) to name them",
            model.num_classes,
            model.num_classes - 1
        );
    }
    let app = Application::build(config, explainers, model)?;
    // Tests and scripts read the real port (bind to port 0) from this line.
    println!("listening on http://{}", app.address());
    tracing::info!(address = %app.address(), "listening");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("http")
        .build()?;
    runtime.block_on(app.run_until(shutdown_signal()))?;
    tracing::info!("stopped");
    telemetry.shutdown();
    Ok(())
}

/// glibc gives threads that allocate at the same time arenas of their own, up to 8 per
/// core, and keeps what they free for reuse in that arena: the HTTP and decoding threads'
/// multi-megabyte images then leave resident memory growing under load (+24 % to +30 %
/// in a minute of `make load-test`) with no gain in throughput. Two arenas hold it flat.
/// `MALLOC_ARENA_MAX` in the environment, when set, decides instead.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        extern "C" {
            fn mallopt(param: std::ffi::c_int, value: std::ffi::c_int) -> std::ffi::c_int;
        }
        const M_ARENA_MAX: std::ffi::c_int = -8;
        // SAFETY: mallopt only changes an allocator setting, under glibc's own lock.
        unsafe {
            mallopt(M_ARENA_MAX, 2);
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown signal: finishing in-flight requests");
}

fn log_effective_config(config: &Config) {
    let mut shown = config.clone();
    shown.server.api_keys = shown
        .server
        .api_keys
        .iter()
        .map(|_| "<redacted>".into())
        .collect();
    match toml::to_string(&shown) {
        Ok(text) => tracing::info!("effective configuration:\n{text}"),
        Err(e) => tracing::warn!("cannot show the configuration: {e}"),
    }
}
