//! Scoring: turn an utterance into label probabilities, labels and evidence.
//!
//! `Scorer` is the cheap, cloneable handle the session layer uses. Each final goes through a
//! bounded queue to the micro-batching worker thread (`batcher`) that owns the ONNX session
//! (`model`), and comes back through a oneshot. The lexicon (`lexicon`) runs inline: it is a few
//! regex scans. How the two combine per label is config (`[scoring]`). When the queue is full the
//! utterance is scored by the lexicon alone and marked degraded: a final is never dropped.

pub mod batcher;
pub mod lexicon;
pub mod model;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use tokio::sync::oneshot;

use crate::config::{AgentLines, Config, Source};
use crate::domain::{Evidence, EvidenceSource, Label, LabelSet, Lang, Scores, Speaker};
use crate::error::{Error, Result};
use batcher::{Job, Msg, Stats};
use lexicon::{Hits, Lexicon};
use model::{Engine, RawScore};

/// The verdict on one utterance.
#[derive(Clone, Debug, PartialEq)]
pub struct Scored {
    pub scores: Scores,
    pub labels: LabelSet,
    /// One entry per label in `labels` that has a span to show.
    pub evidence: Vec<Evidence>,
    /// The model was not used (queue full or model down): lexicon only.
    pub degraded: bool,
}

/// Handle to the scoring worker. Clones share the queue and the cache.
#[derive(Clone)]
pub struct Scorer {
    /// Bounded queue to the worker thread; full means overload (lexicon fallback).
    tx: SyncSender<Msg>,
    lexicon: &'static Lexicon,
    stats: Arc<Stats>,
    cache: Arc<ShortCache>,
}

type Generation = HashMap<Box<str>, RawScore>;

/// Model verdicts for short utterances, by exact text. Two generations: lookups promote from
/// the old one, and when the young one is full it becomes the old one, so memory is bounded
/// and frequent texts ("ja", "okej") stay.
pub struct ShortCache {
    max_bytes: usize,
    generation: usize,
    /// (young, old) generations.
    maps: Mutex<(Generation, Generation)>,
}

impl ShortCache {
    fn new(max_bytes: usize, entries: usize) -> ShortCache {
        ShortCache {
            max_bytes,
            generation: (entries / 2).max(1),
            maps: Mutex::new((HashMap::new(), HashMap::new())),
        }
    }

    fn applies(&self, text: &str) -> bool {
        text.len() <= self.max_bytes
    }

    fn get(&self, text: &str) -> Option<RawScore> {
        if !self.applies(text) {
            return None;
        }
        let mut maps = self.maps.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(hit) = maps.0.get(text) {
            return Some(*hit);
        }
        let hit = maps.1.remove(text)?;
        Self::insert_young(&mut maps, self.generation, text, hit);
        Some(hit)
    }

    fn put(&self, text: &str, score: RawScore) {
        if self.applies(text) {
            let mut maps = self.maps.lock().unwrap_or_else(|p| p.into_inner());
            Self::insert_young(&mut maps, self.generation, text, score);
        }
    }

    fn insert_young(
        maps: &mut (Generation, Generation),
        generation: usize,
        text: &str,
        score: RawScore,
    ) {
        if maps.0.len() >= generation {
            maps.1 = std::mem::take(&mut maps.0);
        }
        maps.0.insert(text.into(), score);
    }
}

impl Scorer {
    /// Load the model and start the worker thread. Loading errors are returned, not deferred.
    pub fn start(cfg: &Config) -> Result<(Scorer, JoinHandle<()>)> {
        let engine = Engine::load(&cfg.model, cfg.batching.max_batch)
            .map_err(|e| Error::Unavailable(e.to_string()))?;
        let (tx, rx) = std::sync::mpsc::sync_channel(cfg.batching.queue_capacity);
        let stats = Arc::new(Stats::default());
        let worker_stats = stats.clone();
        let batching = cfg.batching.clone();
        let worker = std::thread::Builder::new()
            .name("callguard-scoring".into())
            .spawn(move || batcher::run(engine, rx, batching, worker_stats))
            .map_err(|e| Error::Unavailable(format!("cannot start scoring thread: {e}")))?;
        let scorer = Scorer {
            tx,
            lexicon: Lexicon::builtin(),
            stats,
            cache: Arc::new(ShortCache::new(
                cfg.scoring.cache_max_bytes,
                cfg.scoring.cache_entries,
            )),
        };
        Ok((scorer, worker))
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Ask the worker to finish what is queued and stop (shutdown). Blocks while the queue is
    /// full, so call it from a blocking context.
    pub fn stop(&self) {
        let _ = self.tx.send(Msg::Stop);
    }

    /// Score one utterance under the config snapshot `cfg`.
    pub async fn score(
        &self,
        text: Arc<str>,
        cfg: &Config,
        lang: Lang,
        speaker: Speaker,
    ) -> Result<Scored> {
        let hits = self.lexicon.scan(&text);
        if !needs_model(cfg, speaker, &text, self.lexicon) {
            return Ok(combine(cfg, lang, speaker, None, &hits, false));
        }
        if let Some(raw) = self.cache.get(&text) {
            self.stats.cache_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(combine(cfg, lang, speaker, Some(&raw), &hits, false));
        }
        let (reply, answer) = oneshot::channel();
        let job = Job {
            text: text.clone(),
            enqueued: Instant::now(),
            reply,
        };
        match self.tx.try_send(Msg::Score(job)) {
            Ok(()) => {
                self.stats.queued.fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Full(_)) => {
                self.stats.shed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!("scoring queue full: lexicon fallback");
                return Ok(combine(cfg, lang, speaker, None, &hits, true));
            }
            Err(TrySendError::Disconnected(_)) => {
                return Err(Error::Unavailable("scoring worker stopped".into()));
            }
        }
        match answer.await {
            Ok(Ok(raw)) => {
                self.cache.put(&text, raw);
                Ok(combine(cfg, lang, speaker, Some(&raw), &hits, false))
            }
            Ok(Err(cause)) => {
                // a failed batch must not lose the utterance: log it and fall back
                tracing::error!(error = %cause, "model failed on a batch: lexicon fallback");
                Ok(combine(cfg, lang, speaker, None, &hits, true))
            }
            Err(_) => Err(Error::Unavailable("scoring worker stopped".into())),
        }
    }
}

/// Whether this utterance goes to the model: some label its speaker can carry takes the
/// model's score, and for agent lines, per `[scoring] agent_lines`.
pub fn needs_model(cfg: &Config, speaker: Speaker, text: &str, lexicon: &Lexicon) -> bool {
    let any = Label::ALL
        .into_iter()
        .any(|l| speaker.may_carry(l) && cfg.scoring.source(l) != Source::Lexicon);
    match (speaker, cfg.scoring.agent_lines) {
        (Speaker::Agent, AgentLines::Never) => false,
        (Speaker::Agent, AgentLines::Gated) => any && lexicon.may_warn(text),
        _ => any,
    }
}

/// Merge model and lexicon per `[scoring]`, apply the language's thresholds for this speaker,
/// and attach evidence for each label set. `raw` is `None` when the model was not used.
pub fn combine(
    cfg: &Config,
    lang: Lang,
    speaker: Speaker,
    raw: Option<&RawScore>,
    hits: &Hits,
    degraded: bool,
) -> Scored {
    let lexical = hits.scores();
    let mut scores = Scores::default();
    for label in Label::ALL {
        let model = raw.map(|r| r.scores.get(label));
        let lex = lexical.get(label);
        let value = match (cfg.scoring.source(label), model) {
            (Source::Model, Some(m)) => m,
            (Source::Max, Some(m)) => m.max(lex),
            // lexicon by choice, or the model was not used (fallback)
            (_, None) | (Source::Lexicon, _) => lex,
        };
        scores.set(label, value);
    }
    let labels = cfg.labels(lang, speaker, &scores);
    let evidence = labels
        .iter()
        .filter_map(|label| {
            let lex = hits
                .get(label)
                .map(|(s, e)| (s, e, EvidenceSource::Lexicon));
            let model = raw
                .and_then(|r| r.spans[label.index()])
                .map(|(s, e)| (s as usize, e as usize, EvidenceSource::Model));
            // the lexicon span is exact when it is what set the label; otherwise the model's
            let use_lexicon = cfg.scoring.source(label) != Source::Model && lex.is_some();
            let (start, end, source) = if use_lexicon { lex } else { model.or(lex) }?;
            Some(Evidence {
                label,
                start,
                end,
                source,
            })
        })
        .collect();
    Scored {
        scores,
        labels,
        evidence,
        degraded,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lexicon_fallback_still_labels_profanity() {
        let cfg = Config::embedded();
        let text = "fan vilken kö alltså";
        let hits = Lexicon::builtin().scan(text);
        let s = combine(&cfg, Lang::Sv, Speaker::Customer, None, &hits, true);
        assert!(s.degraded);
        assert!(s.labels.contains(Label::Profanity));
        assert_eq!(s.evidence[0].source, EvidenceSource::Lexicon);
        assert_eq!(&text[s.evidence[0].start..s.evidence[0].end], "fan");
    }

    #[test]
    fn model_scores_combine_per_source() {
        let cfg =
            crate::config::parse("[thresholds.sv]\nthreat = 0.5\nwarning = 0.5\n", "test").unwrap();
        let text = "det här är helt galet";
        let hits = Lexicon::builtin().scan(text);
        let raw = RawScore {
            scores: Scores([0.9, 0.2, 0.1, 0.0, 0.95]),
            spans: [Some((0, 3)), None, None, None, None],
        };
        let s = combine(&cfg, Lang::Sv, Speaker::Customer, Some(&raw), &hits, false);
        assert!(s.labels.contains(Label::Threat));
        // a customer never carries the agent's warning label
        assert!(!s.labels.contains(Label::Warning));
        assert_eq!(s.evidence.len(), 1);
        assert_eq!(s.evidence[0].source, EvidenceSource::Model);
    }
}
