//! Start-up and shutdown of the HTTP service: logging, the model workers, the listener,
//! graceful shutdown on SIGINT/SIGTERM.

use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::config::Config;
use crate::http::{self, metrics::Metrics, AppState};
use crate::worker::Workers;

pub fn run(config: Config) -> anyhow::Result<()> {
    limit_malloc_arenas();
    init_logging();
    log_effective_config(&config);
    let workers = Workers::start(&config)?;
    if workers.info.weights == crate::weights::DEMO_ID {
        tracing::warn!(
            "no weights at {}: serving seeded RANDOM demo weights; predictions are \
             meaningless and every answer says \"weights\": \"demo-random\"",
            config.model.weights.display()
        );
    } else {
        tracing::info!(sha256 = %workers.info.weights, "weights loaded");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("http")
        .build()?;
    let state = Arc::new(AppState {
        config,
        workers,
        metrics: Metrics::default(),
    });
    runtime.block_on(serve(state.clone()))?;
    // In-flight requests are answered; let the workers drain and stop.
    drop(runtime);
    match Arc::try_unwrap(state) {
        Ok(state) => state.workers.shutdown(),
        Err(_) => tracing::warn!("state still shared at exit; workers stop with the process"),
    }
    tracing::info!("stopped");
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

async fn serve(state: Arc<AppState>) -> anyhow::Result<()> {
    let bind = state.config.server.bind.clone();
    let listener = TcpListener::bind(&bind)
        .await
        .with_context(|| format!("cannot listen on {bind}"))?;
    let address = listener.local_addr()?;
    // Tests and scripts read the real port (bind to port 0) from this line.
    println!("listening on http://{address}");
    tracing::info!(%address, "listening");
    let app = http::router(state);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    Ok(())
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

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("GRADCAM_LOG")
        .unwrap_or_else(|_| "info,tower_http=info".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
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
