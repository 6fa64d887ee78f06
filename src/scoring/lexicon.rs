//! A pure phrase scorer for Swedish, Norwegian (Bokmål, Nynorsk) and Danish.
//!
//! Profanity and agent warnings are lexical and formulaic, so curated patterns score them at
//! least as well as the model (see models/MODEL_CARD.md); threat, harassment and self-harm
//! patterns are a small high-precision set that serves only when the model cannot (overload
//! fallback, marked degraded). Every hit carries its byte span as evidence. No I/O, no state.

use std::sync::LazyLock;

use regex::Regex;

use crate::domain::{Label, Lang, Scores};

/// Swear words and vulgar terms, as word-start stems (`*` = any word continuation) or whole
/// words. Written from general knowledge of the four varieties; compounds such as
/// "skitsnack", "jævlig", "helvedes" and "kukhuvud" are reached by the stems.
const PROFANITY: &[&str] = &[
    // devil / hell family
    "jävl*",
    "javl*",
    "djävl*",
    "jævl*",
    "jävul*",
    "djävul*",
    "jäkl*",
    "jäkel",
    "jäklar",
    "faen*",
    "fanden*",
    "fandme",
    "fandeme",
    "fanme",
    "fanskap*",
    "fan",
    "fy fan",
    "fan i",
    "faan",
    "fæn",
    "fy faen",
    "fader'n",
    "fa'n",
    "helvet*",
    "helved*",
    "satan*",
    "satme",
    "sataneme",
    "fandens*",
    "forbanna*",
    "forbandede",
    "kraftedeme",
    "kraftedme",
    "kraft edme",
    "for pokker",
    "pokker*",
    // excrement
    "skit*",
    "dritt*",
    "drit",
    "drite*",
    "dritten",
    "lort*",
    "pis",
    "pisse*",
    "piss*",
    "shit*",
    "bullshit*",
    "skide*",
    "skid",
    // sexual and body
    "kuk*",
    "fitt*",
    "fitte*",
    "fisse*",
    "pikk*",
    "pik",
    "pikken",
    "pikhoved*",
    "røv*",
    "rasshøl*",
    "ræva",
    "rævhøl*",
    "rövhål*",
    "arsle*",
    "arsel",
    "knull*",
    "kneppe*",
    "hora",
    "horor",
    "horunge*",
    "hore*",
    "luder*",
    "kælling*",
    "mammaknull*",
    "morraknull*",
    "mor knull*",
    // English loans that are common in all four
    "fuck*",
    "fakk*",
    "motherfuck*",
    "bitch*",
    "bitsj*",
    "asshole*",
    "cunt*",
    "wtf",
];

/// Stems that look like profanity but are ordinary words; checked before counting a hit.
const PROFANITY_EXCEPTIONS: &[&str] = &["horeb*", "pissoar*", "kukkuu", "helvetia", "satanis*"];

/// Phrases that end a call in the agent's voice.
const HANG_UP: &[&str] = &[
    // sv
    "avslut* samtal*",
    "avslut* jag samtal*",
    "avslut* det här samtal*",
    "avslut* vårt samtal*",
    "lägg* på",
    "lägger jag på",
    "bryt* samtal*",
    "bryter jag samtal*",
    "avbryt* samtal*",
    "avbryter jag samtal*",
    "koppla* bort dig",
    "koppla* ner samtal*",
    // nb / nn
    "avslutt* samtal*",
    "avslutt* jeg samtal*",
    "avslutt* eg samtal*",
    "avslutt* denne samtal*",
    "avslutt* den her samtal*",
    "avslutt* vår samtal*",
    "legg* på",
    "legger jeg på",
    "legg eg på",
    "bryt* samtal*",
    "bryt* eg samtal*",
    "bryt* jeg samtal*",
    "avbryt* samtal*",
    // da
    "afslut* samtal*",
    "afslut* jeg samtal*",
    "afslut* denne samtal*",
    "afslut* vores samtal*",
    "lægg* på",
    "lægger jeg på",
    "læg* røret på",
    "afbryd* samtal*",
    "afbryder jeg samtal*",
    "stopp* samtal*",
    "stopp* eg samtal*",
    "stopp* jeg samtal*",
];

/// Words without which an agent line cannot be a warning: ending, breaking off or the call
/// itself, or warning. Broad on purpose: it only decides which agent lines the model sees.
const WARNING_GATE: &[&str] = &[
    "avslut*",
    "afslut*",
    "avbryt*",
    "afbryd*",
    "avbrut*",
    "afbrudt*",
    "bryt*",
    "bryd*",
    "lägg* på",
    "legg* på",
    "lægg* på",
    "læg på",
    "lägg* jag på",
    "legg* jeg på",
    "legg* eg på",
    "lægg* jeg på",
    "koppla*",
    "kopla*",
    "kobl*",
    "samtal*",
    "opkald*",
    "røret",
    "luren",
    "varn*",
    "advar*",
    "åtvar*",
    "sista chans*",
    "siste gang*",
    "sidste chance*",
    "siste sjans*",
    "sidste gang",
    "sista gången",
    "er slut",
    "är slut",
    "er over",
    "er forbi",
    "er ferdig",
    "slutt",
    "slutter",
    "slutar",
];

/// The conditional or formal-warning cue that makes a hang-up phrase a warning.
const WARNING_CUE: &[&str] = &[
    "om du",
    "ifall du",
    "om ni",
    "hvis du",
    "hvis De",
    "dersom du",
    "viss du",
    "vis du",
    "om de",
    "varning*",
    "varnar",
    "varna",
    "advarsel*",
    "advarer",
    "advare",
    "åtvaring*",
    "åtvarar",
    "åtvare",
    "sista gången",
    "siste gang",
    "sidste gang",
    "siste gongen",
    "en gång till",
    "en gang til",
    "ein gong til",
    "en gang til",
    "en gång till",
];

/// High-precision threat phrases (fallback only).
const THREAT: &[&str] = &[
    "vet var du bor",
    "vet vart du bor",
    "vet hvor du bor",
    "veit kor du bur",
    "veit kvar du bur",
    "ved hvor du bor",
    "döda dig",
    "döda er",
    "drepe deg",
    "drepe dere",
    "drepe dykk",
    "dreper deg",
    "slå ihjäl dig",
    "slå dig ihjäl",
    "slå deg i hjel",
    "slå dig ihjel",
    "slå ihjel",
    "skjuta dig",
    "skjuta er",
    "skyte deg",
    "skyte dere",
    "skyde dig",
    "skyde jer",
    "bränna ner kontoret",
    "brenne ned kontoret",
    "brænde kontoret ned",
    "knivhugg*",
    "stikke deg",
    "stikke dig",
    "hugga dig",
    "mörda dig",
    "myrde dig",
    "myrde deg",
    "få se hva som skjer",
    "få se vad som händer",
    "spränga kontoret",
    "sprenge kontoret",
    "sprænge kontoret",
    "bomb i",
    "bombe i",
];

/// High-precision personal-abuse phrases (fallback only).
const HARASSMENT: &[&str] = &[
    "din idiot",
    "du er en idiot",
    "du är en idiot",
    "du er ein idiot",
    "din jävla",
    "din jævla",
    "din satans",
    "din forbandede",
    "dumma hora",
    "din hora",
    "din hore",
    "ditt luder",
    "dit luder",
    "kælling",
    "hora",
    "fitta",
    "fitte",
    "dra åt helvete",
    "dra til helvete",
    "gå ad helvede til",
    "gå og dø",
    "gå å dø",
    "gå och dö",
    "ta livet av dig",
    "kill yourself",
    "hoppas du dör",
    "håper du dør",
    "håber du dør",
    "dumme kuk",
    "ditt fe",
    "din dumme",
    "ditt svin",
    "dit svin",
    "dumskalle",
    "pucko",
    "mongo",
    "efterbliven",
    "retard*",
];

/// High-precision self-harm phrases (fallback only).
const SELF_HARM: &[&str] = &[
    "ta livet av mig",
    "ta mitt liv",
    "ta livet mitt",
    "ta livet av meg",
    "tage mit liv",
    "tage livet af mig",
    "ta livet mitt",
    "ta livet av meg sjølv",
    "slå mig ihjäl",
    "ta selvmord",
    "begå självmord",
    "begå selvmord",
    "ta sjølvmord",
    "tar selvmord",
    "vil ikke leve",
    "vill inte leva",
    "vil ikkje leve",
    "orkar inte leva",
    "orker ikke å leve",
    "gider ikke leve",
    "hoppa framför",
    "hoppe foran",
    "springe ut",
    "hænge mig",
    "henge meg",
    "hänga mig",
    "sjølvmord",
    "självmord",
    "selvmord",
];

/// Compiled patterns for every label.
pub struct Lexicon {
    profanity: Regex,
    profanity_exceptions: Regex,
    hang_up: Regex,
    warning_cue: Regex,
    warning_gate: Regex,
    threat: Regex,
    harassment: Regex,
    self_harm: Regex,
}

/// Lexicon verdicts: a span per label that hit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Hits(pub [Option<(usize, usize)>; Label::COUNT]);

impl Hits {
    pub fn get(&self, label: Label) -> Option<(usize, usize)> {
        self.0[label.index()]
    }

    /// 1.0 for each label that hit, else 0.0.
    pub fn scores(&self) -> Scores {
        Scores(std::array::from_fn(|i| {
            if self.0[i].is_some() { 1.0 } else { 0.0 }
        }))
    }
}

impl Lexicon {
    /// The built-in lexicon, compiled once.
    pub fn builtin() -> &'static Lexicon {
        static LEXICON: LazyLock<Lexicon> = LazyLock::new(|| Lexicon {
            profanity: compile(PROFANITY),
            profanity_exceptions: compile(PROFANITY_EXCEPTIONS),
            hang_up: compile(HANG_UP),
            warning_cue: compile(WARNING_CUE),
            warning_gate: compile(WARNING_GATE),
            threat: compile(THREAT),
            harassment: compile(HARASSMENT),
            self_harm: compile(SELF_HARM),
        });
        &LEXICON
    }

    pub fn scan(&self, text: &str) -> Hits {
        let mut hits = Hits::default();
        hits.0[Label::Profanity.index()] = self.profanity(text);
        hits.0[Label::Warning.index()] = self.warning(text);
        for (label, re) in [
            (Label::Threat, &self.threat),
            (Label::Harassment, &self.harassment),
            (Label::SelfHarm, &self.self_harm),
        ] {
            hits.0[label.index()] = re.find(text).map(|m| (m.start(), m.end()));
        }
        hits
    }

    fn profanity(&self, text: &str) -> Option<(usize, usize)> {
        self.profanity
            .find_iter(text)
            .find(|m| !self.profanity_exceptions.is_match(m.as_str()))
            .map(|m| (m.start(), m.end()))
    }

    /// A hang-up phrase together with a condition or an explicit warning.
    /// Whether an agent line could be a warning at all: it speaks of ending or breaking off,
    /// of the call, or of warning. The rest need no model (`[scoring] agent_lines = "gated"`).
    pub fn may_warn(&self, text: &str) -> bool {
        self.warning_gate.is_match(text)
    }

    fn warning(&self, text: &str) -> Option<(usize, usize)> {
        let end_call = self.hang_up.find(text)?;
        let cue = self.warning_cue.find(text)?;
        Some((
            cue.start().min(end_call.start()),
            cue.end().max(end_call.end()),
        ))
    }
}

/// One case-insensitive alternation of word-bounded entries. A word ending in `*` is a stem
/// (any continuation); spaces match any run of whitespace and light punctuation (ASR pauses).
fn compile(entries: &[&str]) -> Regex {
    let alternatives: Vec<String> = entries
        .iter()
        .map(|entry| {
            let words: Vec<String> = entry
                .split(' ')
                .map(|w| match w.strip_suffix('*') {
                    Some(stem) => format!(r"{}\w*", regex::escape(stem)),
                    None => format!(r"{}\b", regex::escape(w)),
                })
                .collect();
            words.join(r"[\s,.…-]+")
        })
        .collect();
    Regex::new(&format!(r"(?iu)\b(?:{})", alternatives.join("|")))
        .expect("the built-in lexicon compiles (tested)")
}

/// Words that tell the four varieties apart in short speech: (word, weights for sv, nb, nn, da).
const LANGUAGE_MARKERS: &[(&str, [i8; 4])] = &[
    ("jag", [3, 0, 0, 0]),
    ("inte", [3, 0, 0, 0]),
    ("och", [2, 0, 0, 0]),
    ("är", [3, 0, 0, 0]),
    ("vad", [2, 0, 0, 0]),
    ("hur", [2, 0, 0, 0]),
    ("också", [2, 0, 0, 0]),
    ("skulle", [1, 1, 0, 1]),
    ("jeg", [0, 2, 0, 2]),
    ("ikke", [0, 2, 0, 2]),
    ("og", [0, 1, 1, 1]),
    ("er", [0, 1, 1, 1]),
    ("meg", [0, 3, 1, 0]),
    ("deg", [0, 3, 1, 0]),
    ("mig", [1, 0, 0, 2]),
    ("dig", [1, 0, 0, 2]),
    ("hva", [0, 2, 0, 1]),
    ("hvad", [0, 0, 0, 3]),
    ("av", [1, 2, 1, 0]),
    ("af", [0, 0, 0, 3]),
    ("etter", [0, 2, 1, 0]),
    ("efter", [1, 0, 0, 2]),
    ("noen", [0, 3, 0, 0]),
    ("nogen", [0, 0, 0, 3]),
    ("sånn", [0, 2, 0, 0]),
    ("sådan", [0, 0, 0, 3]),
    ("sådär", [3, 0, 0, 0]),
    ("ikkje", [0, 0, 4, 0]),
    ("eg", [0, 0, 4, 0]),
    ("kva", [0, 0, 4, 0]),
    ("korleis", [0, 0, 4, 0]),
    ("berre", [0, 0, 4, 0]),
    ("noko", [0, 0, 4, 0]),
    ("ein", [0, 0, 3, 0]),
    ("eit", [0, 0, 3, 0]),
    ("frå", [0, 0, 4, 0]),
    ("heime", [0, 0, 3, 0]),
    ("dykk", [0, 0, 4, 0]),
    ("kvifor", [0, 0, 4, 0]),
    ("då", [1, 0, 2, 0]),
    ("nå", [0, 2, 0, 1]),
    ("nu", [1, 0, 0, 2]),
    ("no", [0, 0, 2, 0]),
    ("bare", [0, 2, 0, 2]),
    ("bara", [3, 0, 0, 0]),
    ("kanskje", [0, 2, 2, 0]),
    ("kanske", [3, 0, 0, 0]),
    ("måske", [0, 0, 0, 3]),
    ("hvorfor", [0, 2, 0, 2]),
    ("varför", [3, 0, 0, 0]),
    ("være", [0, 1, 1, 1]),
    ("vara", [2, 0, 0, 0]),
    ("gjøre", [0, 2, 0, 1]),
    ("gjere", [0, 0, 4, 0]),
    ("gøre", [0, 0, 0, 3]),
    ("göra", [3, 0, 0, 0]),
];

/// Guess the variety of an utterance when the caller gave none (`callguard score`, `Score`).
/// Letters decide Swedish (ä, ö) against the rest (æ, ø); marker words split Bokmål, Nynorsk
/// and Danish. Ties go to Swedish, then Bokmål.
pub fn guess_language(text: &str) -> Lang {
    let mut score = [0i32; 4];
    for c in text.chars() {
        match c {
            'ä' | 'ö' | 'Ä' | 'Ö' => score[0] += 2,
            'æ' | 'ø' | 'Æ' | 'Ø' => {
                score[1] += 1;
                score[2] += 1;
                score[3] += 1;
            }
            _ => {}
        }
    }
    for word in text
        .split(|c: char| !c.is_alphabetic())
        .filter(|w| !w.is_empty())
    {
        let lower = word.to_lowercase();
        if let Some((_, weights)) = LANGUAGE_MARKERS.iter().find(|(w, _)| *w == lower) {
            for (s, w) in score.iter_mut().zip(weights) {
                *s += i32::from(*w);
            }
        }
    }
    let best = (0..4)
        .max_by_key(|&i| (score[i], std::cmp::Reverse(i)))
        .unwrap_or(0);
    [Lang::Sv, Lang::Nb, Lang::Nn, Lang::Da][best]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(text: &str) -> Vec<&'static str> {
        let hits = Lexicon::builtin().scan(text);
        Label::ALL
            .into_iter()
            .filter(|l| hits.get(*l).is_some())
            .map(Label::name)
            .collect()
    }

    #[test]
    fn profanity_in_four_varieties() {
        for text in [
            "fan vilken kö alltså",
            "det här är ju skitdåligt",
            "jævla dritt selskap",
            "for fanden da",
            "kva faen er det de driv med",
            "det er noget lort",
            "helvedes bøvl med jer",
        ] {
            assert!(labels(text).contains(&"profanity"), "{text}");
        }
    }

    #[test]
    fn ordinary_words_are_not_profanity() {
        for text in [
            "det fanns inga paket kvar",
            "fantastiskt bra service",
            "jeg har snakket med facket",
            "horisonten er fin",
            "vi har satt opp en ny avtale",
            "skidorna kom bort på tåget",
            "ho sat og venta",
        ] {
            assert!(
                !labels(text).contains(&"profanity"),
                "{text}: {:?}",
                labels(text)
            );
        }
    }

    #[test]
    fn warnings_need_a_condition_and_a_hang_up() {
        assert!(
            labels("om du fortsätter prata så till mig kommer jag att avsluta samtalet")
                .contains(&"warning")
        );
        assert!(labels("hvis du fortsætter sådan lægger jeg på").contains(&"warning"));
        assert!(
            labels("viss du held fram med å snakke slik til meg, avsluttar eg samtalen")
                .contains(&"warning")
        );
        assert!(labels("dette er siste advarsel, neste gang legger jeg på").contains(&"warning"));
        assert!(!labels("jag lägger på nu och skickar ett mejl, hej då").contains(&"warning"));
        assert!(!labels("om du vill kan jag ringa upp dig imorgon").contains(&"warning"));
    }

    #[test]
    fn languages_are_told_apart() {
        assert_eq!(guess_language("jag har inte fått mitt paket"), Lang::Sv);
        assert_eq!(
            guess_language("jeg har ikke fått pakken min ennå"),
            Lang::Nb
        );
        assert_eq!(
            guess_language("eg har ikkje fått pakken min enno"),
            Lang::Nn
        );
        assert_eq!(
            guess_language("jeg har ikke fået min pakke endnu, hvad sker der"),
            Lang::Da
        );
    }

    #[test]
    fn evidence_spans_point_at_the_words() {
        let text = "ja men din jävla idiot";
        let (s, e) = Lexicon::builtin().scan(text).get(Label::Profanity).unwrap();
        assert_eq!(&text[s..e], "jävla");
    }
}
