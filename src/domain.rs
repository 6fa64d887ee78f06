//! The vocabulary every layer shares: ids, languages, speakers, labels, scores and alert kinds.
//!
//! A leaf module like `config` and `error`: it imports nothing of ours, and any module may use it.
//! Parsing from wire strings lives here so the API, the CLI and the config agree on spelling.

use std::fmt;
use std::sync::Arc;

/// A call id as the telephony platform sends it. Cheap to clone (shared string).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CallId(pub Arc<str>);

/// An agent id; alert feeds and sequence numbers are per agent.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AgentId(pub Arc<str>);

impl fmt::Display for CallId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for AgentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The four written varieties Callguard serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Lang {
    Sv,
    Nb,
    Nn,
    Da,
}

impl Lang {
    pub const ALL: [Lang; 4] = [Lang::Sv, Lang::Nb, Lang::Nn, Lang::Da];

    /// Accepts the codes a telephony platform is likely to send: `sv`, `nb`, `nn`, `da`, `no`
    /// (read as Bokmål) and region-tagged forms such as `sv-SE` or `nb_NO`.
    pub fn parse(code: &str) -> Option<Lang> {
        let base = code.split(['-', '_']).next().unwrap_or("");
        match base.to_ascii_lowercase().as_str() {
            "sv" | "swe" => Some(Lang::Sv),
            "nb" | "no" | "nob" | "nor" => Some(Lang::Nb),
            "nn" | "nno" => Some(Lang::Nn),
            "da" | "dan" => Some(Lang::Da),
            _ => None,
        }
    }

    pub fn code(self) -> &'static str {
        match self {
            Lang::Sv => "sv",
            Lang::Nb => "nb",
            Lang::Nn => "nn",
            Lang::Da => "da",
        }
    }
}

impl fmt::Display for Lang {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// Who spoke. `Unknown` (only from `callguard score` without a speaker) lets every label count.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Speaker {
    Agent,
    Customer,
    Unknown,
}

impl Speaker {
    pub fn parse(value: &str) -> Option<Speaker> {
        match value.to_ascii_lowercase().as_str() {
            "agent" => Some(Speaker::Agent),
            "customer" | "caller" => Some(Speaker::Customer),
            "" | "unknown" => Some(Speaker::Unknown),
            _ => None,
        }
    }

    /// Whether a label can apply to this speaker: `warning` is the agent's, the rest the customer's.
    pub fn may_carry(self, label: Label) -> bool {
        match self {
            Speaker::Unknown => true,
            Speaker::Agent => label == Label::Warning,
            Speaker::Customer => label != Label::Warning,
        }
    }
}

/// The five labels, in the order of the model's output columns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Label {
    Threat = 0,
    Harassment = 1,
    Profanity = 2,
    SelfHarm = 3,
    Warning = 4,
}

impl Label {
    pub const COUNT: usize = 5;
    pub const ALL: [Label; 5] = [
        Label::Threat,
        Label::Harassment,
        Label::Profanity,
        Label::SelfHarm,
        Label::Warning,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Label::Threat => "threat",
            Label::Harassment => "harassment",
            Label::Profanity => "profanity",
            Label::SelfHarm => "self_harm",
            Label::Warning => "warning",
        }
    }

    pub fn parse(name: &str) -> Option<Label> {
        Label::ALL.into_iter().find(|l| l.name() == name)
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// Probabilities per label, indexed by `Label as usize`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Scores(pub [f32; Label::COUNT]);

impl Scores {
    pub fn get(&self, label: Label) -> f32 {
        self.0[label.index()]
    }

    pub fn set(&mut self, label: Label, value: f32) {
        self.0[label.index()] = value;
    }
}

/// A set of labels as a bit set: copyable, allocation-free, ordered like `Label::ALL`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct LabelSet(u8);

impl LabelSet {
    pub const EMPTY: LabelSet = LabelSet(0);

    pub fn with(self, label: Label) -> LabelSet {
        LabelSet(self.0 | 1 << label.index())
    }

    pub fn contains(self, label: Label) -> bool {
        self.0 & (1 << label.index()) != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn iter(self) -> impl Iterator<Item = Label> {
        Label::ALL.into_iter().filter(move |l| self.contains(*l))
    }

    pub fn intersects(self, other: LabelSet) -> bool {
        self.0 & other.0 != 0
    }
}

impl FromIterator<Label> for LabelSet {
    fn from_iter<I: IntoIterator<Item = Label>>(iter: I) -> Self {
        iter.into_iter().fold(LabelSet::EMPTY, LabelSet::with)
    }
}

/// What the softphone is told to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AlertKind {
    SuggestWarning,
    HangUpAllowed,
    Escalate,
    AcuteProcedure,
    Debrief,
}

impl AlertKind {
    pub const ALL: [AlertKind; 5] = [
        AlertKind::SuggestWarning,
        AlertKind::HangUpAllowed,
        AlertKind::Escalate,
        AlertKind::AcuteProcedure,
        AlertKind::Debrief,
    ];

    pub fn name(self) -> &'static str {
        match self {
            AlertKind::SuggestWarning => "suggest_warning",
            AlertKind::HangUpAllowed => "hang_up_allowed",
            AlertKind::Escalate => "escalate",
            AlertKind::AcuteProcedure => "acute_procedure",
            AlertKind::Debrief => "debrief",
        }
    }

    pub fn parse(name: &str) -> Option<AlertKind> {
        AlertKind::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// Why a label fired: a byte span of the utterance text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Evidence {
    pub label: Label,
    pub start: usize,
    pub end: usize,
    pub source: EvidenceSource,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EvidenceSource {
    /// A word or phrase of the lexicon matched.
    Lexicon,
    /// The words that contributed most to the model's score.
    Model,
}

impl EvidenceSource {
    pub fn name(self) -> &'static str {
        match self {
            EvidenceSource::Lexicon => "lexicon",
            EvidenceSource::Model => "model",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn languages_parse_platform_codes() {
        assert_eq!(Lang::parse("sv-SE"), Some(Lang::Sv));
        assert_eq!(Lang::parse("no"), Some(Lang::Nb));
        assert_eq!(Lang::parse("nn_NO"), Some(Lang::Nn));
        assert_eq!(Lang::parse("DA"), Some(Lang::Da));
        assert_eq!(Lang::parse("de"), None);
        assert_eq!(Lang::parse(""), None);
    }

    #[test]
    fn label_sets_round_trip() {
        let set: LabelSet = [Label::Threat, Label::Warning].into_iter().collect();
        assert!(set.contains(Label::Threat) && set.contains(Label::Warning));
        assert!(!set.contains(Label::Profanity));
        assert_eq!(
            set.iter().collect::<Vec<_>>(),
            vec![Label::Threat, Label::Warning]
        );
        for label in Label::ALL {
            assert_eq!(Label::parse(label.name()), Some(label));
        }
    }

    #[test]
    fn speakers_carry_their_own_labels() {
        assert!(Speaker::Agent.may_carry(Label::Warning));
        assert!(!Speaker::Agent.may_carry(Label::Threat));
        assert!(!Speaker::Customer.may_carry(Label::Warning));
        assert!(Speaker::Unknown.may_carry(Label::Warning));
    }
}
