//! The alert policy: pure functions from (config, call flags, scored utterance) to alerts.
//!
//! No async, no I/O, no clock: everything comes in as arguments, so each row of the alert table
//! is a one-line test. The session layer owns the flags and applies decisions in utterance order.

use crate::config::PolicyConfig;
use crate::domain::{AlertKind, Label, LabelSet, Speaker};

/// What the policy remembers about a call. Small and `Copy`: the session keeps one per call.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CallFlags {
    /// The agent has given a formal warning.
    pub warned: bool,
    /// `suggest_warning` was sent.
    pub suggested: bool,
    /// `hang_up_allowed` was sent.
    pub hang_up_sent: bool,
    /// The caller expressed self-harm: the call must never be ended on them.
    pub self_harm: bool,
    /// The call will end with a debrief.
    pub debrief_due: bool,
}

/// A set of alert kinds (bit set, allocation-free).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AlertKinds(u8);

impl AlertKinds {
    pub fn with(self, kind: AlertKind) -> AlertKinds {
        AlertKinds(self.0 | 1 << kind as u8)
    }

    pub fn contains(self, kind: AlertKind) -> bool {
        self.0 & (1 << kind as u8) != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn iter(self) -> impl Iterator<Item = AlertKind> {
        AlertKind::ALL
            .into_iter()
            .filter(move |k| self.contains(*k))
    }
}

/// The outcome of one final utterance: the call's new flags and the alerts to raise.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Decision {
    pub flags: CallFlags,
    pub alerts: AlertKinds,
}

/// Apply one scored final utterance to a call.
pub fn on_final(
    cfg: &PolicyConfig,
    flags: CallFlags,
    speaker: Speaker,
    labels: LabelSet,
) -> Decision {
    let mut next = flags;
    let mut alerts = AlertKinds::default();
    match speaker {
        Speaker::Agent => {
            if labels.contains(Label::Warning) {
                next.warned = true;
            }
        }
        Speaker::Customer | Speaker::Unknown => {
            if labels.intersects(cfg.escalate) {
                alerts = alerts.with(AlertKind::Escalate);
            }
            if labels.intersects(cfg.acute_procedure) {
                alerts = alerts.with(AlertKind::AcuteProcedure);
                next.self_harm = true;
            }
            if !next.warned && !next.suggested && labels.intersects(cfg.suggest_warning) {
                alerts = alerts.with(AlertKind::SuggestWarning);
                next.suggested = true;
            }
            // a caller in crisis is never hung up on, whatever else they say
            if next.warned
                && !next.hang_up_sent
                && !next.self_harm
                && labels.intersects(cfg.hang_up_allowed)
            {
                alerts = alerts.with(AlertKind::HangUpAllowed);
                next.hang_up_sent = true;
            }
        }
    }
    if cfg.debrief_after.iter().any(|k| alerts.contains(*k)) {
        next.debrief_due = true;
    }
    Decision {
        flags: next,
        alerts,
    }
}

/// At call end: `debrief` when the call had what the config names in `debrief_after`.
pub fn on_end(flags: CallFlags) -> Option<AlertKind> {
    flags.debrief_due.then_some(AlertKind::Debrief)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use AlertKind::*;

    fn labels(names: &[Label]) -> LabelSet {
        names.iter().copied().collect()
    }

    fn run(turns: &[(Speaker, &[Label])]) -> (Vec<Vec<AlertKind>>, CallFlags) {
        let cfg = Config::embedded().policy;
        let mut flags = CallFlags::default();
        let mut out = Vec::new();
        for (speaker, ls) in turns {
            let d = on_final(&cfg, flags, *speaker, labels(ls));
            flags = d.flags;
            out.push(d.alerts.iter().collect());
        }
        (out, flags)
    }

    const C: Speaker = Speaker::Customer;
    const A: Speaker = Speaker::Agent;

    #[test]
    fn harassment_suggests_a_warning_once() {
        let (alerts, _) = run(&[(C, &[Label::Harassment]), (C, &[Label::Harassment])]);
        assert_eq!(alerts, vec![vec![SuggestWarning], vec![]]);
    }

    #[test]
    fn no_suggestion_after_the_agent_already_warned() {
        let (alerts, _) = run(&[(A, &[Label::Warning]), (C, &[Label::Harassment])]);
        assert_eq!(alerts, vec![vec![], vec![HangUpAllowed]]);
    }

    #[test]
    fn warning_then_abuse_allows_hang_up_once() {
        let (alerts, flags) = run(&[
            (C, &[Label::Harassment]),
            (A, &[Label::Warning]),
            (C, &[Label::Harassment, Label::Profanity]),
            (C, &[Label::Harassment]),
        ]);
        assert_eq!(
            alerts,
            vec![vec![SuggestWarning], vec![], vec![HangUpAllowed], vec![]]
        );
        assert!(flags.hang_up_sent);
    }

    #[test]
    fn a_threat_after_a_warning_allows_hang_up_and_escalates() {
        let (alerts, _) = run(&[(A, &[Label::Warning]), (C, &[Label::Threat])]);
        assert_eq!(alerts[1], vec![HangUpAllowed, Escalate]);
    }

    #[test]
    fn every_threat_escalates() {
        let (alerts, flags) = run(&[(C, &[Label::Threat]), (C, &[]), (C, &[Label::Threat])]);
        assert_eq!(alerts, vec![vec![Escalate], vec![], vec![Escalate]]);
        assert_eq!(on_end(flags), Some(Debrief));
    }

    #[test]
    fn self_harm_gets_the_acute_procedure_and_never_hang_up() {
        let (alerts, flags) = run(&[
            (C, &[Label::SelfHarm]),
            (A, &[Label::Warning]),
            (C, &[Label::Harassment, Label::SelfHarm]),
            (C, &[Label::Threat]),
        ]);
        assert_eq!(alerts[0], vec![AcuteProcedure]);
        assert!(alerts.iter().flatten().all(|k| *k != HangUpAllowed));
        assert_eq!(alerts[2], vec![AcuteProcedure]);
        assert_eq!(alerts[3], vec![Escalate]);
        assert_eq!(on_end(flags), Some(Debrief));
    }

    #[test]
    fn self_harm_in_the_same_utterance_blocks_hang_up() {
        let (alerts, _) = run(&[
            (A, &[Label::Warning]),
            (C, &[Label::Harassment, Label::SelfHarm]),
        ]);
        assert_eq!(alerts[1], vec![AcuteProcedure]);
    }

    #[test]
    fn profanity_alone_and_legitimate_anger_raise_nothing() {
        let (alerts, flags) = run(&[(C, &[Label::Profanity]), (C, &[]), (A, &[])]);
        assert!(alerts.iter().all(Vec::is_empty));
        assert_eq!(on_end(flags), None);
    }

    #[test]
    fn harassment_alone_needs_no_debrief() {
        let (_, flags) = run(&[
            (C, &[Label::Harassment]),
            (A, &[Label::Warning]),
            (C, &[Label::Harassment]),
        ]);
        assert_eq!(on_end(flags), None);
    }

    #[test]
    fn agent_lines_never_raise_customer_alerts() {
        let (alerts, _) = run(&[(A, &[Label::Threat, Label::Harassment])]);
        assert_eq!(alerts, vec![Vec::<AlertKind>::new()]);
    }
}
