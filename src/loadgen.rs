//! `callguard loadgen`: drive a server over real gRPC like a telephony platform and measure it.
//!
//! Each simulated call opens an ingest stream and its agent's alert subscription, then speaks a
//! realistic rhythm: a final utterance every 3-4 s, alternating customer and agent, a few
//! partials before each final, a share of short backchannels ("ja", "okej", "mm"), text drawn
//! from a corpus that includes abuse. It records final→ack and final→alert latency in
//! fixed-size log histograms (no per-message allocation), counts shed and rejected events, and
//! samples the server's RSS and CPU from /proc. `bench` mode measures the raw model ceiling in
//! process, the service's saturation throughput (closed loop), the p99 at 70 % of it, and ramps
//! the number of calls to the largest one held with p99 final→alert <= 50 ms; it writes
//! `summary.json`. Every loop is bounded in count and time.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::json;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use crate::config::Config;
use crate::proto as pb;
use crate::scoring::model::{Engine, RawScore};

/// Streams per HTTP/2 connection the generator opens (below the server's stream limit).
const STREAMS_PER_CONNECTION: usize = 200;

/// Short turns that make up a good part of real calls; their scores repeat.
const BACKCHANNELS: &[(&str, &str)] = &[
    ("sv", "ja"),
    ("sv", "okej"),
    ("sv", "mm"),
    ("sv", "precis"),
    ("sv", "jaha"),
    ("sv", "tack"),
    ("sv", "nej"),
    ("sv", "ja ja"),
    ("nb", "ja"),
    ("nb", "okei"),
    ("nb", "mhm"),
    ("nb", "akkurat"),
    ("nb", "takk"),
    ("nb", "nei"),
    ("nn", "ja"),
    ("nn", "nei"),
    ("nn", "takk"),
    ("nn", "mm"),
    ("da", "ja"),
    ("da", "okay"),
    ("da", "mm"),
    ("da", "nej"),
    ("da", "tak"),
    ("da", "præcis"),
];

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("corpus {0}: no usable lines")]
    EmptyCorpus(String),
    #[error("cannot reach the server at {0}")]
    Connect(String),
    #[error("model: {0}")]
    Model(#[from] crate::scoring::model::ModelError),
}

/// A log-bucketed latency histogram: 2 % resolution from 10 µs to ~100 s, fixed size.
pub struct Histogram {
    buckets: Vec<AtomicU64>,
    max_us: AtomicU64,
    count: AtomicU64,
}

const BASE_US: f64 = 10.0;
const GROWTH: f64 = 1.02;
const BUCKETS: usize = 820;

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            max_us: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    pub fn record(&self, d: Duration) {
        let us = d.as_micros() as f64;
        let i = if us <= BASE_US {
            0
        } else {
            ((us / BASE_US).ln() / GROWTH.ln()) as usize + 1
        };
        self.buckets[i.min(BUCKETS - 1)].fetch_add(1, Ordering::Relaxed);
        self.max_us.fetch_max(us as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// The q-quantile in milliseconds (upper edge of its bucket).
    pub fn quantile_ms(&self, q: f64) -> f64 {
        let total = self.count();
        if total == 0 {
            return 0.0;
        }
        let target = (q * total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            seen += b.load(Ordering::Relaxed);
            if seen >= target {
                let upper = BASE_US * GROWTH.powi(i as i32);
                return (upper / 1000.0).min(self.max_ms());
            }
        }
        self.max_ms()
    }

    pub fn max_ms(&self) -> f64 {
        self.max_us.load(Ordering::Relaxed) as f64 / 1000.0
    }

    fn summary(&self) -> serde_json::Value {
        json!({
            "count": self.count(),
            "p50_ms": round2(self.quantile_ms(0.50)),
            "p95_ms": round2(self.quantile_ms(0.95)),
            "p99_ms": round2(self.quantile_ms(0.99)),
            "max_ms": round2(self.max_ms()),
        })
    }
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

/// Utterances to speak, by speaker, each with its language.
#[derive(Clone)]
pub struct Corpus {
    customer: Vec<(String, String)>,
    agent: Vec<(String, String)>,
}

#[derive(Deserialize)]
struct CorpusLine {
    text: String,
    #[serde(default)]
    lang: Option<String>,
    #[serde(default)]
    speaker: Option<String>,
}

impl Corpus {
    pub fn load(path: &Path) -> Result<Corpus, LoadError> {
        let text = std::fs::read_to_string(path)?;
        let mut corpus = Corpus {
            customer: Vec::new(),
            agent: Vec::new(),
        };
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let Ok(l) = serde_json::from_str::<CorpusLine>(line) else {
                continue;
            };
            let lang = l.lang.unwrap_or_else(|| "sv".into());
            match l.speaker.as_deref() {
                Some("agent") => corpus.agent.push((lang, l.text)),
                _ => corpus.customer.push((lang, l.text)),
            }
        }
        if corpus.customer.is_empty() || corpus.agent.is_empty() {
            return Err(LoadError::EmptyCorpus(path.display().to_string()));
        }
        Ok(corpus)
    }

    /// A text for `speaker` in `lang` (falling back to any language), or a backchannel.
    pub(crate) fn pick(
        &self,
        rng: &mut Rng,
        agent: bool,
        lang: &str,
        backchannel_share: f64,
    ) -> String {
        if rng.unit() < backchannel_share {
            let same: Vec<&str> = BACKCHANNELS
                .iter()
                .filter(|(l, _)| *l == lang)
                .map(|(_, t)| *t)
                .collect();
            return same[rng.below(same.len())].to_string();
        }
        let pool = if agent { &self.agent } else { &self.customer };
        for _ in 0..8 {
            let (l, t) = &pool[rng.below(pool.len())];
            if l == lang {
                return t.clone();
            }
        }
        pool[rng.below(pool.len())].1.clone()
    }
}

/// xorshift: deterministic and allocation-free, plenty for load shaping.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub(crate) fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Everything one load stage measures.
#[derive(Default)]
pub struct Stage {
    pub ack: Histogram,
    pub alert: Histogram,
    pub finals: AtomicU64,
    pub partials: AtomicU64,
    pub alerts: AtomicU64,
    pub degraded: AtomicU64,
    pub rejected: AtomicU64,
    pub stream_errors: AtomicU64,
    /// When each final that may alert was sent, by (call, utterance) key; removed on alert.
    sent: Mutex<HashMap<(u32, u32), Instant>>,
    /// Set after the warm-up: only then are latencies recorded.
    measuring: AtomicBool,
}

/// How a stage speaks.
#[derive(Clone, Copy)]
pub struct Rhythm {
    /// Seconds between finals of one call (uniform in this range); zero = closed loop.
    pub gap: (f64, f64),
    pub partials: usize,
    pub backchannel_share: f64,
}

pub const REALISTIC: Rhythm = Rhythm {
    gap: (3.0, 4.0),
    partials: 3,
    backchannel_share: 0.25,
};
pub const CLOSED_LOOP: Rhythm = Rhythm {
    gap: (0.0, 0.0),
    partials: 1,
    backchannel_share: 0.25,
};

/// Connect `n` channels to the server (retrying while it starts).
pub async fn connect(endpoint: &str, n: usize, wait: Duration) -> Result<Vec<Channel>, LoadError> {
    let deadline = Instant::now() + wait;
    let mut channels = Vec::with_capacity(n);
    while channels.len() < n {
        match Channel::from_shared(endpoint.to_string())
            .map_err(|_| LoadError::Connect(endpoint.into()))?
            .tcp_nodelay(true)
            .connect()
            .await
        {
            Ok(ch) => channels.push(ch),
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(_) => return Err(LoadError::Connect(endpoint.into())),
        }
    }
    Ok(channels)
}

/// Run `calls` calls for `warmup + duration`, recording only after the warm-up.
pub async fn run_stage(
    channels: &[Channel],
    corpus: &Arc<Corpus>,
    calls: usize,
    rhythm: Rhythm,
    warmup: Duration,
    duration: Duration,
    seed: u64,
) -> Arc<Stage> {
    let stage = Arc::new(Stage::default());
    let start = Instant::now();
    let end = start + warmup + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for call in 0..calls {
        let ch = channels[(call * 2 / STREAMS_PER_CONNECTION.max(1)) % channels.len()].clone();
        let corpus = corpus.clone();
        let stage = stage.clone();
        tasks.spawn(run_call(
            ch,
            corpus,
            stage,
            call as u32,
            rhythm,
            end,
            seed ^ ((call as u64 + 1) * 0x9E37_79B9),
        ));
    }
    tokio::time::sleep_until((start + warmup).into()).await;
    stage.measuring.store(true, Ordering::Relaxed);
    // counters restart with the measurement window
    for c in [
        &stage.finals,
        &stage.partials,
        &stage.alerts,
        &stage.degraded,
        &stage.rejected,
    ] {
        c.store(0, Ordering::Relaxed);
    }
    while tasks.join_next().await.is_some() {}
    stage
}

async fn run_call(
    ch: Channel,
    corpus: Arc<Corpus>,
    stage: Arc<Stage>,
    call: u32,
    rhythm: Rhythm,
    end: Instant,
    seed: u64,
) {
    let mut rng = Rng(seed | 1);
    let langs = ["sv", "nb", "nn", "da"];
    let lang = langs[rng.below(4)];
    let call_id = format!("load-{seed:x}-{call}");
    let agent_id = format!("load-agent-{seed:x}-{call}");
    // the agent's softphone
    let feed = pb::alert_feed_client::AlertFeedClient::new(ch.clone())
        .subscribe(pb::SubscribeRequest {
            agent_id: agent_id.clone(),
            resume_after: None,
        })
        .await;
    let Ok(feed) = feed else {
        stage.stream_errors.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let mut feed = feed.into_inner();
    let alert_stage = stage.clone();
    let alerts = tokio::spawn(async move {
        while let Some(Ok(event)) = feed.next().await {
            if let Some(pb::alert_event::Event::Alert(a)) = event.event {
                alert_stage.alerts.fetch_add(1, Ordering::Relaxed);
                let Ok(utt) = a.utterance_id.parse::<u32>() else {
                    continue;
                };
                let sent = alert_stage
                    .sent
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&(call, utt));
                if let (Some(sent), true) = (sent, alert_stage.measuring.load(Ordering::Relaxed)) {
                    alert_stage.alert.record(sent.elapsed());
                }
            }
        }
    });

    let (tx, rx) = mpsc::channel::<pb::CallEvent>(8);
    let start = pb::CallEvent {
        event: Some(pb::call_event::Event::Start(pb::CallStart {
            call_id,
            tenant: "load".into(),
            agent_id,
            language: lang.into(),
            team: format!("team-{}", call % 16),
            resume: false,
        })),
    };
    if tx.send(start).await.is_err() {
        return;
    }
    let acks = pb::ingest_client::IngestClient::new(ch)
        .stream_call(ReceiverStream::new(rx))
        .await;
    let Ok(acks) = acks else {
        stage.stream_errors.fetch_add(1, Ordering::Relaxed);
        alerts.abort();
        return;
    };
    let mut acks = acks.into_inner();
    // first ack: accepted
    if !matches!(acks.next().await, Some(Ok(_))) {
        stage.stream_errors.fetch_add(1, Ordering::Relaxed);
        alerts.abort();
        return;
    }
    // stagger calls over the first gap so finals do not arrive in lockstep
    let first = rng.unit() * rhythm.gap.1;
    tokio::time::sleep(Duration::from_secs_f64(first)).await;
    let mut turn: u32 = 0;
    while Instant::now() < end {
        let agent = turn % 2 == 1;
        let text = corpus.pick(&mut rng, agent, lang, rhythm.backchannel_share);
        let speaker = if agent {
            pb::Speaker::Agent
        } else {
            pb::Speaker::Customer
        } as i32;
        let gap = rhythm.gap.0 + rng.unit() * (rhythm.gap.1 - rhythm.gap.0);
        let id = turn.to_string();
        // partials: growing prefixes of the final text, spread over the gap
        let words: Vec<&str> = text.split(' ').collect();
        for p in 1..=rhythm.partials {
            let cut = (words.len() * p / (rhythm.partials + 1)).max(1);
            let partial = pb::CallEvent {
                event: Some(pb::call_event::Event::Utterance(pb::Utterance {
                    utterance_id: id.clone(),
                    speaker,
                    text: words[..cut].join(" "),
                    is_final: false,
                    ..Default::default()
                })),
            };
            if tx.send(partial).await.is_err() || read_ack(&mut acks, &stage, None).await.is_none()
            {
                break;
            }
            tokio::time::sleep(Duration::from_secs_f64(
                gap / (rhythm.partials as f64 + 1.0),
            ))
            .await;
        }
        let sent = Instant::now();
        if !agent {
            stage
                .sent
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert((call, turn), sent);
        }
        let final_event = pb::CallEvent {
            event: Some(pb::call_event::Event::Utterance(pb::Utterance {
                utterance_id: id,
                speaker,
                text,
                is_final: true,
                ..Default::default()
            })),
        };
        if tx.send(final_event).await.is_err() {
            break;
        }
        match read_ack(&mut acks, &stage, Some(sent)).await {
            None => break,
            // no alert will come for it: forget its send time
            Some(false) if !agent => {
                stage
                    .sent
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&(call, turn));
            }
            Some(_) => {}
        }
        if gap > 0.0 {
            tokio::time::sleep(Duration::from_secs_f64(
                gap / (rhythm.partials as f64 + 1.0),
            ))
            .await;
        }
        turn += 1;
    }
    let _ = tx
        .send(pb::CallEvent {
            event: Some(pb::call_event::Event::End(pb::CallEnd {
                reason: "load".into(),
            })),
        })
        .await;
    drop(tx);
    while let Some(Ok(_)) = acks.next().await {}
    // let the debrief arrive, then stop listening
    tokio::time::sleep(Duration::from_millis(200)).await;
    alerts.abort();
}

/// Read one ack and record final→ack latency for finals. `None` when the stream is gone;
/// otherwise whether the ack announced an alert.
async fn read_ack(
    acks: &mut tonic::Streaming<pb::CallAck>,
    stage: &Stage,
    sent: Option<Instant>,
) -> Option<bool> {
    let Some(Ok(ack)) = acks.next().await else {
        stage.stream_errors.fetch_add(1, Ordering::Relaxed);
        return None;
    };
    match ack.ack {
        Some(pb::call_ack::Ack::Scored(s)) => {
            stage.finals.fetch_add(1, Ordering::Relaxed);
            if s.degraded {
                stage.degraded.fetch_add(1, Ordering::Relaxed);
            }
            if let (Some(sent), true) = (sent, stage.measuring.load(Ordering::Relaxed)) {
                stage.ack.record(sent.elapsed());
            }
            Some(!s.alert_kinds.is_empty())
        }
        Some(pb::call_ack::Ack::Partial(_)) => {
            stage.partials.fetch_add(1, Ordering::Relaxed);
            Some(false)
        }
        Some(pb::call_ack::Ack::Rejected(_)) => {
            stage.rejected.fetch_add(1, Ordering::Relaxed);
            Some(false)
        }
        _ => Some(false),
    }
}

/// CPU seconds (user + system) and resident memory of a process, from /proc.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcSample {
    pub cpu_s: f64,
    pub rss_mb: f64,
}

pub fn sample_proc(pid: &str) -> ProcSample {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // fields after the command name (which may contain spaces) start after the last ')'
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after the name; USER_HZ is 100
    let cpu_s = (ticks(11) + ticks(12)) / 100.0;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss_kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    ProcSample {
        cpu_s,
        rss_mb: rss_kb / 1024.0,
    }
}

/// Figures for one stage, as JSON.
pub fn stage_report(
    stage: &Stage,
    calls: usize,
    secs: f64,
    server: (ProcSample, ProcSample),
    me: (ProcSample, ProcSample),
) -> serde_json::Value {
    let per_s = |c: &AtomicU64| round2(c.load(Ordering::Relaxed) as f64 / secs);
    json!({
        "calls": calls,
        "seconds": round2(secs),
        "finals_per_s": per_s(&stage.finals),
        "partials_per_s": per_s(&stage.partials),
        "alerts_per_s": per_s(&stage.alerts),
        "final_to_ack": stage.ack.summary(),
        "final_to_alert": stage.alert.summary(),
        "degraded": stage.degraded.load(Ordering::Relaxed),
        "rejected": stage.rejected.load(Ordering::Relaxed),
        "stream_errors": stage.stream_errors.load(Ordering::Relaxed),
        "server_rss_mb": round2(server.1.rss_mb),
        "server_cpu_cores": round2((server.1.cpu_s - server.0.cpu_s) / secs),
        "loadgen_cpu_cores": round2((me.1.cpu_s - me.0.cpu_s) / secs),
    })
}

/// The raw model ceiling: the ONNX model called directly on corpus texts at a fixed batch
/// size, utterances per second (best of three timed passes after a warm-up).
pub fn raw_model_throughput(
    cfg: &Config,
    corpus: &Corpus,
    batch: usize,
    utterances: usize,
) -> Result<f64, LoadError> {
    let mut engine = Engine::load(&cfg.model, batch)?;
    let mut rng = Rng(42);
    let texts: Vec<String> = (0..utterances)
        .map(|i| corpus.pick(&mut rng, i % 2 == 1, ["sv", "nb", "nn", "da"][i % 4], 0.0))
        .collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let mut out: Vec<RawScore> = Vec::new();
    engine.score_all(&refs[..utterances.min(64)], &mut out)?;
    let mut best = 0.0f64;
    for _ in 0..3 {
        let t = Instant::now();
        engine.score_all(&refs, &mut out)?;
        best = best.max(utterances as f64 / t.elapsed().as_secs_f64());
    }
    Ok(best)
}

/// The default corpus: the dev set when built, else the committed examples.
pub fn default_corpus() -> PathBuf {
    let dev = PathBuf::from("models/data/dev.jsonl");
    if dev.exists() {
        dev
    } else {
        PathBuf::from("examples/utterances.jsonl")
    }
}

/// What `make bench` asks for.
pub struct BenchOptions {
    /// A running server ("http://HOST:PORT") and its pid; by default one is spawned.
    pub endpoint: Option<(String, String)>,
    pub corpus: PathBuf,
    pub out: PathBuf,
    /// Seconds per measured stage (a quick smoke run uses a few).
    pub stage_secs: u64,
    /// Upper bound on the calls the ramp tries.
    pub max_calls: usize,
    /// Config file for the spawned server (and the raw model measurement).
    pub config_path: Option<PathBuf>,
}

/// The finals per second one realistic call sends.
fn finals_per_call_per_s() -> f64 {
    2.0 / (REALISTIC.gap.0 + REALISTIC.gap.1)
}

/// Run the whole benchmark: raw ceiling, saturation, 70 % load, ramp. Returns the summary.
pub async fn bench(cfg: &Config, opts: &BenchOptions) -> Result<serde_json::Value, LoadError> {
    let corpus = Arc::new(Corpus::load(&opts.corpus)?);
    // 1. the raw model ceiling, before any server competes for the cores
    let mut raw = serde_json::Map::new();
    for batch in [1usize, 8, 32] {
        let (cfg, corpus) = (cfg.clone(), corpus.clone());
        let n = if batch == 1 { 256 } else { 1024 };
        let ups =
            tokio::task::spawn_blocking(move || raw_model_throughput(&cfg, &corpus, batch, n))
                .await
                .map_err(std::io::Error::other)??;
        tracing::info!(batch, utt_per_s = ups, "raw model");
        raw.insert(format!("batch_{batch}"), json!(round2(ups)));
    }
    let raw_utt_per_s = raw["batch_32"].as_f64().unwrap_or(1.0);

    // 2. the server: spawned as a child so that its RSS and CPU are its own
    let mut child = None;
    let (endpoint, pid) = match &opts.endpoint {
        Some((endpoint, pid)) => (endpoint.clone(), pid.clone()),
        None => {
            let port = std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port();
            let log = std::fs::File::create(opts.out.with_file_name("server.log"))?;
            let mut cmd = std::process::Command::new(std::env::current_exe()?);
            cmd.args(["serve", "--addr", &format!("127.0.0.1:{port}")]);
            // a fresh incident database beside the summary: the store's writes are part of the cost
            let db = opts.out.with_file_name("incidents.sqlite");
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
            }
            cmd.arg("--incidents-db").arg(&db);
            if let Some(path) = &opts.config_path {
                cmd.arg("--config").arg(path);
            }
            let c = cmd
                .env("RUST_LOG", "warn")
                .stdout(std::process::Stdio::null())
                .stderr(log)
                .spawn()?;
            let pid = c.id().to_string();
            child = Some(c);
            (format!("http://127.0.0.1:{port}"), pid)
        }
    };
    let result = drive(&endpoint, &pid, corpus, raw_utt_per_s, opts).await;
    if let Some(mut c) = child {
        let _ = c.kill();
        let _ = c.wait();
    }
    let mut summary = result?;
    summary["raw_model"] = serde_json::Value::Object(raw);
    summary["cpu_model"] = json!(cpu_model());
    summary["cores"] = json!(std::thread::available_parallelism().map_or(0, |n| n.get()));
    Ok(summary)
}

async fn drive(
    endpoint: &str,
    pid: &str,
    corpus: Arc<Corpus>,
    raw: f64,
    opts: &BenchOptions,
) -> Result<serde_json::Value, LoadError> {
    let secs = Duration::from_secs(opts.stage_secs);
    let warm = Duration::from_secs((opts.stage_secs / 4).max(2));
    let channels = connect(
        endpoint,
        opts.max_calls.div_ceil(STREAMS_PER_CONNECTION / 2).max(1),
        Duration::from_secs(60),
    )
    .await?;
    let mut seed = 1u64;
    let mut measure = |calls: usize, rhythm: Rhythm| {
        seed += 1;
        let (channels, corpus) = (&channels, &corpus);
        async move {
            let (s0, m0) = (sample_proc(pid), sample_proc("self"));
            let t = Instant::now();
            let stage = run_stage(channels, corpus, calls, rhythm, warm, secs, seed).await;
            let elapsed = t.elapsed().as_secs_f64() - warm.as_secs_f64();
            let report = stage_report(
                &stage,
                calls,
                elapsed,
                (s0, sample_proc(pid)),
                (m0, sample_proc("self")),
            );
            tracing::info!(calls, report = %report, "stage");
            (stage, report)
        }
    };
    // 3. saturation: closed-loop calls, each sending its next final when the last is acked
    let (_, saturated) = measure(96, CLOSED_LOOP).await;
    let service = saturated["finals_per_s"].as_f64().unwrap_or(0.0);
    // 4. realistic calls at 70 % of that
    let calls70 = ((0.7 * service / finals_per_call_per_s()) as usize).clamp(1, opts.max_calls);
    let (_, at70) = measure(calls70, REALISTIC).await;
    // 5. ramp: the largest number of realistic calls with p99 final→alert <= 50 ms
    let ok = |r: &serde_json::Value| {
        r["final_to_alert"]["p99_ms"].as_f64().unwrap_or(f64::MAX) <= 50.0
            && r["final_to_alert"]["count"].as_u64().unwrap_or(0) >= 20
            && r["degraded"].as_u64() == Some(0)
            && r["stream_errors"].as_u64() == Some(0)
    };
    let (mut good, mut bad): (Option<(usize, serde_json::Value)>, Option<usize>) = (None, None);
    let mut calls = calls70.max(8);
    let mut stages = vec![at70.clone()];
    for _ in 0..8 {
        let (_, report) = measure(calls, REALISTIC).await;
        stages.push(report.clone());
        if ok(&report) {
            good = Some((calls, report));
        } else {
            bad = Some(calls);
        }
        let next = match (&good, bad) {
            (Some((g, _)), Some(b)) if b <= g + g / 10 + 1 => break,
            (Some((g, _)), Some(b)) => (g + b) / 2,
            (Some((g, _)), None) => (g * 3 / 2).min(opts.max_calls),
            (None, Some(b)) => b / 2,
            (None, None) => unreachable!("a stage either passed or failed"),
        };
        if next == calls || next == 0 {
            break;
        }
        calls = next;
    }
    let (max_calls, at_max) = good.unwrap_or((0, json!({})));
    Ok(json!({
        "raw_utt_per_s": round2(raw),
        "service_utt_per_s": round2(service),
        "ratio": round2(service / raw),
        "p99_ms_at_70pct": at70["final_to_alert"]["p99_ms"],
        "max_calls_p99_50ms": max_calls,
        "calls_per_raw": round2(max_calls as f64 / raw),
        "rss_mb_at_max_calls": at_max.get("server_rss_mb").cloned().unwrap_or(json!(null)),
        "saturation": saturated,
        "at_70pct": at70,
        "at_max_calls": at_max,
        "stages": stages,
    }))
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
            })
        })
        .unwrap_or_else(|| "unknown".into())
}
