//! Fuzzing entry points: raw bytes in, the real parsing, scoring and policy code run, and a
//! panic only where that code panics or one of its promises breaks.
//!
//! Shared by the cargo-fuzz targets in `fuzz/` (libFuzzer, `make fuzz`) and by
//! `tests/fuzz_smoke.rs` (the committed seeds plus deterministic mutations, in CI). No model,
//! no runtime, no I/O: utterances are scored by `scoring::combine` without a model score, the
//! path a live call takes when the scoring queue is full, so the policy sees real labels.
//!
//! Everything here calls project code; nothing re-implements it. Where the server's checks
//! sit inside async handlers (`api::Api::drive_call`, `session::CallHandle::utterance`), the
//! harness keeps only the stream's shape (start, utterances, end) and runs the id and
//! language checks that are functions of their own.

use std::sync::LazyLock;

use prost::Message;

use crate::api::scores_to;
use crate::config::{self, Config};
use crate::domain::{AlertKind, Label, LabelSet, Lang, Scores, Speaker};
use crate::policy::{self, AlertKinds, CallFlags};
use crate::proto as pb;
use crate::scoring::lexicon::{Lexicon, guess_language};
use crate::scoring::{Scored, combine, needs_model};
use crate::session::{UtteranceIn, check_utterance, optional_id, valid_id};

/// Parsed once: `Config::embedded` parses TOML, which would dominate every input's cost.
static EMBEDDED: LazyLock<Config> = LazyLock::new(Config::embedded);

const SPEAKERS: [Speaker; 3] = [Speaker::Agent, Speaker::Customer, Speaker::Unknown];

/// `config::parse` on any text. An accepted config must be usable as the server uses it.
pub fn config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let cfg = match config::parse(&text, "fuzz") {
        Ok(cfg) => cfg,
        Err(err) => {
            // the message is logged on a rejected reload: building it must not panic either
            let _ = err.to_string();
            return;
        }
    };
    let nothing = Scores::default();
    let certain = Scores([1.0; Label::COUNT]);
    for lang in Lang::ALL {
        for label in Label::ALL {
            let t = cfg.threshold(lang, label);
            assert!(t > 0.0 && t <= 1.0, "threshold {lang}/{label:?} = {t}");
        }
        // thresholds in (0, 1]: a zero score sets no label, a certain one every label it may
        for speaker in SPEAKERS {
            assert!(cfg.labels(lang, speaker, &nothing).is_empty());
            let carried: LabelSet = Label::ALL
                .into_iter()
                .filter(|l| speaker.may_carry(*l))
                .collect();
            assert_eq!(cfg.labels(lang, speaker, &certain), carried);
        }
        for kind in AlertKind::ALL {
            let _ = cfg.reason(lang, kind);
        }
    }
    assert!((1..=256).contains(&cfg.batching.max_batch));
    assert!((8..=512).contains(&cfg.model.max_tokens));
    assert!(cfg.batching.max_tokens_per_batch >= cfg.model.max_tokens);
    assert!((1..=64).contains(&cfg.model.threads));
    assert!(cfg.batching.queue_capacity > 0 && cfg.batching.max_wait_ms <= 1000);
    let l = &cfg.limits;
    assert!(l.max_text_bytes > 0 && l.max_calls > 0 && l.call_idle_expiry_s > 0);
    assert!(l.alert_replay_per_agent > 0 && l.subscriber_queue > 0);
    assert!(cfg.incidents.retention_days > 0);
    let p = &cfg.policy;
    for set in [
        p.suggest_warning,
        p.hang_up_allowed,
        p.escalate,
        p.acute_procedure,
    ] {
        assert!(
            !set.contains(Label::Warning),
            "policy lists the agent's label"
        );
    }
    assert!(cfg.server.addr.parse::<std::net::SocketAddr>().is_ok());
    let _ = cfg.idle_expiry();
}

/// The lexicon and language guess on any text, and the lexicon-only verdict per speaker.
pub fn text(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let lexicon = Lexicon::builtin();
    let hits = lexicon.scan(&text);
    for label in Label::ALL {
        if let Some((start, end)) = hits.get(label) {
            assert_span(&text, start, end);
            // evidence is the matched words themselves: alone, they match again, whole
            let alone = lexicon.scan(&text[start..end]).get(label);
            assert_eq!(
                alone,
                Some((0, end - start)),
                "{label:?} span {start}..{end}"
            );
        }
    }
    let lang = guess_language(&text);
    // matching is case-insensitive: ASCII case keeps byte offsets, so spans must not move
    let shouted = text.to_ascii_uppercase();
    assert_eq!(lexicon.scan(&shouted), hits, "scan depends on ASCII case");
    assert_eq!(guess_language(&shouted), lang, "language depends on case");
    assert_eq!(lexicon.may_warn(&shouted), lexicon.may_warn(&text));
    // the gate decides which agent lines can be warnings: it must pass the lexicon's own
    assert!(
        hits.get(Label::Warning).is_none() || lexicon.may_warn(&text),
        "a lexicon warning that the agent-line gate turns away"
    );
    for speaker in SPEAKERS {
        let _ = needs_model(&EMBEDDED, speaker, &text, lexicon);
        let scored = combine(&EMBEDDED, lang, speaker, None, &hits, true);
        assert_lexicon_verdict(&text, speaker, &hits, &scored);
    }
}

/// A length-delimited sequence of `CallEvent`s, as one or more call streams would carry them,
/// through the checks, the lexicon-only scoring and the policy, with `CallAudit` watching.
/// Returns every alert kind raised, so that seeds can show what they reach.
pub fn call_events(data: &[u8]) -> AlertKinds {
    let cfg = &*EMBEDDED;
    let lexicon = Lexicon::builtin();
    let mut buf = data;
    let mut call: Option<(Lang, CallFlags, CallAudit)> = None;
    let mut raised = AlertKinds::default();
    while !buf.is_empty() {
        // a frame that does not decode ends the stream, as a transport error would
        let Ok(event) = pb::CallEvent::decode_length_delimited(&mut buf) else {
            break;
        };
        match (event.event, call.as_mut()) {
            (Some(pb::call_event::Event::Start(start)), None) => call = open(&start),
            (Some(pb::call_event::Event::Utterance(u)), Some((lang, flags, audit))) => {
                let u = UtteranceIn::from(u);
                // the handler's own checks; refused events and partials never reach the policy
                if check_utterance(&cfg.limits, &u).is_err() || !u.is_final {
                    continue;
                }
                let speaker = u.speaker;
                let hits = lexicon.scan(&u.text);
                let _ = needs_model(cfg, speaker, &u.text, lexicon);
                let scored = combine(cfg, *lang, speaker, None, &hits, true);
                assert_lexicon_verdict(&u.text, speaker, &hits, &scored);
                let _ = scores_to(&scored.scores);
                let decision = policy::on_final(&cfg.policy, *flags, speaker, scored.labels);
                audit.on_final(speaker, scored.labels, decision.alerts);
                *flags = decision.flags;
                raised = decision.alerts.iter().fold(raised, AlertKinds::with);
            }
            (Some(pb::call_event::Event::End(_)), Some((_, flags, audit))) => {
                let end = policy::on_end(*flags);
                audit.on_end(end);
                raised = end.into_iter().fold(raised, AlertKinds::with);
                call = None; // the stream ends; a later start is a new stream
            }
            // before start, a second start, an empty event: the stream is refused
            _ => call = None,
        }
    }
    raised
}

/// The id and language checks of `Sessions::open`; `None` when the start is refused.
fn open(start: &pb::CallStart) -> Option<(Lang, CallFlags, CallAudit)> {
    let ids_ok = valid_id("call_id", &start.call_id).is_ok()
        && valid_id("agent_id", &start.agent_id).is_ok()
        && optional_id("tenant", &start.tenant).is_ok()
        && optional_id("team", &start.team).is_ok();
    let lang = Lang::parse(&start.language)?;
    ids_ok.then(|| (lang, CallFlags::default(), CallAudit::default()))
}

fn assert_span(text: &str, start: usize, end: usize) {
    assert!(
        start < end && end <= text.len(),
        "span {start}..{end} in {} bytes",
        text.len()
    );
    assert!(
        text.is_char_boundary(start) && text.is_char_boundary(end),
        "span {start}..{end} splits a character"
    );
}

/// Without a model every score is the lexicon's 0 or 1 and thresholds are in (0, 1]: a label
/// is set exactly where the lexicon hit and the speaker may carry it, with that hit as evidence.
fn assert_lexicon_verdict(
    text: &str,
    speaker: Speaker,
    hits: &crate::scoring::lexicon::Hits,
    scored: &Scored,
) {
    for label in Label::ALL {
        let expected = hits.get(label).is_some() && speaker.may_carry(label);
        assert_eq!(scored.labels.contains(label), expected, "{label:?}");
    }
    assert_eq!(scored.evidence.len(), scored.labels.iter().count());
    for e in &scored.evidence {
        assert!(scored.labels.contains(e.label));
        assert_eq!(Some((e.start, e.end)), hits.get(e.label));
        assert_span(text, e.start, e.end);
    }
}

/// The policy's promises, checked utterance by utterance against what the call has seen.
///
/// Stated in labels for the embedded `[policy]`: threat escalates, self_harm starts the acute
/// procedure, and both end the call with a debrief. `tests/policy_props.rs` drives it too.
#[derive(Clone, Debug, Default)]
pub struct CallAudit {
    /// An earlier agent line was labelled `warning`.
    agent_warned: bool,
    /// A caller line so far was labelled `self_harm`.
    self_harm: bool,
    /// A caller line so far was labelled `threat` or `self_harm`.
    serious: bool,
    suggestions: u32,
    hang_ups: u32,
}

impl CallAudit {
    /// One final: its speaker, its labels and the alerts the policy raised for it.
    pub fn on_final(&mut self, speaker: Speaker, labels: LabelSet, alerts: AlertKinds) {
        // `Unknown` (no speaker given) is read as the caller, as the policy reads it
        let caller = speaker != Speaker::Agent;
        let threat = caller && labels.contains(Label::Threat);
        let self_harm = caller && labels.contains(Label::SelfHarm);
        self.self_harm |= self_harm;
        self.serious |= threat || self_harm;
        // `AlertKinds` is a set: containing escalate means exactly one escalate
        assert_eq!(
            alerts.contains(AlertKind::Escalate),
            threat,
            "escalate iff a caller threat: {speaker:?} {labels:?} -> {alerts:?}"
        );
        assert_eq!(
            alerts.contains(AlertKind::AcuteProcedure),
            self_harm,
            "acute_procedure iff caller self-harm: {speaker:?} {labels:?} -> {alerts:?}"
        );
        assert!(caller || alerts.is_empty(), "agent line raised {alerts:?}");
        assert!(!alerts.contains(AlertKind::Debrief), "debrief mid-call");
        if alerts.contains(AlertKind::HangUpAllowed) {
            assert!(
                self.agent_warned,
                "hang_up_allowed without an earlier agent warning"
            );
            assert!(
                !self.self_harm,
                "hang_up_allowed at or after self-harm in the call"
            );
            self.hang_ups += 1;
            assert_eq!(self.hang_ups, 1, "hang_up_allowed twice in one call");
        }
        if alerts.contains(AlertKind::SuggestWarning) {
            self.suggestions += 1;
            assert_eq!(self.suggestions, 1, "suggest_warning twice in one call");
        }
        self.agent_warned |= speaker == Speaker::Agent && labels.contains(Label::Warning);
    }

    /// The call ended with `end` from `policy::on_end`.
    pub fn on_end(&self, end: Option<AlertKind>) {
        assert_eq!(
            end == Some(AlertKind::Debrief),
            self.serious,
            "debrief iff threat or self-harm: got {end:?}"
        );
        assert!(end.is_none() || end == Some(AlertKind::Debrief));
    }
}
