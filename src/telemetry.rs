//! Logging setup. Span and field names used across the crate are fixed here by convention:
//! `call_id`, `agent_id`, `utterance_id`, `seq`, `alert`, `batch_size`, `queue_ms`.
//!
//! Transcript text is personal data: it is never a log field at info level or above.

use tracing_subscriber::EnvFilter;

/// Default filter: our info, ONNX Runtime's warnings only (it is very chatty at info).
pub const DEFAULT_FILTER: &str = "info,ort=warn";

/// Install the global subscriber. `RUST_LOG` overrides the default filter; logs go to stderr
/// so that `callguard score` and `replay` can write results on stdout.
pub fn init(json: bool) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // a second init (tests) is harmless
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
