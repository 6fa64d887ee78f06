//! Per-call state and the path of an utterance: validate, score, decide, alert.
//!
//! Calls live in a `DashMap<CallId, Arc<Call>>`; each call's mutable state sits behind its own
//! short `std::sync::Mutex`, taken only between awaits (copy out, drop, then await). A call
//! outlives its stream: if the telephony platform's stream breaks, it can reattach with
//! `resume` and the call's flags (warned, alerts sent) are kept until idle expiry.
//! Finals of one call are processed in order, so the policy sees the conversation as spoken.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::alerts::{Alert, AlertHub};
use crate::config::{Config, LimitsConfig};
use crate::domain::{AgentId, AlertKind, CallId, Label, LabelSet, Lang, Scores, Speaker};
use crate::error::{Error, Result};
use crate::incidents::{Incident, IncidentStore};
use crate::policy::{self, AlertKinds, CallFlags};
use crate::scoring::{Scored, Scorer};

/// Longest id accepted for calls, agents, tenants and utterances.
const MAX_ID_BYTES: usize = 256;
/// Distinct final utterance ids remembered per call (for idempotent duplicates).
const MAX_FINALS_PER_CALL: usize = 20_000;

/// A call as the telephony platform announces it.
#[derive(Clone, Debug)]
pub struct CallStart {
    pub call_id: String,
    pub tenant: String,
    pub agent_id: String,
    pub team: String,
    pub language: String,
    pub resume: bool,
}

/// One transcript chunk.
#[derive(Clone, Debug)]
pub struct UtteranceIn {
    pub utterance_id: String,
    pub speaker: Speaker,
    pub text: String,
    pub is_final: bool,
}

/// The verdict kept for each final (duplicates get it again).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FinalResult {
    pub scores: Scores,
    pub labels: LabelSet,
    pub alerts: AlertKinds,
    pub degraded: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Partial {
        seen: u64,
    },
    Final {
        result: FinalResult,
        duplicate: bool,
    },
}

/// Fixed facts about a call.
#[derive(Clone, Debug)]
pub struct CallMeta {
    pub call_id: CallId,
    pub tenant: Arc<str>,
    pub agent_id: AgentId,
    pub team: Arc<str>,
    pub lang: Lang,
}

struct CallState {
    flags: CallFlags,
    /// A stream is feeding this call.
    attached: bool,
    last_activity: Instant,
    partials: u64,
    results: HashMap<Arc<str>, FinalResult>,
    last_utterance: Option<Arc<str>>,
    /// Utterance events allowed (limits.call_events_per_s).
    rate: TokenBucket,
}

/// A token bucket: `rate` tokens a second up to `burst`; each event takes one.
#[derive(Clone, Copy, Debug)]
pub struct TokenBucket {
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    pub fn full(burst: f64, now: Instant) -> TokenBucket {
        TokenBucket {
            tokens: burst,
            at: now,
        }
    }

    /// Take one token if there is one. Rate and burst come from the live config each time.
    pub fn take(&mut self, now: Instant, rate: f64, burst: f64) -> bool {
        let refill = now.saturating_duration_since(self.at).as_secs_f64() * rate;
        self.tokens = (self.tokens + refill).min(burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

pub struct Call {
    pub meta: CallMeta,
    state: Mutex<CallState>,
    /// Fired when the call expires while a stream is attached: the stream ends.
    expired: CancellationToken,
}

impl Call {
    fn state(&self) -> std::sync::MutexGuard<'_, CallState> {
        // the state is plain data: a panic elsewhere cannot leave it half-updated
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Why a request or event was refused: each limit and check has its own metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reject {
    BadId,
    UnknownLanguage,
    EmptyText,
    TextTooLong,
    NoSpeaker,
    BeforeStart,
    SecondStart,
    DuplicateStream,
    UnknownCall,
    TooManyCalls,
    TooManyFinals,
    RateLimited,
    Unauthenticated,
    PermissionDenied,
    MessageTooLarge,
    BadMessage,
}

impl Reject {
    pub const ALL: [Reject; 16] = [
        Reject::BadId,
        Reject::UnknownLanguage,
        Reject::EmptyText,
        Reject::TextTooLong,
        Reject::NoSpeaker,
        Reject::BeforeStart,
        Reject::SecondStart,
        Reject::DuplicateStream,
        Reject::UnknownCall,
        Reject::TooManyCalls,
        Reject::TooManyFinals,
        Reject::RateLimited,
        Reject::Unauthenticated,
        Reject::PermissionDenied,
        Reject::MessageTooLarge,
        Reject::BadMessage,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Reject::BadId => "bad_id",
            Reject::UnknownLanguage => "unknown_language",
            Reject::EmptyText => "empty_text",
            Reject::TextTooLong => "text_too_long",
            Reject::NoSpeaker => "no_speaker",
            Reject::BeforeStart => "before_start",
            Reject::SecondStart => "second_start",
            Reject::DuplicateStream => "duplicate_stream",
            Reject::UnknownCall => "unknown_call",
            Reject::TooManyCalls => "too_many_calls",
            Reject::TooManyFinals => "too_many_finals",
            Reject::RateLimited => "rate_limited",
            Reject::Unauthenticated => "unauthenticated",
            Reject::PermissionDenied => "permission_denied",
            Reject::MessageTooLarge => "message_too_large",
            Reject::BadMessage => "bad_message",
        }
    }
}

/// A counter per `Reject` reason.
#[derive(Debug, Default)]
pub struct RejectCounters([AtomicU64; 16]);

impl RejectCounters {
    pub fn count(&self, reason: Reject) {
        self.0[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        Reject::ALL
            .into_iter()
            .map(|r| (r.name(), self.0[r as usize].load(Ordering::Relaxed)))
    }
}

/// Counters for metrics.
#[derive(Debug, Default)]
pub struct SessionStats {
    pub calls_started: AtomicU64,
    pub calls_ended: AtomicU64,
    pub calls_expired: AtomicU64,
    pub partials: AtomicU64,
    pub finals: AtomicU64,
    pub degraded: AtomicU64,
    pub alerts: [AtomicU64; 5],
    pub rejects: RejectCounters,
    /// Receipt of a final to its result (scored, decided, alerts published).
    pub final_latency: crate::telemetry::LatencyHistogram,
}

pub struct Sessions {
    calls: DashMap<CallId, Arc<Call>>,
    scorer: Scorer,
    alerts: Arc<AlertHub>,
    store: IncidentStore,
    config: watch::Receiver<Arc<Config>>,
    pub stats: SessionStats,
}

impl Sessions {
    pub fn new(
        scorer: Scorer,
        alerts: Arc<AlertHub>,
        store: IncidentStore,
        config: watch::Receiver<Arc<Config>>,
    ) -> Sessions {
        Sessions {
            calls: DashMap::new(),
            scorer,
            alerts,
            store,
            config,
            stats: SessionStats::default(),
        }
    }

    pub fn config(&self) -> Arc<Config> {
        self.config.borrow().clone()
    }

    /// Count a refusal under its reason and pass the error on.
    pub fn reject(&self, reason: Reject, err: Error) -> Error {
        self.stats.rejects.count(reason);
        err
    }

    pub fn store(&self) -> &IncidentStore {
        &self.store
    }

    pub fn scorer(&self) -> &Scorer {
        &self.scorer
    }

    pub fn alerts(&self) -> &Arc<AlertHub> {
        &self.alerts
    }

    pub fn active_calls(&self) -> usize {
        self.calls.len()
    }

    /// Start (or, with `resume`, reattach to) a call. The handle detaches on drop.
    pub fn open(self: &Arc<Self>, start: CallStart) -> Result<CallHandle> {
        let cfg = self.config();
        let call_id = CallId(
            valid_id("call_id", &start.call_id)
                .map_err(|e| self.reject(Reject::BadId, e))?
                .into(),
        );
        let lang = Lang::parse(&start.language).ok_or_else(|| {
            self.reject(
                Reject::UnknownLanguage,
                Error::InvalidArgument(format!(
                    "language {:?} is not one of sv, nb, nn, da (or no)",
                    truncate(&start.language, 16)
                )),
            )
        })?;
        let now = Instant::now();
        // checked before taking the entry: `len()` locks every shard, the entry holds one
        let full = self.calls.len() >= cfg.limits.max_calls;
        let call = match self.calls.entry(call_id.clone()) {
            Entry::Occupied(existing) => {
                let call = existing.get().clone();
                drop(existing);
                if !start.resume {
                    return Err(Error::AlreadyExists(format!(
                        "call {call_id} is already open"
                    )));
                }
                let mut state = call.state();
                if state.attached {
                    drop(state);
                    return Err(self.reject(
                        Reject::DuplicateStream,
                        Error::AlreadyExists(format!("call {call_id} already has a stream")),
                    ));
                }
                state.attached = true;
                state.last_activity = now;
                drop(state);
                call
            }
            Entry::Vacant(slot) => {
                if start.resume {
                    return Err(self.reject(
                        Reject::UnknownCall,
                        Error::NotFound(format!("call {call_id} is not known (ended or expired)")),
                    ));
                }
                if full {
                    return Err(self.reject(
                        Reject::TooManyCalls,
                        Error::ResourceExhausted(format!(
                            "{} calls open (limits.max_calls)",
                            cfg.limits.max_calls
                        )),
                    ));
                }
                let bad_id = |e| self.reject(Reject::BadId, e);
                let meta = CallMeta {
                    call_id: call_id.clone(),
                    tenant: optional_id("tenant", &start.tenant).map_err(bad_id)?.into(),
                    agent_id: AgentId(
                        valid_id("agent_id", &start.agent_id)
                            .map_err(bad_id)?
                            .into(),
                    ),
                    team: optional_id("team", &start.team).map_err(bad_id)?.into(),
                    lang,
                };
                let call = Arc::new(Call {
                    meta,
                    state: Mutex::new(CallState {
                        flags: CallFlags::default(),
                        attached: true,
                        last_activity: now,
                        partials: 0,
                        results: HashMap::new(),
                        last_utterance: None,
                        rate: TokenBucket::full(cfg.limits.call_event_burst, now),
                    }),
                    expired: CancellationToken::new(),
                });
                slot.insert(call.clone());
                if !call.meta.team.is_empty() {
                    self.alerts.set_team(&call.meta.agent_id, &call.meta.team);
                }
                self.stats.calls_started.fetch_add(1, Ordering::Relaxed);
                tracing::info!(call_id = %call_id, agent_id = %call.meta.agent_id, lang = %lang, "call started");
                call
            }
        };
        Ok(CallHandle {
            sessions: self.clone(),
            call,
            ended: false,
        })
    }

    /// Forget calls idle for longer than `limits.call_idle_expiry_s`. Returns how many.
    pub fn expire_idle(&self, now: Instant) -> usize {
        let expiry = self.config().idle_expiry();
        let mut expired = Vec::new();
        self.calls.retain(|_, call| {
            let idle = now.saturating_duration_since(call.state().last_activity);
            if idle > expiry {
                expired.push(call.clone());
                false
            } else {
                true
            }
        });
        for call in &expired {
            call.expired.cancel();
            tracing::info!(call_id = %call.meta.call_id, "call expired after idle");
        }
        self.stats
            .calls_expired
            .fetch_add(expired.len() as u64, Ordering::Relaxed);
        expired.len()
    }

    /// Sweep idle calls until `shutdown`.
    pub async fn run_expiry(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            let period = (self.config().idle_expiry() / 4)
                .clamp(Duration::from_millis(100), Duration::from_secs(30));
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(period) => { self.expire_idle(Instant::now()); }
            }
        }
    }

    /// Deliver an alert to the agent's feed; returns the incident to record.
    fn publish(
        &self,
        cfg: &Config,
        meta: &CallMeta,
        utterance_id: &Arc<str>,
        kind: AlertKind,
        scored: Option<(&Scored, &Arc<str>)>,
    ) -> Incident {
        let (reason, reason_en) = cfg.reason(meta.lang, kind);
        let (labels, evidence) = match scored {
            Some((s, text)) => (
                s.labels.iter().map(|l| (l, s.scores.get(l))).collect(),
                s.evidence
                    .iter()
                    .filter(|e| {
                        text.is_char_boundary(e.start)
                            && text.is_char_boundary(e.end)
                            && e.start <= e.end
                            && e.end <= text.len()
                    })
                    .map(|e| (e.clone(), text[e.start..e.end].to_string()))
                    .collect(),
            ),
            None => (Vec::new(), Vec::new()),
        };
        let alert = Alert {
            seq: 0,
            agent_id: meta.agent_id.clone(),
            call_id: meta.call_id.clone(),
            tenant: meta.tenant.clone(),
            team: meta.team.clone(),
            utterance_id: utterance_id.clone(),
            kind,
            labels,
            reason,
            reason_en,
            lang: meta.lang,
            crisis_line: (kind == AlertKind::AcuteProcedure)
                .then(|| cfg.crisis_lines.get(meta.lang).clone()),
            report_to_police: kind == AlertKind::Escalate,
            created_unix_ms: unix_ms(),
            evidence,
        };
        let sent = self
            .alerts
            .publish(alert, cfg.limits.alert_replay_per_agent);
        self.stats.alerts[kind as usize].fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            call_id = %meta.call_id,
            agent_id = %meta.agent_id,
            utterance_id = %utterance_id,
            alert = kind.name(),
            seq = sent.seq,
            "alert"
        );
        Incident {
            alert: sent,
            config_version: cfg.version,
            text: scored
                .filter(|_| cfg.incidents.store_text)
                .map(|(_, text)| text.clone()),
        }
    }
}

/// A stream's hold on a call. Dropping it detaches the stream; the call stays until it ends
/// or expires.
pub struct CallHandle {
    sessions: Arc<Sessions>,
    call: Arc<Call>,
    ended: bool,
}

impl CallHandle {
    pub fn meta(&self) -> &CallMeta {
        &self.call.meta
    }

    /// Resolves when the call expires (idle) while this stream holds it.
    pub fn expired(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.call.expired.cancelled()
    }

    /// Take one transcript chunk. Errors reject this chunk only; the call goes on.
    pub async fn utterance(&self, utt: UtteranceIn) -> Result<Outcome> {
        let received = Instant::now();
        let s = &self.sessions;
        let cfg = s.config();
        let limits = &cfg.limits;
        // every event costs a token, valid or not: a flood of garbage is a flood too
        let allowed = self.call.state().rate.take(
            received,
            limits.call_events_per_s,
            limits.call_event_burst,
        );
        if !allowed {
            return Err(s.reject(
                Reject::RateLimited,
                Error::ResourceExhausted(format!(
                    "call sends more than limits.call_events_per_s = {} events a second",
                    limits.call_events_per_s
                )),
            ));
        }
        check_utterance(limits, &utt).map_err(|(reason, err)| s.reject(reason, err))?;
        if !utt.is_final {
            let mut state = self.call.state();
            state.last_activity = Instant::now();
            state.partials += 1;
            s.stats.partials.fetch_add(1, Ordering::Relaxed);
            return Ok(Outcome::Partial {
                seen: state.partials,
            });
        }
        let id: Arc<str> = utt.utterance_id.as_str().into();
        {
            let mut state = self.call.state();
            state.last_activity = Instant::now();
            if let Some(result) = state.results.get(&id) {
                return Ok(Outcome::Final {
                    result: *result,
                    duplicate: true,
                });
            }
            if state.results.len() >= MAX_FINALS_PER_CALL {
                drop(state);
                return Err(s.reject(
                    Reject::TooManyFinals,
                    Error::ResourceExhausted(format!(
                        "call has {MAX_FINALS_PER_CALL} final utterances"
                    )),
                ));
            }
        }
        let meta = &self.call.meta;
        let text: Arc<str> = utt.text.into();
        let scored = s
            .scorer
            .score(text.clone(), &cfg, meta.lang, utt.speaker)
            .await?;
        let decision = {
            let mut state = self.call.state();
            let decision = policy::on_final(&cfg.policy, state.flags, utt.speaker, scored.labels);
            state.flags = decision.flags;
            let result = FinalResult {
                scores: scored.scores,
                labels: scored.labels,
                alerts: decision.alerts,
                degraded: scored.degraded,
            };
            state.results.insert(id.clone(), result);
            state.last_utterance = Some(id.clone());
            state.last_activity = Instant::now();
            result
        };
        s.stats.finals.fetch_add(1, Ordering::Relaxed);
        if scored.degraded {
            s.stats.degraded.fetch_add(1, Ordering::Relaxed);
        }
        tracing::debug!(
            call_id = %meta.call_id,
            utterance_id = %id,
            threat = scored.scores.get(Label::Threat),
            harassment = scored.scores.get(Label::Harassment),
            profanity = scored.scores.get(Label::Profanity),
            self_harm = scored.scores.get(Label::SelfHarm),
            warning = scored.scores.get(Label::Warning),
            "scored"
        );
        let incidents: Vec<Incident> = decision
            .alerts
            .iter()
            .map(|kind| s.publish(&cfg, meta, &id, kind, Some((&scored, &text))))
            .collect();
        // the ack waits for the incident to be durable: an acknowledged alert survives a crash
        s.store
            .record(incidents)
            .await
            .map_err(|e| Error::Unavailable(e.to_string()))?;
        s.stats.final_latency.record(received.elapsed());
        Ok(Outcome::Final {
            result: decision,
            duplicate: false,
        })
    }

    /// End the call: raise `debrief` if due and forget the call. Returns the alerts raised.
    pub async fn end(mut self) -> Result<AlertKinds> {
        self.ended = true;
        let s = &self.sessions;
        let meta = &self.call.meta;
        s.calls.remove(&meta.call_id);
        let (flags, last) = {
            let state = self.call.state();
            (state.flags, state.last_utterance.clone())
        };
        let mut raised = AlertKinds::default();
        if let Some(kind) = policy::on_end(flags) {
            let cfg = s.config();
            let last = last.unwrap_or_else(|| Arc::from(""));
            let incident = s.publish(&cfg, meta, &last, kind, None);
            s.store
                .record(vec![incident])
                .await
                .map_err(|e| Error::Unavailable(e.to_string()))?;
            raised = raised.with(kind);
        }
        s.stats.calls_ended.fetch_add(1, Ordering::Relaxed);
        tracing::info!(call_id = %meta.call_id, "call ended");
        Ok(raised)
    }
}

impl Drop for CallHandle {
    fn drop(&mut self) {
        if !self.ended {
            let mut state = self.call.state();
            state.attached = false;
            state.last_activity = Instant::now();
        }
    }
}

/// The checks an utterance event must pass before it touches call state (pure, so the fuzz
/// targets run exactly these). Partials may be empty; finals may not.
pub fn check_utterance(limits: &LimitsConfig, utt: &UtteranceIn) -> Result<(), (Reject, Error)> {
    valid_id("utterance_id", &utt.utterance_id).map_err(|e| (Reject::BadId, e))?;
    if utt.speaker == Speaker::Unknown {
        return Err((
            Reject::NoSpeaker,
            Error::InvalidArgument("speaker must be agent or customer".into()),
        ));
    }
    check_text_len(limits, &utt.text).map_err(|e| (Reject::TextTooLong, e))?;
    if utt.is_final && utt.text.trim().is_empty() {
        return Err((
            Reject::EmptyText,
            Error::InvalidArgument("final utterance text is empty".into()),
        ));
    }
    Ok(())
}

/// `limits.max_text_bytes`, for utterances and for `Scoring.Score` alike.
pub fn check_text_len(limits: &LimitsConfig, text: &str) -> Result<()> {
    if text.len() > limits.max_text_bytes {
        return Err(Error::InvalidArgument(format!(
            "text is {} bytes, over limits.max_text_bytes = {}",
            text.len(),
            limits.max_text_bytes
        )));
    }
    Ok(())
}

pub(crate) fn valid_id<'a>(field: &str, value: &'a str) -> Result<&'a str> {
    if value.trim().is_empty() {
        return Err(Error::InvalidArgument(format!("{field} is empty")));
    }
    optional_id(field, value)
}

pub(crate) fn optional_id<'a>(field: &str, value: &'a str) -> Result<&'a str> {
    if value.len() > MAX_ID_BYTES {
        return Err(Error::InvalidArgument(format!(
            "{field} is longer than {MAX_ID_BYTES} bytes"
        )));
    }
    if value.chars().any(char::is_control) {
        return Err(Error::InvalidArgument(format!(
            "{field} contains control characters"
        )));
    }
    Ok(value)
}

fn truncate(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
