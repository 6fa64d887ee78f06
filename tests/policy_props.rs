//! Property tests of the alert policy over whole calls: random turns (speaker, scores) are
//! labelled by the embedded config's real thresholds (`Config::labels`) and fed to
//! `policy::on_final` in order, then `policy::on_end`. `fuzzing::CallAudit` checks, per call:
//!
//! - no `hang_up_allowed` unless an earlier agent line was labelled `warning`;
//! - no `hang_up_allowed` at or after a caller's `self_harm` (the policy's rule: a caller in
//!   crisis is never hung up on; a hang-up allowed before the crisis cannot be taken back);
//! - each caller line labelled `threat` yields exactly one `escalate`, and no other line does;
//! - `acute_procedure` exactly on caller lines labelled `self_harm`; agent lines raise nothing;
//! - `suggest_warning` and `hang_up_allowed` at most once per call;
//! - `debrief` at the end if and only if a threat or self-harm occurred.

use std::sync::LazyLock;

use callguard::config::Config;
use callguard::domain::{Label, LabelSet, Lang, Scores, Speaker};
use callguard::fuzzing::CallAudit;
use callguard::policy::{self, CallFlags};
use proptest::prelude::*;

static CFG: LazyLock<Config> = LazyLock::new(Config::embedded);

/// A score relative to the label's threshold, so that every label is set often enough.
#[derive(Clone, Copy, Debug)]
enum Level {
    /// This fraction of the threshold.
    Below(f32),
    At,
    /// This fraction of the way from the threshold to 1.
    Above(f32),
}

impl Level {
    fn score(self, threshold: f32) -> f32 {
        match self {
            Level::Below(f) => threshold * f,
            Level::At => threshold,
            Level::Above(f) => threshold + (1.0 - threshold) * f,
        }
    }
}

fn level() -> impl Strategy<Value = Level> {
    prop_oneof![
        5 => (0.0f32..1.0).prop_map(Level::Below),
        1 => Just(Level::At),
        2 => (0.0f32..=1.0).prop_map(Level::Above),
    ]
}

fn speaker() -> impl Strategy<Value = Speaker> {
    prop_oneof![
        3 => Just(Speaker::Customer),
        3 => Just(Speaker::Agent),
        1 => Just(Speaker::Unknown),
    ]
}

fn lang() -> impl Strategy<Value = Lang> {
    proptest::sample::select(Lang::ALL.to_vec())
}

/// Run one call through the policy with the audit watching each step.
fn audit_call(turns: impl IntoIterator<Item = (Speaker, LabelSet)>) {
    let mut flags = CallFlags::default();
    let mut audit = CallAudit::default();
    for (speaker, labels) in turns {
        let decision = policy::on_final(&CFG.policy, flags, speaker, labels);
        audit.on_final(speaker, labels, decision.alerts);
        flags = decision.flags;
    }
    audit.on_end(policy::on_end(flags));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    /// Labels as the service sets them: scores against the real per-language thresholds.
    #[test]
    fn scored_calls_keep_the_policy_promises(
        lang in lang(),
        turns in proptest::collection::vec((speaker(), proptest::array::uniform5(level())), 0..40),
    ) {
        audit_call(turns.into_iter().map(|(speaker, levels)| {
            let scores = Scores(std::array::from_fn(|i| {
                levels[i].score(CFG.threshold(lang, Label::ALL[i]))
            }));
            (speaker, CFG.labels(lang, speaker, &scores))
        }));
    }

    /// Any label set on any speaker, including ones thresholds never give (an agent's threat).
    #[test]
    fn arbitrary_label_sets_keep_the_policy_promises(
        turns in proptest::collection::vec((speaker(), 0u8..32), 0..40),
    ) {
        audit_call(turns.into_iter().map(|(speaker, bits)| {
            let labels = Label::ALL
                .into_iter()
                .filter(|l| bits & (1 << l.index()) != 0)
                .collect();
            (speaker, labels)
        }));
    }
}
