//! The fuzz entry points (`callguard::fuzzing`) without libFuzzer, for CI: every committed seed
//! in `fuzz/corpus/<target>/`, then a fixed number of mutations of them from a fixed xorshift
//! seed, so a failure is the same input on every machine. `make fuzz` runs the real fuzzers.
//!
//! `call_events` also gets whole calls assembled from the text seeds: byte mutations of
//! protobuf rarely survive decoding, and the policy is only reached by well-formed events.
//! The call_events seeds are written by `write_call_event_seeds` (ignored; run it by name).

use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::path::{Path, PathBuf};

mod common;

use callguard::fuzzing;
use callguard::proto as pb;
use common::{start_event, utterance};
use prost::Message;

/// Mutated inputs per target: about two seconds for the file on two busy cores.
const MUTATIONS: usize = 2000;

/// Marsaglia's xorshift64: deterministic, dependency-free, good enough to pick mutations.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
}

/// The committed seeds: named files with an extension. libFuzzer's own additions are bare
/// hashes (git-ignored), so a local fuzz run does not change what this test reads.
fn seeds(target: &str) -> Vec<Vec<u8>> {
    let dir = corpus_dir(target);
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("readable corpus entry").path())
        .filter(|p| p.extension().is_some())
        .collect();
    paths.sort();
    assert!(!paths.is_empty(), "no seeds in {}", dir.display());
    paths
        .iter()
        .map(|p| std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
        .collect()
}

/// Bytes a parser branches on, and multi-byte UTF-8 that a span could cut.
const TOKENS: &[&[u8]] = &[
    b"\0",
    b"\xff",
    b"\x80",
    b"\n",
    b"[",
    b"]",
    b"\"",
    b"=",
    b"[[a]]",
    b"[policy]\n",
    b"[thresholds.sv]\nthreat = ",
    b"nan",
    b"-0.0",
    b"1e400",
    b"\xc3\xa5",
    b"\xc3\xb8",
    b"\xc3\xa4",
    b"\xc4\xb0",
    b"\xe2\x84\xaa",
    b"\xf0\x9f\x99\x82",
    b"\xcc\x81",
    b"\xc3",
    b" ",
    b"...",
];

fn mutate(rng: &mut XorShift, seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut data = rng.pick(seeds).clone();
    for _ in 0..=rng.below(4) {
        let at = rng.below(data.len() + 1);
        match rng.below(7) {
            0 if !data.is_empty() => {
                let i = rng.below(data.len());
                data[i] ^= 1 << rng.below(8);
            }
            1 => {
                let token = rng.pick(TOKENS);
                data.splice(at..at, token.iter().copied());
            }
            2 => {
                let end = (at + rng.below(16)).min(data.len());
                data.drain(at..end);
            }
            3 => {
                let end = (at + rng.below(32)).min(data.len());
                let chunk = data[at..end].to_vec();
                data.splice(at..at, chunk);
            }
            4 => {
                let other = rng.pick(seeds);
                let from = rng.below(other.len() + 1);
                data.truncate(at);
                data.extend_from_slice(&other[from..]);
            }
            5 => data.truncate(at),
            _ => data.insert(at, rng.next() as u8),
        }
    }
    data
}

/// Run `entry` on `input`; on a panic, print the input so that it can be replayed.
fn check(target: &str, entry: impl Fn(&[u8]), input: &[u8]) {
    if let Err(panic) = catch_unwind(AssertUnwindSafe(|| entry(input))) {
        eprintln!("{target} failed on {} bytes: {input:?}", input.len());
        resume_unwind(panic);
    }
}

fn smoke(target: &str, entry: impl Fn(&[u8]), extra: impl Fn(&mut XorShift) -> Vec<u8>) {
    let seeds = seeds(target);
    for seed in &seeds {
        check(target, &entry, seed);
    }
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    for i in 0..MUTATIONS {
        let input = if i % 2 == 0 {
            mutate(&mut rng, &seeds)
        } else {
            extra(&mut rng)
        };
        check(target, &entry, &input);
    }
}

#[test]
fn config_seeds_and_mutations() {
    let seeds = seeds("config");
    smoke("config", fuzzing::config, |rng| mutate(rng, &seeds));
}

#[test]
fn text_seeds_and_mutations() {
    let seeds = seeds("text");
    // splices of two texts put phrases next to each other that no seed has together
    smoke("text", fuzzing::text, |rng| {
        let mut a = mutate(rng, &seeds);
        a.push(b' ');
        let other: &Vec<u8> = rng.pick(&seeds);
        a.extend_from_slice(other);
        a
    });
}

#[test]
fn call_event_seeds_mutations_and_random_calls() {
    let texts: Vec<String> = seeds("text")
        .into_iter()
        .map(|t| String::from_utf8_lossy(&t).into_owned())
        .collect();
    let entry = |data: &[u8]| {
        fuzzing::call_events(data);
    };
    smoke("call_events", entry, |rng| random_calls(rng, &texts));
}

/// One or two call streams of random, mostly well-formed events with seed texts.
fn random_calls(rng: &mut XorShift, texts: &[String]) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..=rng.below(2) {
        let language = *rng.pick(&["sv", "nb", "nn", "da", "no", "sv-SE", "de", ""]);
        push(&mut out, start_event("c", "a", language));
        for n in 0..rng.below(12) {
            let text = if rng.below(8) == 0 {
                // two utterances' words in one final
                format!("{} {}", rng.pick(texts), rng.pick(texts))
            } else {
                rng.pick(texts).clone()
            };
            let speaker = *rng.pick(&[
                pb::Speaker::Agent,
                pb::Speaker::Customer,
                pb::Speaker::Customer,
                pb::Speaker::Unspecified,
            ]);
            let id = if rng.below(10) == 0 {
                String::new() // refused: empty id
            } else {
                format!("u{n}")
            };
            push(&mut out, utterance(&id, speaker, &text, rng.below(5) != 0));
        }
        if rng.below(6) != 0 {
            push(&mut out, end());
        }
    }
    out
}

fn push(out: &mut Vec<u8>, event: pb::CallEvent) {
    event
        .encode_length_delimited(out)
        .expect("a Vec grows as needed");
}

fn end() -> pb::CallEvent {
    pb::CallEvent {
        event: Some(pb::call_event::Event::End(pb::CallEnd {
            reason: "hangup".into(),
        })),
    }
}

/// (Re)write `fuzz/corpus/call_events/*.bin`: calls that walk the alert table.
#[test]
#[ignore = "writes the committed seeds; run by name after changing the proto or the scenarios"]
fn write_call_event_seeds() {
    use callguard::domain::AlertKind;
    use pb::Speaker::{Agent, Customer};
    let abuse = "du är en idiot";
    let warning = "om du fortsätter så avslutar jag samtalet";
    use callguard::domain::AlertKind::*;
    let scenarios: [(&str, Vec<pb::CallEvent>, &[AlertKind]); 4] = [
        (
            "warning_then_abuse_then_threat",
            vec![
                start_event("call-1", "agent-1", "sv"),
                utterance("u1", Customer, abuse, false),
                utterance("u1", Customer, abuse, true),
                utterance("u2", Agent, warning, true),
                utterance("u3", Customer, abuse, true),
                utterance("u4", Customer, "jag vet var du bor", true),
                end(),
            ],
            &[SuggestWarning, HangUpAllowed, Escalate, Debrief],
        ),
        (
            "self_harm_blocks_hang_up",
            vec![
                start_event("call-2", "agent-2", "nb"),
                utterance("u1", Customer, "jeg vil ikke leve lenger", true),
                utterance(
                    "u2",
                    Agent,
                    "dette er siste advarsel, neste gang legger jeg på",
                    true,
                ),
                utterance("u3", Customer, "du er en idiot, jeg skal drepe deg", true),
                end(),
            ],
            &[Escalate, AcuteProcedure, Debrief],
        ),
        (
            "refused_events_and_unknown_speaker",
            vec![
                utterance("u0", Customer, abuse, true),
                start_event("call-3", "agent-3", "da-DK"),
                utterance("", Customer, abuse, true),
                utterance("u1", pb::Speaker::Unspecified, "din kælling", true),
                utterance("u2", Customer, "   ", true),
                start_event("call-3", "agent-3", "da"),
                start_event("call-4", "agent-4", "nn"),
                utterance("u1", Customer, "eg veit kor du bur", true),
            ],
            &[SuggestWarning, Escalate],
        ),
        (
            "two_calls_one_after_the_other",
            vec![
                start_event("call-5", "agent-5", "no"),
                utterance("u1", Customer, "faen, dette er dritt", true),
                end(),
                start_event("call-6", "agent-5", "sv"),
                utterance("u1", Customer, "jag ska döda dig", true),
                utterance("u1", Customer, "jag ska döda dig", true),
                end(),
            ],
            &[Escalate, Debrief],
        ),
    ];
    let dir = corpus_dir("call_events");
    std::fs::create_dir_all(&dir).expect("corpus directory can be created");
    for (name, events, expected) in scenarios {
        let mut bytes = Vec::new();
        for event in events {
            push(&mut bytes, event);
        }
        let raised: Vec<AlertKind> = fuzzing::call_events(&bytes).iter().collect();
        assert_eq!(raised, expected, "{name}");
        std::fs::write(dir.join(format!("{name}.bin")), bytes).expect("seed is writable");
    }
}
