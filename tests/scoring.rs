//! The real model, called directly: determinism across batches, CLI contracts, evidence.

use std::io::Cursor;

use callguard::config::Config;
use callguard::scoring::model::{Engine, RawScore};

const TEXTS: [&str; 10] = [
    "jag vet var du bor och jag kommer hem till dig ikväll med en kniv",
    "ja",
    "hvorfor har strømregningen min blitt tre ganger så høy som i fjor",
    "eg har ikkje fått pakken min enno og det er to veker sidan",
    "hvis du fortsætter med at tale sådan til mig så lægger jeg på nu",
    "okej",
    "du är en värdelös jävla idiot och du borde skämmas",
    "jeg orker ikke mer, jeg kommer til å ta livet mitt i kveld",
    "det här är en skandal och jag ringer Konsumentverket och pressen imorgon, det kan du lita på, för nu har ni gått för långt med era priser",
    "mm",
];

fn score_alone(engine: &mut Engine, text: &str) -> RawScore {
    let mut out = Vec::new();
    engine.score_all(&[text], &mut out).expect("score");
    out[0]
}

#[test]
fn scores_do_not_depend_on_batch_neighbours() {
    let cfg = Config::embedded();
    let mut engine = Engine::load(&cfg.model, 32).expect("model (make model)");
    let alone: Vec<RawScore> = TEXTS.iter().map(|t| score_alone(&mut engine, t)).collect();
    // mixed batches of different sizes, orders and lengths
    let mut mixed = Vec::new();
    let reversed: Vec<&str> = TEXTS.iter().rev().copied().collect();
    let doubled: Vec<&str> = TEXTS.iter().chain(TEXTS.iter()).copied().collect();
    for batch in [&TEXTS[..], &reversed[..], &doubled[..], &TEXTS[3..7]] {
        engine.score_all(batch, &mut mixed).expect("score");
        for (text, got) in batch.iter().zip(&mixed) {
            let i = TEXTS.iter().position(|t| t == text).expect("known text");
            for (a, b) in alone[i].scores.0.iter().zip(got.scores.0.iter()) {
                assert!((a - b).abs() < 1e-3, "{text:?}: alone {a} vs batched {b}");
            }
        }
    }
    // and through the micro-batcher, which groups by length
    let mut slots = Vec::new();
    for (i, text) in TEXTS.iter().enumerate() {
        engine.prepare(i, text).expect("prepare");
    }
    engine.run_prepared(TEXTS.len(), &mut slots).expect("run");
    for (i, got) in slots.iter().enumerate() {
        for (a, b) in alone[i].scores.0.iter().zip(got.scores.0.iter()) {
            assert!(
                (a - b).abs() < 1e-3,
                "{:?}: alone {a} vs micro-batched {b}",
                TEXTS[i]
            );
        }
    }
}

#[test]
fn evidence_points_into_the_text() {
    let cfg = Config::embedded();
    let mut engine = Engine::load(&cfg.model, 8).expect("model");
    let raw = score_alone(&mut engine, TEXTS[0]);
    let (s, e) = raw.spans[0].expect("a threat span");
    let span = &TEXTS[0][s as usize..e as usize];
    assert!(!span.is_empty() && span.len() < TEXTS[0].len(), "{span:?}");
}

#[test]
fn score_command_keeps_order_and_reports_bad_lines() {
    let cfg = Config::embedded();
    let input = concat!(
        r#"{"id":"a","text":"du är en värdelös jävla idiot","lang":"sv","speaker":"customer"}"#,
        "\n",
        r#"{"id":2,"text":"hvis du fortsætter sådan lægger jeg på","lang":"da","speaker":"agent"}"#,
        "\n",
        "this is not json\n",
        r#"{"id":"d","text":"eg har ikkje fått pakken min"}"#,
        "\n",
    );
    let mut out = Vec::new();
    let bad = callguard::offline::score_jsonl(&cfg, Cursor::new(input), &mut out).expect("score");
    assert_eq!(bad, 1);
    let lines: Vec<serde_json::Value> = String::from_utf8(out)
        .expect("utf-8")
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    assert_eq!(lines.len(), 4);
    assert_eq!(lines[0]["id"], "a");
    assert!(
        lines[0]["labels"]
            .as_array()
            .expect("labels")
            .iter()
            .any(|l| l == "harassment")
    );
    assert_eq!(lines[1]["id"], 2);
    assert_eq!(lines[1]["labels"], serde_json::json!(["warning"]));
    assert!(lines[2]["error"].is_string());
    assert_eq!(lines[3]["labels"], serde_json::json!([]));
    for key in ["threat", "harassment", "profanity", "self_harm", "warning"] {
        assert!(lines[0]["scores"][key].is_number(), "{key}");
    }
}
