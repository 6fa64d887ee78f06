//! Callguard: real-time abuse, threat and crisis detection for Nordic contact-centre calls.
//!
//! Data flows left to right; a module imports only modules to its right, plus `config`,
//! `domain` and `error`:
//!
//! ```text
//! api ──> session ──> scoring ──> policy ──> alerts
//!  │        │           ├ batcher (worker thread, owns the ONNX session)
//!  │        │           ├ model   (tokenizer + ort, sync)
//!  │        │           └ lexicon (pure phrase scorer)
//!  │        └ per-call state in a DashMap, idle expiry
//!  └ tonic services: Ingest (bidi per call), AlertFeed (server stream per agent), Scoring
//! ```
//!
//! - `auth`: bearer tokens with roles, checked by an interceptor and per handler.
//! - `incidents`: every alert in SQLite (WAL), committed before the utterance is acknowledged.
//! - `config`: TOML with embedded defaults, validation, hot reload through a `watch` channel.
//! - `telemetry`: tracing setup. `error`: typed errors and their single mapping to gRPC status.
//! - `offline` and `replay`: the `callguard score` and `callguard replay` commands.
//! - `loadgen` and `soak`: `callguard loadgen` (make bench) and `callguard soak` (make soak).
//!
//! `run` wires them together and serves until the shutdown token fires.

pub mod alerts;
pub mod api;
pub mod auth;
pub mod config;
pub mod domain;
pub mod error;
pub mod fuzzing;
pub mod incidents;
pub mod loadgen;
pub mod metrics;
pub mod offline;
pub mod policy;
pub mod replay;
pub mod scoring;
pub mod session;
pub mod soak;
pub mod telemetry;

/// Generated gRPC types and services (`proto/callguard/v1`).
pub mod proto {
    #![allow(clippy::all, clippy::pedantic)]
    tonic::include_proto!("callguard.v1");
    /// Served by gRPC reflection so that grpcurl needs no .proto files.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("callguard_descriptor");
}

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic_health::ServingStatus;

use crate::config::Config;
use crate::scoring::Scorer;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("model: {0}")]
    Model(String),
    #[error("config watch: {0}")]
    Watch(#[from] notify::Error),
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("server: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("{0}")]
    Store(#[from] incidents::StoreError),
    #[error("tls: {0}")]
    Tls(String),
    #[error("metrics endpoint {0}: {1}")]
    Metrics(String, std::io::Error),
}

/// The gRPC service names for health checking; "" is the server as a whole.
pub const SERVICES: [&str; 5] = [
    "",
    "callguard.v1.Ingest",
    "callguard.v1.AlertFeed",
    "callguard.v1.Scoring",
    "callguard.v1.Ops",
];

/// rustls settings from `[tls]`, or None when it is off. Files are read once, at start.
fn tls_config(
    tls: &config::TlsConfig,
) -> Result<Option<tonic::transport::ServerTlsConfig>, RunError> {
    use tonic::transport::{Certificate, Identity, ServerTlsConfig};
    if tls.cert.as_os_str().is_empty() {
        return Ok(None);
    }
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|e| RunError::Tls(format!("{}: {e}", path.display())))
    };
    let mut out =
        ServerTlsConfig::new().identity(Identity::from_pem(read(&tls.cert)?, read(&tls.key)?));
    if !tls.client_ca.as_os_str().is_empty() {
        out = out
            .client_ca_root(Certificate::from_pem(read(&tls.client_ca)?))
            .client_auth_optional(tls.client_auth_optional);
    }
    Ok(Some(out))
}

/// The shutdown sequence, run when `shutdown` fires: report NOT_SERVING, let every call stream
/// finish its in-flight final (its alerts are published as it completes), then close the alert
/// feeds, whose streams end once their queued alerts are read. Bounded by `grace`.
async fn drain(
    shutdown: CancellationToken,
    health: tonic_health::server::HealthReporter,
    api: api::Api,
    grace: Duration,
) {
    shutdown.cancelled().await;
    for service in SERVICES {
        health
            .set_service_status(service, ServingStatus::NotServing)
            .await;
    }
    api.calls.close();
    if tokio::time::timeout(grace, api.calls.wait()).await.is_err() {
        tracing::warn!("calls still scoring at the end of the grace period");
    }
    api.sessions.alerts().close_all();
}

/// Serve Callguard on `listener` until `shutdown` fires, then drain and return.
///
/// `config_path`, when given, is watched and reloaded on change and on SIGHUP.
pub async fn run(
    cfg: Config,
    config_path: Option<PathBuf>,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let grace = Duration::from_secs(cfg.server.shutdown_grace_s);
    let (config_tx, config_rx) = watch::channel(Arc::new(cfg.clone()));
    let tasks = TaskTracker::new();
    if let Some(path) = config_path {
        let token = shutdown.clone();
        tasks.spawn(async move {
            if let Err(err) = config::watch(path, config_tx, token).await {
                tracing::error!(error = %err, "config watcher stopped; live reload is off");
            }
        });
    }

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    for service in SERVICES {
        health_reporter
            .set_service_status(service, ServingStatus::NotServing)
            .await;
    }
    let model_cfg = cfg.clone();
    let (scorer, worker) = tokio::task::spawn_blocking(move || Scorer::start(&model_cfg))
        .await
        .map_err(|e| RunError::Model(e.to_string()))?
        .map_err(|e| RunError::Model(e.to_string()))?;
    let store_cfg = cfg.clone();
    let (store, recovered, store_writer) = tokio::task::spawn_blocking(move || {
        incidents::IncidentStore::open(
            &store_cfg.incidents.path,
            store_cfg.incidents.retention_days,
            store_cfg.limits.alert_replay_per_agent,
        )
    })
    .await
    .map_err(|e| RunError::Model(e.to_string()))??;
    let hub = Arc::new(alerts::AlertHub::new());
    hub.restore(
        &recovered.last_seq,
        recovered.recent,
        cfg.limits.alert_replay_per_agent,
    );
    tracing::info!(path = %store.path().display(), agents = recovered.last_seq.len(), "incident store open");
    let retention = {
        let (store, token, config) = (store.clone(), shutdown.clone(), config_rx.clone());
        async move {
            loop {
                tokio::select! {
                    _ = token.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(3600)) => {
                        store.prune(config.borrow().incidents.retention_days);
                    }
                }
            }
        }
    };
    tasks.spawn(retention);
    let store_handle = store.clone();
    let sessions = Arc::new(session::Sessions::new(scorer, hub, store, config_rx));
    tasks.spawn(sessions.clone().run_expiry(shutdown.clone()));
    if !cfg.server.metrics_addr.is_empty() {
        let metrics_listener = TcpListener::bind(&cfg.server.metrics_addr)
            .await
            .map_err(|e| RunError::Metrics(cfg.server.metrics_addr.clone(), e))?;
        tracing::info!(addr = ?metrics_listener.local_addr().ok(), "metrics serving");
        tasks.spawn(metrics::serve(
            metrics_listener,
            sessions.clone(),
            shutdown.clone(),
        ));
    }

    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    // grpcurl 1.8 speaks only the older v1alpha reflection protocol
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    let api = api::Api {
        sessions: sessions.clone(),
        shutdown: shutdown.clone(),
        calls: TaskTracker::new(),
        started: std::time::Instant::now(),
    };
    if cfg.auth.loopback_without_token {
        tracing::warn!(
            "AUTH IS OFF FOR LOOPBACK: clients on 127.0.0.1/::1 need no token \
             (auth.loopback_without_token = true, meant for a local first run only)"
        );
    }
    if cfg.auth.tokens.is_empty() && !cfg.auth.loopback_without_token {
        tracing::warn!("auth.tokens is empty: every request will be refused");
    }
    let tls = tls_config(&cfg.tls)?;
    tracing::info!(
        tls = tls.is_some(),
        mtls = !cfg.tls.client_ca.as_os_str().is_empty(),
        "transport"
    );
    let authn = auth::Authenticate {
        sessions: sessions.clone(),
    };
    let max_message = cfg.server.max_message_bytes;
    for service in SERVICES {
        health_reporter
            .set_service_status(service, ServingStatus::Serving)
            .await;
    }
    let addr = listener.local_addr().ok();
    tracing::info!(addr = ?addr, "callguard serving");
    let srv = &cfg.server;
    let mut builder = tonic::transport::Server::builder()
        .max_concurrent_streams(srv.max_streams_per_connection)
        .http2_keepalive_interval(Some(Duration::from_secs(srv.keepalive_interval_s)))
        .http2_keepalive_timeout(Some(Duration::from_secs(srv.keepalive_timeout_s)));
    if let Some(tls) = tls {
        builder = builder
            .tls_config(tls)
            .map_err(|e| RunError::Tls(e.to_string()))?;
    }
    let server = builder
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(
            authn.guard(
                proto::ingest_server::IngestServer::new(api.clone())
                    .max_decoding_message_size(max_message),
            ),
        )
        .add_service(
            authn.guard(
                proto::alert_feed_server::AlertFeedServer::new(api.clone())
                    .max_decoding_message_size(max_message),
            ),
        )
        .add_service(
            authn.guard(
                proto::scoring_server::ScoringServer::new(api.clone())
                    .max_decoding_message_size(max_message),
            ),
        )
        .add_service(authn.guard(
            proto::ops_server::OpsServer::new(api.clone()).max_decoding_message_size(max_message),
        ))
        .serve_with_incoming_shutdown(
            // small acks and alerts must not wait for Nagle + delayed ACK (~40 ms)
            TcpListenerStream::new(listener).map(|conn| {
                if let Ok(stream) = &conn {
                    let _ = stream.set_nodelay(true);
                }
                conn
            }),
            drain(shutdown.clone(), health_reporter, api.clone(), grace),
        );
    let mut served = tokio::spawn(server);
    shutdown.cancelled().await;
    tracing::info!(grace_s = grace.as_secs(), "shutting down");
    // twice the grace: draining calls may take one, closing connections the other
    match tokio::time::timeout(grace * 2, &mut served).await {
        Ok(Ok(result)) => result?,
        Ok(Err(join)) => tracing::error!(error = %join, "server task failed"),
        Err(_) => {
            tracing::warn!("shutdown grace period over; dropping remaining connections");
            served.abort();
            let _ = served.await;
        }
    }
    tasks.close();
    tasks.wait().await;
    // the worker scores what is still queued, then stops
    let scorer = sessions.scorer().clone();
    drop(sessions);
    let joined = tokio::task::spawn_blocking(move || {
        scorer.stop();
        worker.join()
    });
    if tokio::time::timeout(grace, joined).await.is_err() {
        tracing::warn!("scoring worker still busy at exit");
    }
    // every acknowledged incident is committed already; this commits any still queued
    store_handle.close();
    if tokio::time::timeout(
        grace,
        tokio::task::spawn_blocking(move || store_writer.join()),
    )
    .await
    .is_err()
    {
        tracing::warn!("incident writer still busy at exit");
    }
    tracing::info!("stopped");
    Ok(())
}
