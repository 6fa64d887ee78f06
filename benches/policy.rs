//! The pure alert policy and the label thresholding: per-utterance decisions must cost
//! nanoseconds beside the model's milliseconds.

use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;

use callguard::config::Config;
use callguard::domain::{Label, LabelSet, Lang, Scores, Speaker};
use callguard::policy::{self, CallFlags};

fn policy(c: &mut Criterion) {
    let cfg = Config::embedded();
    let turns: Vec<(Speaker, LabelSet)> = vec![
        (Speaker::Customer, LabelSet::EMPTY),
        (
            Speaker::Customer,
            [Label::Harassment, Label::Profanity].into_iter().collect(),
        ),
        (Speaker::Agent, [Label::Warning].into_iter().collect()),
        (Speaker::Customer, [Label::Threat].into_iter().collect()),
    ];
    c.bench_function("policy/on_final x4", |b| {
        b.iter(|| {
            let mut flags = CallFlags::default();
            for (speaker, labels) in &turns {
                let d = policy::on_final(&cfg.policy, flags, *speaker, *labels);
                flags = d.flags;
                black_box(d.alerts);
            }
            black_box(policy::on_end(flags))
        })
    });
    let scores = Scores([0.91, 0.4, 0.99, 0.02, 0.0]);
    c.bench_function("config/labels", |b| {
        b.iter(|| black_box(cfg.labels(Lang::Da, Speaker::Customer, black_box(&scores))))
    });
}

criterion_group!(benches, policy);
criterion_main!(benches);
