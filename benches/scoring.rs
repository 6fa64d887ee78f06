//! Scoring costs, each on a fixed set of realistic utterances (examples/utterances.jsonl):
//! - `tokenize`: the tokenizer alone, per utterance;
//! - `lexicon`: the lexicon scan, per utterance;
//! - `raw_model/batch_{1,8,32}`: the ONNX model called directly (the ceiling the service is
//!   measured against);
//! - `batcher/roundtrip`: one utterance through the service's queue, micro-batcher and
//!   oneshot reply, to compare with `raw_model/batch_1` (the batcher's overhead).
//!
//! Needs the built model (`make model`); without it the model benches are skipped.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

use callguard::config::Config;
use callguard::domain::{Lang, Speaker};
use callguard::scoring::Scorer;
use callguard::scoring::lexicon::Lexicon;
use callguard::scoring::model::{Engine, RawScore, Tokenize, Tokens};

fn utterances() -> Vec<String> {
    let text =
        std::fs::read_to_string("examples/utterances.jsonl").expect("examples/utterances.jsonl");
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["text"].as_str().map(str::to_string))
        .collect()
}

fn scoring(c: &mut Criterion) {
    let texts = utterances();
    let cfg = Config::embedded();
    let lexicon = Lexicon::builtin();
    let mut g = c.benchmark_group("lexicon");
    g.throughput(Throughput::Elements(texts.len() as u64));
    g.bench_function("scan", |b| {
        b.iter(|| {
            for t in &texts {
                black_box(lexicon.scan(t));
            }
        })
    });
    g.finish();

    if !cfg.model.dir.join("callguard.onnx").exists() {
        eprintln!("model not built (make model): skipping model benches");
        return;
    }
    let mut tok = Tokenize::load(&cfg.model.dir, cfg.model.max_tokens).expect("tokenizer");
    let mut g = c.benchmark_group("tokenize");
    g.throughput(Throughput::Elements(texts.len() as u64));
    let mut out = Tokens::default();
    g.bench_function("encode", |b| {
        b.iter(|| {
            for t in &texts {
                tok.encode_into(t, &mut out).expect("encode");
                black_box(&out);
            }
        })
    });
    g.finish();

    let mut g = c.benchmark_group("raw_model");
    g.sample_size(10);
    for batch in [1usize, 8, 32] {
        let mut engine = Engine::load(&cfg.model, batch).expect("model");
        let batch_texts: Vec<&str> = texts
            .iter()
            .cycle()
            .take(batch.max(texts.len()))
            .map(String::as_str)
            .collect();
        let mut results: Vec<RawScore> = Vec::new();
        g.throughput(Throughput::Elements(batch_texts.len() as u64));
        g.bench_with_input(BenchmarkId::new("batch", batch), &batch, |b, _| {
            b.iter(|| {
                engine.score_all(&batch_texts, &mut results).expect("score");
                black_box(&results);
            })
        });
    }
    g.finish();

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (scorer, _worker) = Scorer::start(&cfg).expect("scorer");
    let text: Arc<str> = texts[3].as_str().into();
    let mut g = c.benchmark_group("batcher");
    g.sample_size(20);
    g.bench_function("roundtrip", |b| {
        b.iter(|| {
            black_box(
                rt.block_on(scorer.score(text.clone(), &cfg, Lang::Sv, Speaker::Customer))
                    .expect("score"),
            )
        })
    });
    g.finish();
}

criterion_group!(benches, scoring);
criterion_main!(benches);
