//! `callguard score`: score a JSONL file of utterances offline, with the service's own model,
//! lexicon, thresholds and label rules, without a server.
//!
//! Input lines: `{"id", "text", "lang"?, "speaker"?}`. Output: one line per input line, in
//! order: `{"id", "scores": {...}, "labels": [...]}`. A line that cannot be read yields
//! `{"id", "error"}` in its place, so outputs stay aligned with inputs.

use std::io::{BufRead, Write};

use serde::Deserialize;
use serde_json::{Value, json};

use crate::config::Config;
use crate::domain::{Label, Lang, Speaker};
use crate::scoring::lexicon::{Lexicon, guess_language};
use crate::scoring::model::{Engine, RawScore};
use crate::scoring::{Scored, combine, needs_model};

#[derive(Debug, thiserror::Error)]
pub enum OfflineError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Model(#[from] crate::scoring::model::ModelError),
}

#[derive(Deserialize)]
struct InputLine {
    #[serde(default)]
    id: Value,
    text: String,
    #[serde(default)]
    lang: Option<String>,
    #[serde(default)]
    speaker: Option<String>,
}

/// A parsed line, or why it could not be.
enum Parsed {
    Ok {
        id: Value,
        text: String,
        lang: Lang,
        speaker: Speaker,
    },
    Bad {
        id: Value,
        error: String,
    },
}

fn parse_line(number: usize, raw: &str) -> Parsed {
    let line: InputLine = match serde_json::from_str(raw) {
        Ok(line) => line,
        Err(err) => {
            let id = serde_json::from_str::<Value>(raw)
                .ok()
                .and_then(|v| v.get("id").cloned())
                .unwrap_or(Value::Null);
            return Parsed::Bad {
                id,
                error: format!("line {number}: {err}"),
            };
        }
    };
    let lang = match line.lang.as_deref().filter(|l| !l.is_empty()) {
        None => guess_language(&line.text),
        Some(code) => match Lang::parse(code) {
            Some(lang) => lang,
            None => {
                return Parsed::Bad {
                    id: line.id,
                    error: format!("line {number}: unknown lang {code:?}"),
                };
            }
        },
    };
    let speaker = match Speaker::parse(line.speaker.as_deref().unwrap_or("")) {
        Some(s) => s,
        None => {
            return Parsed::Bad {
                id: line.id,
                error: format!("line {number}: speaker must be agent or customer"),
            };
        }
    };
    Parsed::Ok {
        id: line.id,
        text: line.text,
        lang,
        speaker,
    }
}

/// The output line for one scored utterance.
pub fn output_line(id: &Value, scored: &Scored) -> Value {
    let scores: serde_json::Map<String, Value> = Label::ALL
        .into_iter()
        .map(|l| (l.name().to_string(), json!(round(scored.scores.get(l)))))
        .collect();
    let labels: Vec<&str> = scored.labels.iter().map(Label::name).collect();
    json!({ "id": id, "scores": scores, "labels": labels })
}

fn round(p: f32) -> f64 {
    (f64::from(p) * 1e6).round() / 1e6
}

/// Score every line of `input` into `output`. Returns how many lines were invalid.
pub fn score_jsonl(
    cfg: &Config,
    input: impl BufRead,
    mut output: impl Write,
) -> Result<usize, OfflineError> {
    let mut parsed = Vec::new();
    for (i, line) in input.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        parsed.push(parse_line(i + 1, &line));
    }
    let lexicon = Lexicon::builtin();
    // one engine for the whole file; only texts that need the model go through it
    let model_texts: Vec<&str> = parsed
        .iter()
        .filter_map(|p| match p {
            Parsed::Ok { text, speaker, .. } if needs_model(cfg, *speaker, text, lexicon) => {
                Some(text.as_str())
            }
            _ => None,
        })
        .collect();
    let mut raw: Vec<RawScore> = Vec::new();
    if !model_texts.is_empty() {
        let mut engine = Engine::load(&cfg.model, cfg.batching.max_batch)?;
        engine.score_all(&model_texts, &mut raw)?;
    }
    let mut next_raw = raw.iter();
    let mut bad = 0;
    for p in &parsed {
        let line = match p {
            Parsed::Ok {
                id,
                text,
                lang,
                speaker,
            } => {
                let model = if needs_model(cfg, *speaker, text, lexicon) {
                    next_raw.next()
                } else {
                    None
                };
                let scored = combine(cfg, *lang, *speaker, model, &lexicon.scan(text), false);
                output_line(id, &scored)
            }
            Parsed::Bad { id, error } => {
                bad += 1;
                tracing::warn!(%error, "input line skipped");
                json!({ "id": id, "error": error })
            }
        };
        serde_json::to_writer(&mut output, &line).map_err(std::io::Error::from)?;
        output.write_all(b"\n")?;
    }
    output.flush()?;
    Ok(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_parse_with_defaults_and_errors() {
        match parse_line(1, r#"{"id":"a","text":"jag har inte fått mitt paket"}"#) {
            Parsed::Ok { lang, speaker, .. } => {
                assert_eq!(lang, Lang::Sv);
                assert_eq!(speaker, Speaker::Unknown);
            }
            Parsed::Bad { error, .. } => panic!("{error}"),
        }
        assert!(
            matches!(parse_line(2, r#"{"id":7,"text":"x","lang":"de"}"#), Parsed::Bad { id, .. } if id == json!(7))
        );
        assert!(matches!(parse_line(3, "not json"), Parsed::Bad { .. }));
        assert!(matches!(
            parse_line(4, r#"{"id":1,"text":"x","speaker":"robot"}"#),
            Parsed::Bad { .. }
        ));
    }
}
