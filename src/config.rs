//! Configuration: serde structs with embedded defaults, validation at load, and hot reload.
//!
//! `load` merges a TOML file over the embedded `default_config.toml` (table by table, so a file
//! may hold only what it changes), validates it and resolves lookup tables. `watch` republishes a
//! new `Arc<Config>` on a `tokio::sync::watch` channel when the file changes or on SIGHUP; a
//! file that fails validation is logged with the key and reason and the old config stays.
//! Readers take one `Arc` snapshot per utterance, so a reload never tears a decision.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::domain::{AlertKind, Label, LabelSet, Lang, Scores, Speaker};

/// The embedded defaults: a new user needs no file.
pub const DEFAULT_TOML: &str = include_str!("default_config.toml");

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("{key} = {value}: {reason}")]
    Invalid {
        key: String,
        value: String,
        reason: &'static str,
    },
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub model: ModelConfig,
    pub batching: BatchingConfig,
    pub limits: LimitsConfig,
    pub scoring: ScoringConfig,
    pub policy: PolicyConfig,
    pub thresholds: ThresholdConfig,
    pub crisis_lines: PerLang<String>,
    pub texts: Texts,
    pub incidents: IncidentsConfig,
    pub auth: AuthConfig,
    pub tls: TlsConfig,
    /// Increases by one with every successful reload; recorded with alerts and incidents.
    #[serde(skip)]
    pub version: u64,
    /// Thresholds resolved per language and label, filled by `validate`.
    #[serde(skip)]
    resolved: [[f32; Label::COUNT]; 4],
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    pub addr: String,
    /// Prometheus endpoint (GET /metrics); empty turns it off.
    pub metrics_addr: String,
    pub shutdown_grace_s: u64,
    /// Largest gRPC message accepted, in bytes.
    pub max_message_bytes: usize,
    /// HTTP/2 streams (calls, subscriptions) open at once on one connection.
    pub max_streams_per_connection: u32,
    /// HTTP/2 keepalive: ping an idle connection this often, drop it when the ping is not
    /// answered within the timeout (half-open connections of crashed clients).
    pub keepalive_interval_s: u64,
    pub keepalive_timeout_s: u64,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub dir: PathBuf,
    pub onnxruntime: PathBuf,
    pub threads: usize,
    pub max_tokens: usize,
    /// ONNX Runtime's CPU arena: faster allocation, but it keeps its peak memory.
    pub arena: bool,
    /// Let ONNX Runtime's threads spin between ops: lower latency on an idle machine, CPU
    /// taken from the gRPC threads on a busy one.
    pub spin: bool,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BatchingConfig {
    pub max_batch: usize,
    pub max_tokens_per_batch: usize,
    pub max_wait_ms: u64,
    pub queue_capacity: usize,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    pub max_text_bytes: usize,
    pub max_calls: usize,
    pub call_idle_expiry_s: u64,
    pub alert_replay_per_agent: usize,
    pub subscriber_queue: usize,
    /// Utterance events (partials and finals) one call may send per second, on average ...
    pub call_events_per_s: f64,
    /// ... and in a burst.
    pub call_event_burst: f64,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct IncidentsConfig {
    /// SQLite database (WAL) holding every alert.
    pub path: PathBuf,
    /// Keep the utterance text with each incident (personal data: off by default).
    pub store_text: bool,
    /// Incidents older than this are deleted (at start and hourly).
    pub retention_days: u32,
}

/// Who may call what: bearer tokens (stored as SHA-256 hex) with a role each.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Clients on a loopback address need no token (a local first run); logged loudly at start.
    pub loopback_without_token: bool,
    pub tokens: Vec<TokenConfig>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// SHA-256 of the token, lowercase hex (`callguard hash-token`).
    pub sha256: String,
    pub role: Role,
    /// Shown in logs instead of the token.
    #[serde(default)]
    pub name: String,
    /// For `agent`: the one agent whose alerts this token may read.
    #[serde(default)]
    pub agent_id: Option<String>,
    /// For `supervisor`: the team whose agents' alerts this token may read.
    #[serde(default)]
    pub team: Option<String>,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The telephony platform: streams calls, scores text.
    Ingest,
    /// One agent's softphone.
    Agent,
    /// A team lead: the alerts of the team's agents.
    Supervisor,
    /// Operations: config status and incident export.
    Ops,
}

/// TLS (rustls) for the gRPC port; off when `cert` is empty.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain and private key.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// PEM CA bundle for client certificates (mTLS); empty: no client certificates.
    pub client_ca: PathBuf,
    /// With `client_ca`: also accept clients without a certificate (they still need a token).
    pub client_auth_optional: bool,
}

/// Where a label's score comes from.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Model,
    Lexicon,
    Max,
}

/// Which agent lines go to the model (agents carry only the `warning` label).
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AgentLines {
    /// Every agent line.
    Always,
    /// Only lines that mention ending the call or name a warning; the rest cannot be warnings.
    Gated,
    /// None: warnings from the lexicon alone.
    Never,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScoringConfig {
    pub threat: Source,
    pub harassment: Source,
    pub profanity: Source,
    pub self_harm: Source,
    pub warning: Source,
    pub agent_lines: AgentLines,
    /// Short utterances ("ja", "okej", "mm") up to this many bytes are cached: their model
    /// scores never change, so repeats need no model call. 0 turns the cache off.
    pub cache_max_bytes: usize,
    /// Entries the cache holds (two generations of half this size each).
    pub cache_entries: usize,
}

impl ScoringConfig {
    pub fn source(&self, label: Label) -> Source {
        match label {
            Label::Threat => self.threat,
            Label::Harassment => self.harassment,
            Label::Profanity => self.profanity,
            Label::SelfHarm => self.self_harm,
            Label::Warning => self.warning,
        }
    }
}

/// Which customer labels trigger which alert. Read by the pure policy.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    #[serde(deserialize_with = "label_set")]
    pub suggest_warning: LabelSet,
    #[serde(deserialize_with = "label_set")]
    pub hang_up_allowed: LabelSet,
    #[serde(deserialize_with = "label_set")]
    pub escalate: LabelSet,
    #[serde(deserialize_with = "label_set")]
    pub acute_procedure: LabelSet,
    #[serde(deserialize_with = "alert_kinds")]
    pub debrief_after: Vec<AlertKind>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThresholdConfig {
    pub default: LabelValues,
    #[serde(default)]
    pub sv: PartialLabelValues,
    #[serde(default)]
    pub nb: PartialLabelValues,
    #[serde(default)]
    pub nn: PartialLabelValues,
    #[serde(default)]
    pub da: PartialLabelValues,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelValues {
    pub threat: f32,
    pub harassment: f32,
    pub profanity: f32,
    pub self_harm: f32,
    pub warning: f32,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartialLabelValues {
    pub threat: Option<f32>,
    pub harassment: Option<f32>,
    pub profanity: Option<f32>,
    pub self_harm: Option<f32>,
    pub warning: Option<f32>,
}

impl LabelValues {
    fn as_array(&self) -> [f32; Label::COUNT] {
        [
            self.threat,
            self.harassment,
            self.profanity,
            self.self_harm,
            self.warning,
        ]
    }
}

impl PartialLabelValues {
    fn over(&self, base: [f32; Label::COUNT]) -> [f32; Label::COUNT] {
        let own = [
            self.threat,
            self.harassment,
            self.profanity,
            self.self_harm,
            self.warning,
        ];
        std::array::from_fn(|i| own[i].unwrap_or(base[i]))
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PerLang<T> {
    pub sv: T,
    pub nb: T,
    pub nn: T,
    pub da: T,
}

impl<T> PerLang<T> {
    pub fn get(&self, lang: Lang) -> &T {
        match lang {
            Lang::Sv => &self.sv,
            Lang::Nb => &self.nb,
            Lang::Nn => &self.nn,
            Lang::Da => &self.da,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Texts {
    pub sv: AlertTexts,
    pub nb: AlertTexts,
    pub nn: AlertTexts,
    pub da: AlertTexts,
    pub en: AlertTexts,
}

/// One reason text per alert kind; `{crisis_line}` is replaced by the call's crisis line.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertTexts {
    pub suggest_warning: String,
    pub hang_up_allowed: String,
    pub escalate: String,
    pub acute_procedure: String,
    pub debrief: String,
}

impl AlertTexts {
    pub fn get(&self, kind: AlertKind) -> &str {
        match kind {
            AlertKind::SuggestWarning => &self.suggest_warning,
            AlertKind::HangUpAllowed => &self.hang_up_allowed,
            AlertKind::Escalate => &self.escalate,
            AlertKind::AcuteProcedure => &self.acute_procedure,
            AlertKind::Debrief => &self.debrief,
        }
    }
}

impl Texts {
    pub fn get(&self, lang: Lang) -> &AlertTexts {
        match lang {
            Lang::Sv => &self.sv,
            Lang::Nb => &self.nb,
            Lang::Nn => &self.nn,
            Lang::Da => &self.da,
        }
    }
}

fn label_set<'de, D: serde::Deserializer<'de>>(de: D) -> Result<LabelSet, D::Error> {
    let names = Vec::<String>::deserialize(de)?;
    names
        .iter()
        .map(|n| {
            Label::parse(n).ok_or_else(|| serde::de::Error::custom(format!("unknown label {n:?}")))
        })
        .collect()
}

fn alert_kinds<'de, D: serde::Deserializer<'de>>(de: D) -> Result<Vec<AlertKind>, D::Error> {
    let names = Vec::<String>::deserialize(de)?;
    names
        .iter()
        .map(|n| {
            AlertKind::parse(n)
                .ok_or_else(|| serde::de::Error::custom(format!("unknown alert kind {n:?}")))
        })
        .collect()
}

impl Config {
    /// The embedded defaults, validated.
    pub fn embedded() -> Config {
        parse(DEFAULT_TOML, "embedded defaults").expect("the embedded defaults are valid (tested)")
    }

    /// The threshold for one label in one language.
    pub fn threshold(&self, lang: Lang, label: Label) -> f32 {
        self.resolved[lang_index(lang)][label.index()]
    }

    /// Labels over threshold for this language that this speaker can carry.
    pub fn labels(&self, lang: Lang, speaker: Speaker, scores: &Scores) -> LabelSet {
        let row = &self.resolved[lang_index(lang)];
        Label::ALL
            .into_iter()
            .filter(|l| speaker.may_carry(*l) && scores.get(*l) >= row[l.index()])
            .collect()
    }

    /// The reason text for an alert, in the call's language and in English.
    pub fn reason(&self, lang: Lang, kind: AlertKind) -> (String, String) {
        let line = self.crisis_lines.get(lang);
        let fill = |s: &str| s.replace("{crisis_line}", line);
        (
            fill(self.texts.get(lang).get(kind)),
            fill(self.texts.en.get(kind)),
        )
    }

    pub fn idle_expiry(&self) -> Duration {
        Duration::from_secs(self.limits.call_idle_expiry_s)
    }

    fn validate(mut self) -> Result<Config, ConfigError> {
        fn invalid(key: &str, value: impl ToString, reason: &'static str) -> ConfigError {
            ConfigError::Invalid {
                key: key.to_string(),
                value: value.to_string(),
                reason,
            }
        }
        let base = self.thresholds.default.as_array();
        for lang in Lang::ALL {
            let part = match lang {
                Lang::Sv => &self.thresholds.sv,
                Lang::Nb => &self.thresholds.nb,
                Lang::Nn => &self.thresholds.nn,
                Lang::Da => &self.thresholds.da,
            };
            self.resolved[lang_index(lang)] = part.over(base);
        }
        for (i, lang) in Lang::ALL.iter().enumerate() {
            for label in Label::ALL {
                let t = self.resolved[i][label.index()];
                if !(t > 0.0 && t <= 1.0) {
                    let key = format!("thresholds.{}.{}", lang.code(), label.name());
                    return Err(invalid(&key, t, "must be in (0, 1]"));
                }
            }
        }
        let b = &self.batching;
        if !(1..=256).contains(&b.max_batch) {
            return Err(invalid(
                "batching.max_batch",
                b.max_batch,
                "must be 1..=256",
            ));
        }
        if b.max_tokens_per_batch < self.model.max_tokens {
            return Err(invalid(
                "batching.max_tokens_per_batch",
                b.max_tokens_per_batch,
                "must be at least model.max_tokens",
            ));
        }
        if b.max_wait_ms > 1000 {
            return Err(invalid(
                "batching.max_wait_ms",
                b.max_wait_ms,
                "must be <= 1000",
            ));
        }
        if b.queue_capacity == 0 {
            return Err(invalid("batching.queue_capacity", 0, "must be > 0"));
        }
        if !(8..=512).contains(&self.model.max_tokens) {
            return Err(invalid(
                "model.max_tokens",
                self.model.max_tokens,
                "must be 8..=512",
            ));
        }
        if !(1..=64).contains(&self.model.threads) {
            return Err(invalid(
                "model.threads",
                self.model.threads,
                "must be 1..=64",
            ));
        }
        let l = &self.limits;
        for (key, value) in [
            ("limits.max_text_bytes", l.max_text_bytes),
            ("limits.max_calls", l.max_calls),
            ("limits.alert_replay_per_agent", l.alert_replay_per_agent),
            ("limits.subscriber_queue", l.subscriber_queue),
        ] {
            if value == 0 {
                return Err(invalid(key, value, "must be > 0"));
            }
        }
        if !(l.call_events_per_s > 0.0 && l.call_events_per_s.is_finite()) {
            return Err(invalid(
                "limits.call_events_per_s",
                l.call_events_per_s,
                "must be > 0",
            ));
        }
        if !(l.call_event_burst >= 1.0 && l.call_event_burst.is_finite()) {
            return Err(invalid(
                "limits.call_event_burst",
                l.call_event_burst,
                "must be >= 1",
            ));
        }
        let srv = &self.server;
        if !(1024..=64 << 20).contains(&srv.max_message_bytes) {
            return Err(invalid(
                "server.max_message_bytes",
                srv.max_message_bytes,
                "must be 1 KiB..=64 MiB",
            ));
        }
        if srv.max_streams_per_connection == 0 {
            return Err(invalid(
                "server.max_streams_per_connection",
                0,
                "must be > 0",
            ));
        }
        if srv.keepalive_interval_s == 0 || srv.keepalive_timeout_s == 0 {
            return Err(invalid(
                "server.keepalive_interval_s",
                srv.keepalive_interval_s.min(srv.keepalive_timeout_s),
                "keepalive interval and timeout must be > 0",
            ));
        }
        for (i, token) in self.auth.tokens.iter().enumerate() {
            let key = |field: &str| format!("auth.tokens[{i}].{field}");
            let hex = token.sha256.len() == 64
                && token
                    .sha256
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
            if !hex {
                return Err(invalid(
                    &key("sha256"),
                    &token.sha256,
                    "must be 64 lowercase hex digits (callguard hash-token)",
                ));
            }
            let blank = |v: &Option<String>| v.as_deref().is_none_or(|s| s.trim().is_empty());
            if token.role == Role::Agent && blank(&token.agent_id) {
                return Err(invalid(
                    &key("agent_id"),
                    "",
                    "an agent token needs agent_id",
                ));
            }
            if token.role == Role::Supervisor && blank(&token.team) {
                return Err(invalid(&key("team"), "", "a supervisor token needs team"));
            }
        }
        let tls = &self.tls;
        if tls.cert.as_os_str().is_empty() != tls.key.as_os_str().is_empty() {
            return Err(invalid(
                "tls.key",
                tls.key.display(),
                "tls.cert and tls.key go together",
            ));
        }
        if tls.cert.as_os_str().is_empty() && !tls.client_ca.as_os_str().is_empty() {
            return Err(invalid(
                "tls.client_ca",
                tls.client_ca.display(),
                "client certificates need tls.cert and tls.key",
            ));
        }
        if self.incidents.retention_days == 0 {
            return Err(invalid("incidents.retention_days", 0, "must be > 0"));
        }
        if l.call_idle_expiry_s == 0 {
            return Err(invalid("limits.call_idle_expiry_s", 0, "must be > 0"));
        }
        if self.policy.hang_up_allowed.contains(Label::Warning)
            || self.policy.suggest_warning.contains(Label::Warning)
            || self.policy.escalate.contains(Label::Warning)
            || self.policy.acute_procedure.contains(Label::Warning)
        {
            return Err(invalid(
                "policy",
                "warning",
                "warning is the agent's label; policy lists customer labels",
            ));
        }
        if self.server.addr.parse::<std::net::SocketAddr>().is_err() {
            return Err(invalid(
                "server.addr",
                &self.server.addr,
                "not a HOST:PORT address",
            ));
        }
        Ok(self)
    }
}

fn lang_index(lang: Lang) -> usize {
    match lang {
        Lang::Sv => 0,
        Lang::Nb => 1,
        Lang::Nn => 2,
        Lang::Da => 3,
    }
}

/// Parse TOML text merged over the embedded defaults, then validate.
pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
    let parse_err = |e: toml::de::Error| ConfigError::Parse {
        path: origin.to_string(),
        message: e.to_string().trim_end().to_string(),
    };
    let mut merged: toml::Table = DEFAULT_TOML.parse().map_err(parse_err)?;
    let overlay: toml::Table = text.parse().map_err(parse_err)?;
    merge(&mut merged, overlay);
    let config: Config = toml::Value::Table(merged).try_into().map_err(parse_err)?;
    config.validate()
}

/// Tables merge key by key; any other value replaces the default.
fn merge(base: &mut toml::Table, overlay: toml::Table) {
    for (key, value) in overlay {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

/// Load the file at `path`, or the embedded defaults when there is none.
pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
    match path {
        None => Ok(Config::embedded()),
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_path_buf(),
                source,
            })?;
            parse(&text, &path.display().to_string())
        }
    }
}

/// Reload `path` into `tx` on every change of the file and on SIGHUP until `shutdown`.
///
/// A failed reload keeps the config in force and logs the key and reason.
pub async fn watch(
    path: PathBuf,
    tx: watch::Sender<Arc<Config>>,
    shutdown: CancellationToken,
) -> Result<(), notify::Error> {
    use notify::Watcher;
    // The notify callback runs on its own thread; a 1-slot channel coalesces bursts of events.
    let (changed_tx, mut changed_rx) = tokio::sync::mpsc::channel::<()>(1);
    let file_name = path.file_name().map(|n| n.to_os_string());
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // only writes, creations, renames and removals: our own reads would retrigger us
        if let Ok(event) = event
            && (event.kind.is_modify() || event.kind.is_create() || event.kind.is_remove())
            && event
                .paths
                .iter()
                .any(|p| p.file_name().map(|n| n.to_os_string()) == file_name)
        {
            let _ = changed_tx.try_send(());
        }
    })?;
    // Watch the directory: editors replace files by rename, which a file watch would lose.
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    watcher.watch(&dir, notify::RecursiveMode::NonRecursive)?;
    let mut hangup = hangup_signal();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            Some(()) = changed_rx.recv() => {
                // let the writer finish; several events for one save become one reload
                tokio::time::sleep(Duration::from_millis(50)).await;
                while changed_rx.try_recv().is_ok() {}
            }
            _ = hangup.recv() => {}
        }
        reload(&path, &tx);
    }
}

/// Re-read `path` and publish it when valid. Returns whether the config changed.
pub fn reload(path: &Path, tx: &watch::Sender<Arc<Config>>) -> bool {
    match load(Some(path)) {
        Ok(mut next) => {
            let current = tx.borrow().clone();
            next.version = current.version + 1;
            if next.server != current.server
                || next.model != current.model
                || next.batching != current.batching
                || next.incidents.path != current.incidents.path
            {
                tracing::warn!(
                    "config: [server], [model], [batching] and incidents.path changes take effect after a restart"
                );
            }
            tracing::info!(version = next.version, path = %path.display(), "config reloaded");
            tx.send_replace(Arc::new(next));
            true
        }
        Err(err) => {
            tracing::error!(error = %err, path = %path.display(), "config reload rejected; keeping the config in force");
            false
        }
    }
}

#[cfg(unix)]
fn hangup_signal() -> tokio::sync::mpsc::Receiver<()> {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(mut sig) => {
            tokio::spawn(async move {
                while sig.recv().await.is_some() {
                    if tx.send(()).await.is_err() {
                        break;
                    }
                }
            });
        }
        Err(err) => tracing::warn!(error = %err, "no SIGHUP handler; reload on file change only"),
    }
    rx
}

#[cfg(not(unix))]
fn hangup_signal() -> tokio::sync::mpsc::Receiver<()> {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    std::mem::forget(tx);
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_defaults_are_valid() {
        let c = Config::embedded();
        assert_eq!(c.batching.max_batch, 32);
        assert!(c.policy.escalate.contains(Label::Threat));
        for lang in Lang::ALL {
            for label in Label::ALL {
                let t = c.threshold(lang, label);
                assert!(t > 0.0 && t <= 1.0);
            }
        }
    }

    #[test]
    fn a_partial_file_overrides_only_what_it_names() {
        let c = parse(
            "[thresholds.da]\nthreat = 0.9\n[limits]\nmax_calls = 5\n",
            "t",
        )
        .unwrap();
        assert_eq!(c.threshold(Lang::Da, Label::Threat), 0.9);
        assert_eq!(
            c.threshold(Lang::Sv, Label::Threat),
            c.thresholds.default.threat
        );
        assert_eq!(c.limits.max_calls, 5);
        assert_eq!(c.limits.subscriber_queue, 64);
    }

    #[test]
    fn errors_name_the_key_and_reason() {
        let err = parse("[thresholds.nb]\nharassment = 1.5\n", "t")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("thresholds.nb.harassment") && err.contains("1.5"),
            "{err}"
        );
        let err = parse("[batching]\nmax_batch = 0\n", "t")
            .unwrap_err()
            .to_string();
        assert!(err.contains("batching.max_batch"), "{err}");
        let err = parse("[limits]\nmax_callz = 3\n", "t")
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_callz"), "{err}");
        let err = parse("[policy]\nescalate = [\"threats\"]\n", "t")
            .unwrap_err()
            .to_string();
        assert!(err.contains("threats"), "{err}");
    }

    #[test]
    fn labels_respect_speaker_and_language() {
        let c = parse(
            "[thresholds.default]\nthreat = 0.5\nwarning = 0.5\n[thresholds.sv]\nthreat = 0.8\n[thresholds.da]\nthreat = 0.6\n",
            "t",
        )
        .unwrap();
        let mut s = Scores::default();
        s.set(Label::Threat, 0.7);
        s.set(Label::Warning, 0.9);
        let sv = c.labels(Lang::Sv, Speaker::Customer, &s);
        assert!(!sv.contains(Label::Threat) && !sv.contains(Label::Warning));
        let da = c.labels(Lang::Da, Speaker::Customer, &s);
        assert!(da.contains(Label::Threat));
        let agent = c.labels(Lang::Da, Speaker::Agent, &s);
        assert!(agent.contains(Label::Warning) && !agent.contains(Label::Threat));
    }

    #[test]
    fn reasons_fill_in_the_crisis_line() {
        let c = Config::embedded();
        let (local, en) = c.reason(Lang::Da, AlertKind::AcuteProcedure);
        assert!(local.contains("70 201 201") && en.contains("70 201 201"));
    }
}
