//! The micro-batching worker: one OS thread that owns the `Engine` (tokenizer + ONNX session).
//!
//! The first job opens a batch window that closes when the batch holds `max_batch` jobs, when
//! one more would push rows x longest-row past `max_tokens_per_batch`, or at `max_wait` after
//! that first job was *enqueued*. Measuring from enqueue time makes the wait adaptive: under
//! load, jobs have already waited through the previous model run, so the window is already
//! closed and the batch is simply everything queued; when idle, a lone job waits at most
//! `max_wait` for company. Jobs whose caller has gone are skipped before tokenizing.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::model::{Engine, RawScore};
use crate::config::BatchingConfig;

/// What the queue carries: jobs, then at shutdown one `Stop` after the last of them.
pub enum Msg {
    Score(Job),
    /// Finish what is queued, then return (the server is shutting down).
    Stop,
}

/// One final utterance waiting for the model.
pub struct Job {
    pub text: Arc<str>,
    pub enqueued: Instant,
    /// The submitting task awaits the other end; a closed receiver means it left (skip).
    pub reply: oneshot::Sender<Result<RawScore, String>>,
}

/// Counters the worker keeps for metrics and benches (relaxed atomics: monotonic counters).
#[derive(Debug, Default)]
pub struct Stats {
    pub batches: AtomicU64,
    pub scored: AtomicU64,
    pub skipped: AtomicU64,
    /// Padded token slots computed (rows x longest row), to watch padding waste.
    pub padded_tokens: AtomicU64,
    pub real_tokens: AtomicU64,
    pub model_ns: AtomicU64,
    /// Jobs submitted minus jobs taken: the queue depth.
    pub queued: AtomicU64,
    /// Finals answered from the short-utterance cache (no model call).
    pub cache_hits: AtomicU64,
    /// Finals scored by the lexicon alone because the queue was full.
    pub shed: AtomicU64,
}

/// Run the worker on the current thread until every sender is dropped and the queue is drained.
pub fn run(mut engine: Engine, rx: Receiver<Msg>, cfg: BatchingConfig, stats: Arc<Stats>) {
    let max_wait = Duration::from_millis(cfg.max_wait_ms);
    let mut batch: Vec<Job> = Vec::with_capacity(cfg.max_batch);
    let mut results: Vec<RawScore> = Vec::with_capacity(cfg.max_batch);
    // a job that would have made the last batch too wide opens the next one
    let mut carry: Option<Job> = None;
    let mut stopping = false;
    loop {
        let first = match carry.take() {
            Some(job) => job,
            None => match next_live(&rx, None, &stats, &mut stopping) {
                Next::Job(job) => job,
                Next::Closed | Next::Timeout => return,
            },
        };
        let deadline = first.enqueued + max_wait;
        let Some((first, mut longest)) = prepare(&mut engine, 0, first) else {
            continue;
        };
        let mut real = longest;
        batch.push(first);
        while batch.len() < cfg.max_batch {
            let job = match next_live(&rx, Some(deadline), &stats, &mut stopping) {
                Next::Job(job) => job,
                Next::Timeout | Next::Closed => break,
            };
            let Some((job, len)) = prepare(&mut engine, batch.len(), job) else {
                continue;
            };
            if longest.max(len) * (batch.len() + 1) > cfg.max_tokens_per_batch {
                carry = Some(job);
                break;
            }
            longest = longest.max(len);
            real += len;
            batch.push(job);
        }
        stats.real_tokens.fetch_add(real as u64, Ordering::Relaxed);
        score_batch(&mut engine, &mut batch, &mut results, longest, &stats);
    }
}

enum Next {
    Job(Job),
    Timeout,
    Closed,
}

/// The next job whose caller is still waiting, blocking until `deadline` (or forever). Once
/// `Stop` has been seen, it only takes what is already queued.
fn next_live(
    rx: &Receiver<Msg>,
    deadline: Option<Instant>,
    stats: &Stats,
    stopping: &mut bool,
) -> Next {
    loop {
        let msg = match (deadline, *stopping) {
            (_, true) => rx.try_recv().map_err(|_| Next::Closed),
            (None, false) => rx.recv().map_err(|_| Next::Closed),
            (Some(deadline), false) => match rx.try_recv() {
                Ok(msg) => Ok(msg),
                Err(TryRecvError::Disconnected) => Err(Next::Closed),
                Err(TryRecvError::Empty) => {
                    let now = Instant::now();
                    if now >= deadline {
                        Err(Next::Timeout)
                    } else {
                        rx.recv_timeout(deadline - now).map_err(|e| match e {
                            RecvTimeoutError::Timeout => Next::Timeout,
                            RecvTimeoutError::Disconnected => Next::Closed,
                        })
                    }
                }
            },
        };
        match msg {
            Ok(Msg::Score(job)) => {
                stats.queued.fetch_sub(1, Ordering::Relaxed);
                if job.reply.is_closed() {
                    stats.skipped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                return Next::Job(job);
            }
            Ok(Msg::Stop) => *stopping = true,
            Err(next) => return next,
        }
    }
}

/// Tokenize a job into engine slot `slot`; a text the tokenizer rejects is answered at once.
fn prepare(engine: &mut Engine, slot: usize, job: Job) -> Option<(Job, usize)> {
    match engine.prepare(slot, &job.text) {
        Ok(len) => Some((job, len)),
        Err(err) => {
            let _ = job.reply.send(Err(err.to_string()));
            None
        }
    }
}

fn score_batch(
    engine: &mut Engine,
    batch: &mut Vec<Job>,
    results: &mut Vec<RawScore>,
    longest: usize,
    stats: &Stats,
) {
    let started = Instant::now();
    let outcome = engine.run_prepared(batch.len(), results);
    stats
        .model_ns
        .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
    stats.batches.fetch_add(1, Ordering::Relaxed);
    stats
        .scored
        .fetch_add(batch.len() as u64, Ordering::Relaxed);
    stats
        .padded_tokens
        .fetch_add((longest * batch.len()) as u64, Ordering::Relaxed);
    match outcome {
        Ok(()) => {
            for (job, result) in batch.drain(..).zip(results.iter()) {
                let _ = job.reply.send(Ok(*result));
            }
        }
        Err(err) => {
            let message = err.to_string();
            tracing::error!(error = %message, batch = batch.len(), "model run failed");
            for job in batch.drain(..) {
                let _ = job.reply.send(Err(message.clone()));
            }
        }
    }
}
