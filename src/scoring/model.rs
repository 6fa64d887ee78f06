//! The ONNX model and its tokenizer: synchronous code with no tokio, owned by one worker thread.
//!
//! `callguard.onnx` (built by `models/build.sh`) takes `input_ids` and `attention_mask` and
//! returns `scores` (sigmoid probabilities, one column per `Label`) and `contrib` (each token's
//! additive share of every label's logit, used to show which words drove a label). The
//! tokenizer adds e5's `"query: "` prefix; token offsets are mapped back to the caller's text.

use std::path::Path;

use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::TensorRef;
use tokenizers::{Tokenizer, TruncationParams};

use crate::config::ModelConfig;
use crate::domain::{Label, Scores};

/// e5 was trained with this prefix on every query-side text.
const PREFIX: &str = "query: ";

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{what} {path}: {cause} (run `make model` to build it)")]
    Missing {
        what: &'static str,
        path: String,
        cause: String,
    },
    #[error("onnx runtime: {0}")]
    Ort(#[from] ort::Error),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("model output {0} has an unexpected shape")]
    Shape(&'static str),
}

impl From<ort::Error<ort::session::builder::SessionBuilder>> for ModelError {
    fn from(err: ort::Error<ort::session::builder::SessionBuilder>) -> Self {
        ModelError::Ort(err.into())
    }
}

/// One tokenized utterance, ready to batch.
#[derive(Clone, Debug, Default)]
pub struct Tokens {
    pub ids: Vec<i64>,
    /// Byte span in the original text for each token (`None` for specials and the prefix).
    pub spans: Vec<Option<(usize, usize)>>,
}

impl Tokens {
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// What the model says about one utterance.
#[derive(Clone, Debug, Default)]
pub struct ModelOutput {
    pub scores: Scores,
    /// Per token, its share of each label's logit (same order as `Tokens::ids`).
    pub contrib: Vec<[f32; Label::COUNT]>,
}

pub struct Tokenize {
    tokenizer: Tokenizer,
    /// Reused "query: " + text buffer.
    buf: String,
}

impl Tokenize {
    pub fn load(dir: &Path, max_tokens: usize) -> Result<Tokenize, ModelError> {
        let path = dir.join("tokenizer.json");
        let mut tokenizer = Tokenizer::from_file(&path).map_err(|e| ModelError::Missing {
            what: "tokenizer",
            path: path.display().to_string(),
            cause: e.to_string(),
        })?;
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: max_tokens,
                ..Default::default()
            }))
            .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        tokenizer.with_padding(None);
        Ok(Tokenize {
            tokenizer,
            buf: String::with_capacity(512),
        })
    }

    /// Tokenize one utterance, writing into `out` (its vectors are reused).
    pub fn encode_into(&mut self, text: &str, out: &mut Tokens) -> Result<(), ModelError> {
        self.buf.clear();
        self.buf.push_str(PREFIX);
        self.buf.push_str(text);
        let enc = self
            .tokenizer
            .encode(self.buf.as_str(), true)
            .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        out.ids.clear();
        out.ids.extend(enc.get_ids().iter().map(|&i| i64::from(i)));
        out.spans.clear();
        let specials = enc.get_special_tokens_mask();
        out.spans.extend(
            enc.get_offsets()
                .iter()
                .zip(specials)
                .map(|(&(s, e), &sp)| {
                    (sp == 0 && s >= PREFIX.len()).then(|| (s - PREFIX.len(), e - PREFIX.len()))
                }),
        );
        Ok(())
    }
}

pub struct Model {
    session: Session,
    /// Reused input buffers: [batch, longest] ids and mask.
    ids: Vec<i64>,
    mask: Vec<i64>,
}

impl Model {
    /// Initialise ONNX Runtime from the pinned shared library and load the model.
    pub fn load(cfg: &ModelConfig) -> Result<Model, ModelError> {
        let env = runtime(&cfg.onnxruntime)?;
        let path = cfg.dir.join("callguard.onnx");
        if !path.exists() {
            return Err(ModelError::Missing {
                what: "model",
                path: path.display().to_string(),
                cause: "not found".into(),
            });
        }
        let session = Session::builder(env)?
            .with_optimization_level(GraphOptimizationLevel::Level3)?
            .with_intra_threads(cfg.threads)?
            .with_inter_threads(1)?
            .with_intra_op_spinning(cfg.spin)?
            .with_execution_providers([ort::ep::CPU::default()
                .with_arena_allocator(cfg.arena)
                .build()])?
            // ORT's shape-merging notes on contrib ops are noise at warning level
            .with_log_level(ort::logging::LogLevel::Error)?
            .commit_from_file(&path)?;
        for name in ["scores", "contrib"] {
            if !session.outputs().iter().any(|o| o.name() == name) {
                return Err(ModelError::Missing {
                    what: "model output",
                    path: format!("{}:{name}", path.display()),
                    cause: "the model has no trained head merged".into(),
                });
            }
        }
        Ok(Model {
            session,
            ids: Vec::new(),
            mask: Vec::new(),
        })
    }

    /// Score a batch. `outputs` is resized to the batch and its vectors reused.
    pub fn run(
        &mut self,
        batch: &[&Tokens],
        outputs: &mut Vec<ModelOutput>,
    ) -> Result<(), ModelError> {
        let rows = batch.len();
        let cols = batch.iter().map(|t| t.len()).max().unwrap_or(0);
        outputs.resize_with(rows, ModelOutput::default);
        if rows == 0 || cols == 0 {
            return Ok(());
        }
        self.ids.clear();
        self.mask.clear();
        self.ids.resize(rows * cols, 1); // XLM-R <pad> = 1
        self.mask.resize(rows * cols, 0);
        for (r, t) in batch.iter().enumerate() {
            self.ids[r * cols..r * cols + t.len()].copy_from_slice(&t.ids);
            self.mask[r * cols..r * cols + t.len()].fill(1);
        }
        let shape = [rows, cols];
        let result = self.session.run(ort::inputs![
            "input_ids" => TensorRef::from_array_view((shape, &self.ids[..]))?,
            "attention_mask" => TensorRef::from_array_view((shape, &self.mask[..]))?,
        ])?;
        let (_, scores) = result["scores"].try_extract_tensor::<f32>()?;
        let (_, contrib) = result["contrib"].try_extract_tensor::<f32>()?;
        if scores.len() != rows * Label::COUNT {
            return Err(ModelError::Shape("scores"));
        }
        if contrib.len() != rows * cols * Label::COUNT {
            return Err(ModelError::Shape("contrib"));
        }
        for (r, (out, t)) in outputs.iter_mut().zip(batch).enumerate() {
            out.scores
                .0
                .copy_from_slice(&scores[r * Label::COUNT..(r + 1) * Label::COUNT]);
            out.contrib.clear();
            out.contrib.extend((0..t.len()).map(|c| {
                let at = (r * cols + c) * Label::COUNT;
                std::array::from_fn(|l| contrib[at + l])
            }));
        }
        Ok(())
    }
}

/// Point `ort` at the ONNX Runtime library once per process and return its environment.
fn runtime(default_path: &Path) -> Result<&'static ort::environment::Environment, ModelError> {
    // `ort` keeps only a weak reference to the environment: the process must hold it.
    static ENV: std::sync::OnceLock<Result<ort::environment::Environment, String>> =
        std::sync::OnceLock::new();
    let result = ENV.get_or_init(|| {
        let path = std::env::var_os("ORT_DYLIB_PATH")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| default_path.to_path_buf());
        if !path.exists() {
            return Err(format!("{} not found", path.display()));
        }
        let builder = ort::init_from(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        builder
            .with_name("callguard")
            .build()
            .map_err(|e| e.to_string())
    });
    match result {
        Ok(env) => Ok(env),
        Err(cause) => Err(ModelError::Missing {
            what: "ONNX Runtime library",
            path: default_path.display().to_string(),
            cause: cause.clone(),
        }),
    }
}

/// Raw model verdict for one utterance: scores, and for each label the byte span of the words
/// that contributed most to it. Fixed size, so replies allocate nothing.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RawScore {
    pub scores: Scores,
    pub spans: [Option<(u32, u32)>; Label::COUNT],
}

/// Tokenizer + model + evidence: what one scoring thread owns.
pub struct Engine {
    tokenize: Tokenize,
    model: Model,
    max_batch: usize,
    tokens: Vec<Tokens>,
    outputs: Vec<ModelOutput>,
    order: Vec<usize>,
}

impl Engine {
    pub fn load(cfg: &ModelConfig, max_batch: usize) -> Result<Engine, ModelError> {
        Ok(Engine {
            tokenize: Tokenize::load(&cfg.dir, cfg.max_tokens)?,
            model: Model::load(cfg)?,
            max_batch: max_batch.max(1),
            tokens: Vec::new(),
            outputs: Vec::new(),
            order: Vec::new(),
        })
    }

    /// Tokenize `text` into slot `i` of the engine's reusable token buffers.
    pub fn prepare(&mut self, i: usize, text: &str) -> Result<usize, ModelError> {
        if self.tokens.len() <= i {
            self.tokens.resize_with(i + 1, Tokens::default);
        }
        self.tokenize.encode_into(text, &mut self.tokens[i])?;
        Ok(self.tokens[i].len())
    }

    /// Run the model on slots `0..n` prepared with `prepare`; `out[i]` is slot i's result.
    /// Slots are grouped by length so that short lines are not padded to the longest one:
    /// a new group starts where a line is over 1.5x the group's shortest (groups of >= 4).
    /// Results do not depend on grouping (per-row activation scales).
    pub fn run_prepared(&mut self, n: usize, out: &mut Vec<RawScore>) -> Result<(), ModelError> {
        self.order.clear();
        self.order.extend(0..n);
        let tokens = &self.tokens;
        self.order.sort_by_key(|&i| tokens[i].len());
        out.clear();
        out.resize(n, RawScore::default());
        let order = std::mem::take(&mut self.order);
        let mut start = 0;
        while start < order.len() {
            let shortest = self.tokens[order[start]].len();
            let mut end = start + 1;
            while end < order.len()
                && (end - start < 4 || self.tokens[order[end]].len() * 2 <= shortest * 3)
            {
                end += 1;
            }
            let group = &order[start..end];
            let batch: Vec<&Tokens> = group.iter().map(|&i| &self.tokens[i]).collect();
            let result = self.model.run(&batch, &mut self.outputs);
            if let Err(err) = result {
                self.order = order;
                return Err(err);
            }
            for (&i, o) in group.iter().zip(&self.outputs) {
                out[i] = RawScore {
                    scores: o.scores,
                    spans: std::array::from_fn(|l| evidence_span(&self.tokens[i], &o.contrib, l)),
                };
            }
            start = end;
        }
        self.order = order;
        Ok(())
    }

    /// Score any number of texts: sorted by length into batches of `max_batch` so that
    /// little padding is computed, results in input order. (The CLI and the benches.)
    pub fn score_all(&mut self, texts: &[&str], out: &mut Vec<RawScore>) -> Result<(), ModelError> {
        let mut lens = Vec::with_capacity(texts.len());
        let mut all = Vec::with_capacity(texts.len());
        for text in texts {
            let mut t = Tokens::default();
            self.tokenize.encode_into(text, &mut t)?;
            lens.push(t.len());
            all.push(t);
        }
        self.order.clear();
        self.order.extend(0..texts.len());
        self.order.sort_by_key(|&i| lens[i]);
        out.clear();
        out.resize(texts.len(), RawScore::default());
        let order = std::mem::take(&mut self.order);
        for chunk in order.chunks(self.max_batch) {
            let batch: Vec<&Tokens> = chunk.iter().map(|&i| &all[i]).collect();
            self.model.run(&batch, &mut self.outputs)?;
            for (&i, o) in chunk.iter().zip(&self.outputs) {
                out[i] = RawScore {
                    scores: o.scores,
                    spans: std::array::from_fn(|l| evidence_span(&all[i], &o.contrib, l)),
                };
            }
        }
        self.order = order;
        Ok(())
    }
}

/// The words whose removal would lower label `l`'s logit most: the best word by summed token
/// contribution, widened over neighbours that contribute at least half as much.
fn evidence_span(tokens: &Tokens, contrib: &[[f32; Label::COUNT]], l: usize) -> Option<(u32, u32)> {
    // words: runs of tokens whose spans touch (sentencepiece splits a word without a gap)
    let mut words: [(usize, usize, f32); 48] = [(0, 0, 0.0); 48];
    let mut n = 0usize;
    for (span, c) in tokens.spans.iter().zip(contrib) {
        let Some((s, e)) = *span else { continue };
        if n > 0 && words[n - 1].1 == s {
            words[n - 1].1 = e;
            words[n - 1].2 += c[l];
        } else if n < words.len() {
            words[n] = (s, e, c[l]);
            n += 1;
        }
    }
    let words = &words[..n];
    let (best, &(_, _, top)) = words
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.2.total_cmp(&b.1.2))?;
    if top <= 0.0 {
        return None;
    }
    let (mut first, mut last) = (best, best);
    while first > 0 && words[first - 1].2 >= top * 0.5 {
        first -= 1;
    }
    while last + 1 < words.len() && words[last + 1].2 >= top * 0.5 {
        last += 1;
    }
    Some((words[first].0 as u32, words[last].1 as u32))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evidence_widens_over_strong_neighbours() {
        // "jag vet var du bor": tokens for each word, "vet var du bor" drive the label
        let tokens = Tokens {
            ids: vec![0; 7],
            spans: vec![
                None,
                Some((0, 3)),
                Some((4, 7)),
                Some((8, 11)),
                Some((12, 14)),
                Some((15, 18)),
                None,
            ],
        };
        let mut contrib = vec![[0.0; Label::COUNT]; 7];
        for (i, v) in [(1, 0.1), (2, 0.6), (3, 0.5), (4, 0.5), (5, 0.9)] {
            contrib[i][0] = v;
        }
        assert_eq!(evidence_span(&tokens, &contrib, 0), Some((4, 18)));
        assert_eq!(evidence_span(&tokens, &contrib, 1), None);
    }

    #[test]
    fn subword_pieces_join_into_words() {
        let tokens = Tokens {
            ids: vec![0; 4],
            spans: vec![Some((0, 3)), Some((3, 6)), Some((7, 9)), None],
        };
        let mut contrib = vec![[0.0; Label::COUNT]; 4];
        contrib[0][2] = 0.3;
        contrib[1][2] = 0.3;
        contrib[2][2] = 0.2;
        assert_eq!(evidence_span(&tokens, &contrib, 2), Some((0, 6)));
    }
}
