//! The tonic services: proto <-> domain conversion and stream plumbing, no business logic.
//!
//! `Ingest.StreamCall` runs one task per call stream that reads events in order and hands them
//! to the session layer; `AlertFeed.Subscribe` turns an agent's feed into a server stream;
//! `Scoring.Score` scores one text; `Ops` reports status and exports incidents. Every handler
//! first checks its caller's scope (`auth`). Errors become statuses through `error.rs` only.

use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::{Request, Response, Status, Streaming};

use crate::alerts::{Alert, FeedItem};
use crate::auth::{self, Action};
use crate::domain::{AgentId, AlertKind, Evidence, Label, Lang, Scores, Speaker};
use crate::error::Error;
use crate::proto as pb;
use crate::scoring::lexicon::guess_language;
use crate::session::{self, Outcome, Reject, Sessions};

/// Acks queued per call stream before the call waits for its client to read them.
const ACK_QUEUE: usize = 32;

#[derive(Clone)]
pub struct Api {
    pub sessions: Arc<Sessions>,
    /// Fired at shutdown: call streams end after their in-flight final.
    pub shutdown: CancellationToken,
    /// Every call-stream task; shutdown waits on it before closing the alert feeds.
    pub calls: TaskTracker,
    pub started: std::time::Instant,
}

impl Api {
    /// Refuse the request unless its authenticated caller may do `action`.
    fn authorize<T>(&self, request: &Request<T>, action: Action<'_>) -> Result<(), Status> {
        auth::principal_of(request)
            .and_then(|principal| auth::authorize(&principal, action))
            .map_err(|err| {
                let reason = match err {
                    Error::Unauthenticated(_) => Reject::Unauthenticated,
                    _ => Reject::PermissionDenied,
                };
                tracing::warn!(reason = %err, "request refused");
                self.sessions.reject(reason, err).into()
            })
    }
}

#[tonic::async_trait]
impl pb::ingest_server::Ingest for Api {
    type StreamCallStream = ReceiverStream<Result<pb::CallAck, Status>>;

    async fn stream_call(
        &self,
        request: Request<Streaming<pb::CallEvent>>,
    ) -> Result<Response<Self::StreamCallStream>, Status> {
        self.authorize(&request, Action::StreamCall)?;
        let mut inbound = request.into_inner();
        // bounded: a client that stops reading acks holds up only its own call
        let (tx, rx) = mpsc::channel(ACK_QUEUE);
        let api = self.clone();
        self.calls.spawn(async move {
            if let Err(status) = api.drive_call(&mut inbound, &tx).await {
                let _ = tx.send(Err(status)).await;
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

impl Api {
    async fn drive_call(
        &self,
        inbound: &mut Streaming<pb::CallEvent>,
        tx: &mpsc::Sender<Result<pb::CallAck, Status>>,
    ) -> Result<(), Status> {
        let first = tokio::select! {
            _ = self.shutdown.cancelled() => return Err(Status::unavailable("server shutting down")),
            msg = inbound.message() => msg?,
        };
        let Some(first) = first else { return Ok(()) };
        let start = match first.event {
            Some(pb::call_event::Event::Start(start)) => start,
            _ => {
                let err = Error::FailedPrecondition(
                    "the first event of a call stream must be start".into(),
                );
                return Err(self.sessions.reject(Reject::BeforeStart, err).into());
            }
        };
        let resume = start.resume;
        let handle = self.sessions.open(session::CallStart {
            call_id: start.call_id,
            tenant: start.tenant,
            agent_id: start.agent_id,
            team: start.team,
            language: start.language,
            resume,
        })?;
        let accepted = pb::call_ack::Ack::Accepted(pb::CallAccepted {
            call_id: handle.meta().call_id.to_string(),
            resumed: resume,
        });
        if tx
            .send(Ok(pb::CallAck {
                ack: Some(accepted),
            }))
            .await
            .is_err()
        {
            return Ok(());
        }
        loop {
            let event = tokio::select! {
                _ = self.shutdown.cancelled() => {
                    return Err(Status::unavailable("server shutting down; resume the call on another instance"));
                }
                _ = handle.expired() => return Err(Status::deadline_exceeded("call expired after being idle")),
                msg = inbound.message() => match msg {
                    Ok(Some(event)) => event,
                    Err(status) => return Err(self.inbound_error(status)),
                    // the client closed its side: the call stays resumable
                    Ok(None) => return Ok(()),
                },
            };
            let ack = match event.event {
                Some(pb::call_event::Event::Utterance(u)) => {
                    let utterance_id = u.utterance_id.clone();
                    match handle.utterance(u.into()).await {
                        Ok(outcome) => outcome_ack(utterance_id, outcome),
                        Err(err @ Error::Unavailable(_)) => return Err(err.into()),
                        Err(err) => pb::call_ack::Ack::Rejected(pb::EventRejected {
                            utterance_id,
                            code: err.code() as i32,
                            message: err.public_message(),
                        }),
                    }
                }
                Some(pb::call_event::Event::End(_)) => {
                    let call_id = handle.meta().call_id.to_string();
                    let kinds = handle.end().await?;
                    let closed = pb::call_ack::Ack::Closed(pb::CallClosed {
                        call_id,
                        alert_kinds: kinds.iter().map(|k| k.name().to_string()).collect(),
                    });
                    let _ = tx.send(Ok(pb::CallAck { ack: Some(closed) })).await;
                    return Ok(());
                }
                Some(pb::call_event::Event::Start(_)) => {
                    let err =
                        Error::FailedPrecondition("this stream's call has already started".into());
                    return Err(self.sessions.reject(Reject::SecondStart, err).into());
                }
                None => return Err(Error::InvalidArgument("empty call event".into()).into()),
            };
            if tx.send(Ok(pb::CallAck { ack: Some(ack) })).await.is_err() {
                return Ok(());
            }
        }
    }

    /// A message that could not be read from a call stream. Oversized and malformed messages
    /// are the client's fault and get their own status; a broken transport has nobody to tell.
    fn inbound_error(&self, status: Status) -> Status {
        let max = self.sessions.config().server.max_message_bytes;
        let (reason, err) = match status.code() {
            tonic::Code::OutOfRange => (
                Reject::MessageTooLarge,
                Error::ResourceExhausted(format!("message over server.max_message_bytes = {max}")),
            ),
            tonic::Code::Internal if !status.message().contains("EOF") => (
                Reject::BadMessage,
                Error::InvalidArgument("malformed message".into()),
            ),
            _ => return status,
        };
        tracing::warn!(reason = reason.name(), "call stream refused a message");
        self.sessions.reject(reason, err).into()
    }
}

fn outcome_ack(utterance_id: String, outcome: Outcome) -> pb::call_ack::Ack {
    match outcome {
        Outcome::Partial { seen } => pb::call_ack::Ack::Partial(pb::PartialAccepted {
            utterance_id,
            partials_seen: seen,
        }),
        Outcome::Final { result, duplicate } => pb::call_ack::Ack::Scored(pb::UtteranceScored {
            utterance_id,
            scores: Some(scores_to(&result.scores)),
            labels: result.labels.iter().map(|l| l.name().to_string()).collect(),
            alert_kinds: result.alerts.iter().map(|k| k.name().to_string()).collect(),
            duplicate,
            degraded: result.degraded,
        }),
    }
}

#[tonic::async_trait]
impl pb::alert_feed_server::AlertFeed for Api {
    type SubscribeStream = Pin<Box<dyn Stream<Item = Result<pb::AlertEvent, Status>> + Send>>;

    async fn subscribe(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        if request.get_ref().agent_id.trim().is_empty() {
            return Err(Error::InvalidArgument("agent_id is empty".into()).into());
        }
        let agent = AgentId(request.get_ref().agent_id.as_str().into());
        let team = self.sessions.alerts().team_of(&agent);
        self.authorize(
            &request,
            Action::Subscribe {
                agent: &agent,
                team: team.as_deref(),
            },
        )?;
        let req = request.into_inner();
        let cfg = self.sessions.config();
        let feed =
            self.sessions
                .alerts()
                .subscribe(&agent, req.resume_after, cfg.limits.subscriber_queue);
        tracing::info!(agent_id = %agent, resume_after = ?req.resume_after, "alert subscriber");
        // at shutdown the hub drops its senders: the stream ends after what is queued
        let stream = ReceiverStream::new(feed).map(|item| Ok(feed_to(item)));
        Ok(Response::new(Box::pin(stream)))
    }
}

#[tonic::async_trait]
impl pb::scoring_server::Scoring for Api {
    async fn score(
        &self,
        request: Request<pb::ScoreRequest>,
    ) -> Result<Response<pb::ScoreResponse>, Status> {
        self.authorize(&request, Action::Score)?;
        let req = request.into_inner();
        let cfg = self.sessions.config();
        if req.text.trim().is_empty() {
            return Err(Error::InvalidArgument("text is empty".into()).into());
        }
        session::check_text_len(&cfg.limits, &req.text)
            .map_err(|e| self.sessions.reject(Reject::TextTooLong, e))?;
        let lang = if req.language.is_empty() {
            guess_language(&req.text)
        } else {
            Lang::parse(&req.language).ok_or_else(|| {
                Error::InvalidArgument(format!("unknown language {:?}", req.language))
            })?
        };
        let speaker = match req.speaker {
            0 => Speaker::Unknown,
            s => speaker_from(s),
        };
        let text: Arc<str> = req.text.into();
        let scored = self
            .sessions
            .scorer()
            .score(text.clone(), &cfg, lang, speaker)
            .await?;
        Ok(Response::new(pb::ScoreResponse {
            scores: Some(scores_to(&scored.scores)),
            labels: scored.labels.iter().map(|l| l.name().to_string()).collect(),
            evidence: scored
                .evidence
                .iter()
                .map(|e| evidence_to(e, &text))
                .collect(),
            degraded: scored.degraded,
        }))
    }
}

#[tonic::async_trait]
impl pb::ops_server::Ops for Api {
    async fn status(
        &self,
        request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        self.authorize(&request, Action::Ops)?;
        let stats = &self.sessions.stats;
        Ok(Response::new(pb::StatusResponse {
            config_version: self.sessions.config().version,
            active_calls: self.sessions.active_calls() as u64,
            uptime_s: self.started.elapsed().as_secs(),
            degraded_finals: stats.degraded.load(std::sync::atomic::Ordering::Relaxed),
        }))
    }

    async fn export_call(
        &self,
        request: Request<pb::ExportCallRequest>,
    ) -> Result<Response<pb::ExportCallResponse>, Status> {
        self.authorize(&request, Action::Ops)?;
        let call_id = request.into_inner().call_id;
        session::valid_id("call_id", &call_id)?;
        let path = self.sessions.store().path().to_path_buf();
        let id = call_id.clone();
        // a read connection of its own: WAL lets it read beside the writer
        let rows = tokio::task::spawn_blocking(move || crate::incidents::export_call(&path, &id))
            .await
            .map_err(|e| Error::Internal(e.to_string()))?
            .map_err(|e| Error::Internal(e.to_string()))?;
        Ok(Response::new(pb::ExportCallResponse {
            call_id,
            incidents: rows.len() as u32,
            json: serde_json::Value::Array(rows).to_string(),
        }))
    }
}

impl From<pb::Utterance> for session::UtteranceIn {
    fn from(u: pb::Utterance) -> Self {
        session::UtteranceIn {
            utterance_id: u.utterance_id,
            speaker: speaker_from(u.speaker),
            text: u.text,
            is_final: u.is_final,
        }
    }
}

pub fn speaker_from(value: i32) -> Speaker {
    match pb::Speaker::try_from(value) {
        Ok(pb::Speaker::Agent) => Speaker::Agent,
        Ok(pb::Speaker::Customer) => Speaker::Customer,
        _ => Speaker::Unknown,
    }
}

pub fn scores_to(s: &Scores) -> pb::Scores {
    pb::Scores {
        threat: s.get(Label::Threat),
        harassment: s.get(Label::Harassment),
        profanity: s.get(Label::Profanity),
        self_harm: s.get(Label::SelfHarm),
        warning: s.get(Label::Warning),
    }
}

fn evidence_to(e: &Evidence, text: &str) -> pb::Evidence {
    pb::Evidence {
        label: e.label.name().to_string(),
        start: e.start as u32,
        end: e.end as u32,
        snippet: text.get(e.start..e.end).unwrap_or_default().to_string(),
        source: e.source.name().to_string(),
    }
}

fn kind_to(kind: AlertKind) -> pb::AlertKind {
    match kind {
        AlertKind::SuggestWarning => pb::AlertKind::SuggestWarning,
        AlertKind::HangUpAllowed => pb::AlertKind::HangUpAllowed,
        AlertKind::Escalate => pb::AlertKind::Escalate,
        AlertKind::AcuteProcedure => pb::AlertKind::AcuteProcedure,
        AlertKind::Debrief => pb::AlertKind::Debrief,
    }
}

pub fn alert_to(a: &Alert) -> pb::Alert {
    pb::Alert {
        seq: a.seq,
        agent_id: a.agent_id.to_string(),
        call_id: a.call_id.to_string(),
        utterance_id: a.utterance_id.to_string(),
        kind: kind_to(a.kind) as i32,
        kind_name: a.kind.name().to_string(),
        labels: a
            .labels
            .iter()
            .map(|(l, s)| pb::LabelScore {
                label: l.name().to_string(),
                score: *s,
            })
            .collect(),
        reason: a.reason.clone(),
        reason_en: a.reason_en.clone(),
        language: a.lang.code().to_string(),
        crisis_line: a.crisis_line.clone().unwrap_or_default(),
        report_to_police: a.report_to_police,
        created_unix_ms: a.created_unix_ms,
        evidence: a
            .evidence
            .iter()
            .map(|(e, snippet)| pb::Evidence {
                label: e.label.name().to_string(),
                start: e.start as u32,
                end: e.end as u32,
                snippet: snippet.clone(),
                source: e.source.name().to_string(),
            })
            .collect(),
        tenant: a.tenant.to_string(),
    }
}

fn feed_to(item: FeedItem) -> pb::AlertEvent {
    let event = match item {
        FeedItem::Alert(a) => pb::alert_event::Event::Alert(alert_to(&a)),
        FeedItem::Gap { from, to } => pb::alert_event::Event::Gap(pb::ReplayGap {
            from_seq: from,
            to_seq: to,
        }),
    };
    pb::AlertEvent { event: Some(event) }
}
