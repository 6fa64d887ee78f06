//! Prometheus metrics: a tiny HTTP endpoint (GET /metrics) rendering the counters that the
//! session, scoring and alert layers already keep as atomics. Nothing is counted here; this
//! module only reads and formats, so the hot path pays nothing for being observed.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::domain::AlertKind;
use crate::session::Sessions;

fn counter(out: &mut String, name: &str, help: &str, value: u64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
    );
}

fn gauge(out: &mut String, name: &str, help: &str, value: f64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
    );
}

/// The exposition text.
pub fn render(sessions: &Sessions) -> String {
    let mut out = String::with_capacity(4096);
    let s = &sessions.stats;
    let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
    gauge(
        &mut out,
        "callguard_calls_active",
        "Calls currently tracked.",
        sessions.active_calls() as f64,
    );
    counter(
        &mut out,
        "callguard_calls_started_total",
        "Calls started.",
        load(&s.calls_started),
    );
    counter(
        &mut out,
        "callguard_calls_ended_total",
        "Calls ended by the platform.",
        load(&s.calls_ended),
    );
    counter(
        &mut out,
        "callguard_calls_expired_total",
        "Calls forgotten after idle expiry.",
        load(&s.calls_expired),
    );
    counter(
        &mut out,
        "callguard_partials_total",
        "Partial utterances accepted.",
        load(&s.partials),
    );
    counter(
        &mut out,
        "callguard_finals_total",
        "Final utterances scored.",
        load(&s.finals),
    );
    counter(
        &mut out,
        "callguard_finals_degraded_total",
        "Finals scored by the lexicon alone (overload or model failure).",
        load(&s.degraded),
    );
    let _ = writeln!(
        out,
        "# HELP callguard_alerts_total Alerts raised, by kind.\n# TYPE callguard_alerts_total counter"
    );
    for kind in AlertKind::ALL {
        let _ = writeln!(
            out,
            "callguard_alerts_total{{kind=\"{}\"}} {}",
            kind.name(),
            load(&s.alerts[kind as usize])
        );
    }
    let _ = writeln!(
        out,
        "# HELP callguard_rejects_total Requests and events refused, by reason.\n# TYPE callguard_rejects_total counter"
    );
    for (reason, n) in s.rejects.snapshot() {
        let _ = writeln!(out, "callguard_rejects_total{{reason=\"{reason}\"}} {n}");
    }
    s.final_latency.render(
        &mut out,
        "callguard_final_seconds",
        "Time from receiving a final utterance to its ack (alerts published).",
    );
    let q = sessions.scorer().stats();
    gauge(
        &mut out,
        "callguard_scoring_queue_depth",
        "Finals waiting for the model.",
        load(&q.queued) as i64 as f64,
    );
    counter(
        &mut out,
        "callguard_model_batches_total",
        "Model batches run.",
        load(&q.batches),
    );
    counter(
        &mut out,
        "callguard_model_utterances_total",
        "Utterances scored by the model.",
        load(&q.scored),
    );
    counter(
        &mut out,
        "callguard_model_seconds_total",
        "Time spent in the model.",
        load(&q.model_ns) / 1_000_000_000,
    );
    counter(
        &mut out,
        "callguard_model_padded_tokens_total",
        "Token slots computed, padding included.",
        load(&q.padded_tokens),
    );
    counter(
        &mut out,
        "callguard_model_tokens_total",
        "Real tokens scored.",
        load(&q.real_tokens),
    );
    counter(
        &mut out,
        "callguard_cache_hits_total",
        "Short utterances answered from the cache.",
        load(&q.cache_hits),
    );
    counter(
        &mut out,
        "callguard_scoring_shed_total",
        "Finals shed to the lexicon because the queue was full.",
        load(&q.shed),
    );
    counter(
        &mut out,
        "callguard_scoring_skipped_total",
        "Queued finals whose caller had gone.",
        load(&q.skipped),
    );
    gauge(
        &mut out,
        "callguard_config_version",
        "Config version in force (reloads since start).",
        sessions.config().version as f64,
    );
    out
}

/// Serve `/metrics` on `listener` until `shutdown`. Minimal HTTP/1.1: one request per
/// connection, bounded request size, nothing but GET.
pub async fn serve(listener: TcpListener, sessions: Arc<Sessions>, shutdown: CancellationToken) {
    loop {
        let (mut stream, _) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(err) => {
                    tracing::warn!(error = %err, "metrics accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let sessions = sessions.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            let mut len = 0;
            // read the request head (bounded), then answer
            while len < buf.len() {
                match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf[len..]))
                    .await
                {
                    Ok(Ok(0)) | Err(_) | Ok(Err(_)) => break,
                    Ok(Ok(n)) => len += n,
                }
                if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            let head = String::from_utf8_lossy(&buf[..len]);
            let (status, body) = if head.starts_with("GET /metrics ") || head.starts_with("GET / ")
            {
                ("200 OK", render(&sessions))
            } else {
                ("404 Not Found", "not found\n".to_string())
            };
            let response = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}
