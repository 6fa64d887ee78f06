//! `callguard replay`: play recorded calls through the real gRPC API, as a telephony platform
//! and the agent's softphone would, and report the alerts each call raised.
//!
//! Input lines: `{"call_id", "lang", "turns": [{"speaker", "text"}]}`. Each call streams its
//! turns as final utterances (utterance id = turn index) while subscribed as the call's agent.
//! Output, one line per input line in order: `{"call_id", "alerts": [{"kind", "at_turn"}]}`.

use std::io::{BufRead, Write};
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use crate::domain::{AlertKind, Lang, Speaker};
use crate::proto as pb;
use crate::scoring::lexicon::guess_language;

/// Calls played at once: enough to fill model batches, few enough to stay gentle.
const CONCURRENT_CALLS: usize = 64;
/// How long to wait for an acknowledged alert to arrive on the subscription.
const ALERT_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("cannot connect to {addr}: {cause}")]
    Connect { addr: String, cause: String },
}

#[derive(Deserialize)]
struct CallLine {
    call_id: Value,
    #[serde(default)]
    lang: Option<String>,
    turns: Vec<Turn>,
}

#[derive(Deserialize)]
struct Turn {
    speaker: String,
    text: String,
}

/// Replay every call of `input` against the server at `endpoint` ("http://HOST:PORT").
/// Returns how many lines failed.
pub async fn replay_jsonl(
    endpoint: &str,
    input: impl BufRead,
    mut output: impl Write,
) -> Result<usize, ReplayError> {
    let channel = Channel::from_shared(endpoint.to_string())
        .map_err(|e| ReplayError::Connect {
            addr: endpoint.into(),
            cause: e.to_string(),
        })?
        .connect()
        .await
        .map_err(|e| ReplayError::Connect {
            addr: endpoint.into(),
            cause: e.to_string(),
        })?;
    let lines: Vec<String> = input.lines().collect::<Result<_, _>>()?;
    let lines: Vec<(usize, String)> = lines
        .into_iter()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .collect();
    let mut results: Vec<Option<Value>> = vec![None; lines.len()];
    let mut set = tokio::task::JoinSet::new();
    let mut pending = lines.into_iter().enumerate();
    let mut bad = 0;
    loop {
        while set.len() < CONCURRENT_CALLS {
            let Some((slot, (number, line))) = pending.next() else {
                break;
            };
            let channel = channel.clone();
            set.spawn(async move { (slot, replay_line(channel, slot, number + 1, &line).await) });
        }
        let Some(done) = set.join_next().await else {
            break;
        };
        let (slot, result) = done.map_err(std::io::Error::other)?;
        if result.get("error").is_some() {
            bad += 1;
        }
        results[slot] = Some(result);
    }
    for line in results.into_iter().flatten() {
        serde_json::to_writer(&mut output, &line).map_err(std::io::Error::from)?;
        output.write_all(b"\n")?;
    }
    output.flush()?;
    Ok(bad)
}

async fn replay_line(channel: Channel, slot: usize, number: usize, raw: &str) -> Value {
    let call: CallLine = match serde_json::from_str(raw) {
        Ok(call) => call,
        Err(err) => {
            let id = serde_json::from_str::<Value>(raw)
                .ok()
                .and_then(|v| v.get("call_id").cloned())
                .unwrap_or(Value::Null);
            return json!({ "call_id": id, "error": format!("line {number}: {err}") });
        }
    };
    match play(channel, slot, &call).await {
        Ok(alerts) => json!({
            "call_id": call.call_id,
            "alerts": alerts.iter().map(|(k, t)| json!({"kind": k.name(), "at_turn": t})).collect::<Vec<_>>(),
        }),
        Err(error) => {
            json!({ "call_id": call.call_id, "error": format!("line {number}: {error}") })
        }
    }
}

/// Stream one call and collect its alerts as (kind, turn index), in the order raised.
async fn play(
    channel: Channel,
    slot: usize,
    call: &CallLine,
) -> Result<Vec<(AlertKind, usize)>, String> {
    let shown_id = match &call.call_id {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let lang = match call.lang.as_deref().filter(|l| !l.is_empty()) {
        Some(code) => Lang::parse(code).ok_or_else(|| format!("unknown lang {code:?}"))?,
        None => {
            let all: Vec<&str> = call.turns.iter().map(|t| t.text.as_str()).collect();
            guess_language(&all.join(" "))
        }
    };
    let mut speakers = Vec::with_capacity(call.turns.len());
    for (i, turn) in call.turns.iter().enumerate() {
        match Speaker::parse(&turn.speaker) {
            Some(Speaker::Agent) => speakers.push(pb::Speaker::Agent),
            Some(Speaker::Customer) => speakers.push(pb::Speaker::Customer),
            _ => return Err(format!("turn {i}: speaker must be agent or customer")),
        }
    }
    // unique per replay line, so repeated call ids in a file do not collide
    let call_id = format!("replay-{slot}-{shown_id}");
    let agent_id = format!("replay-agent-{slot}");

    let mut feed = pb::alert_feed_client::AlertFeedClient::new(channel.clone())
        .subscribe(pb::SubscribeRequest {
            agent_id: agent_id.clone(),
            resume_after: None,
        })
        .await
        .map_err(|s| format!("subscribe: {}", s.message()))?
        .into_inner();

    let (tx, rx) = mpsc::channel(call.turns.len() + 2);
    let event = |e: pb::call_event::Event| pb::CallEvent { event: Some(e) };
    let _ = tx.try_send(event(pb::call_event::Event::Start(pb::CallStart {
        call_id,
        tenant: "replay".into(),
        agent_id,
        language: lang.code().into(),
        team: String::new(),
        resume: false,
    })));
    for (i, (turn, speaker)) in call.turns.iter().zip(&speakers).enumerate() {
        let _ = tx.try_send(event(pb::call_event::Event::Utterance(pb::Utterance {
            utterance_id: i.to_string(),
            speaker: *speaker as i32,
            text: turn.text.clone(),
            is_final: true,
            ..Default::default()
        })));
    }
    let _ = tx.try_send(event(pb::call_event::Event::End(pb::CallEnd {
        reason: "replay".into(),
    })));
    drop(tx);

    let mut acks = pb::ingest_client::IngestClient::new(channel)
        .stream_call(ReceiverStream::new(rx))
        .await
        .map_err(|s| format!("stream: {}", s.message()))?
        .into_inner();
    // every alert is acknowledged on the call stream; count them to know when the feed is done
    let mut expected = 0usize;
    while let Some(ack) = acks.next().await {
        let ack = ack.map_err(|s| format!("{:?}: {}", s.code(), s.message()))?;
        match ack.ack {
            Some(pb::call_ack::Ack::Scored(s)) => expected += s.alert_kinds.len(),
            Some(pb::call_ack::Ack::Closed(c)) => {
                expected += c.alert_kinds.len();
                break;
            }
            Some(pb::call_ack::Ack::Rejected(r)) => {
                return Err(format!("turn {}: {}", r.utterance_id, r.message));
            }
            _ => {}
        }
    }
    let last_turn = call.turns.len().saturating_sub(1);
    let mut alerts = Vec::with_capacity(expected);
    while alerts.len() < expected {
        let item = tokio::time::timeout(ALERT_WAIT, feed.next())
            .await
            .map_err(|_| "timed out waiting for an acknowledged alert".to_string())?;
        let Some(item) = item else {
            return Err("alert feed closed early".into());
        };
        let item = item.map_err(|s| s.message().to_string())?;
        if let Some(pb::alert_event::Event::Alert(a)) = item.event {
            let Some(kind) = AlertKind::parse(&a.kind_name) else {
                continue;
            };
            let turn = if kind == AlertKind::Debrief {
                last_turn
            } else {
                a.utterance_id.parse().unwrap_or(last_turn)
            };
            alerts.push((kind, turn));
        }
    }
    Ok(alerts)
}
