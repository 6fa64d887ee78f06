//! `callguard soak`: a long, bounded run under faults that accounts for every alert.
//!
//! The server runs as a child process on a fixed loopback port and a fresh incident database.
//! Calls speak corpus text (abuse included) at a brisk rhythm; each agent's softphone follows
//! its feed and, like a real one, resubscribes with the last sequence number it saw whenever its
//! stream breaks. Faults: call streams and softphones drop at random (a call resumes with
//! `resume = true` and resends the utterance whose ack it lost); the server is stopped with
//! SIGTERM once and killed with SIGKILL once, each time restarted on the same database; the
//! config file is edited mid-run. Every alert an acknowledgement announced must reach the
//! softphone (`alerts_lost`) and be in the incident store (`incidents_lost`).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use crate::loadgen::{Corpus, LoadError, Rng, sample_proc};
use crate::proto as pb;

/// What `make soak` asks for.
pub struct SoakOptions {
    pub secs: u64,
    /// Calls in progress at any time (each slot runs call after call for its own agent).
    pub calls: usize,
    pub corpus: PathBuf,
    /// Directory for the summary, the server log, its config and database.
    pub dir: PathBuf,
    /// Config merged under the soak's own settings (thresholds, model, ...).
    pub config: Option<PathBuf>,
}

/// (call id, utterance id, alert kind); debriefs use an empty utterance id.
type Key = (String, String, String);

/// What the calls were promised and what the softphones got.
#[derive(Default)]
struct Ledger {
    expected: Mutex<HashSet<Key>>,
    delivered: Mutex<HashSet<Key>>,
    finals: AtomicU64,
    duplicates: AtomicU64,
    gaps: AtomicU64,
    rejected: AtomicU64,
    stream_drops: AtomicU64,
    feed_drops: AtomicU64,
    calls_cut: AtomicU64,
    calls_done: AtomicU64,
}

fn key(call: &str, utterance: &str, kind: &str) -> Key {
    let utterance = if kind == "debrief" { "" } else { utterance };
    (call.to_string(), utterance.to_string(), kind.to_string())
}

impl Ledger {
    fn expect(&self, call: &str, utterance: &str, kinds: &[String]) {
        let mut expected = self.expected.lock().unwrap_or_else(|p| p.into_inner());
        for kind in kinds {
            expected.insert(key(call, utterance, kind));
        }
    }
}

/// The server process and how to start it again.
struct ServerProc {
    child: Child,
    args: Vec<String>,
    log: PathBuf,
}

impl ServerProc {
    fn spawn(args: Vec<String>, log: PathBuf) -> Result<ServerProc, LoadError> {
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        let child = Command::new(std::env::current_exe()?)
            .args(&args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()?;
        Ok(ServerProc { child, args, log })
    }

    fn pid(&self) -> String {
        self.child.id().to_string()
    }

    /// SIGTERM (graceful) or SIGKILL, wait for the exit, start again. Returns the exit status.
    fn restart(&mut self, graceful: bool) -> Result<String, LoadError> {
        let status = self.stop(graceful)?;
        // assigning drops the old process, which has exited already
        *self = ServerProc::spawn(self.args.clone(), self.log.clone())?;
        Ok(status)
    }

    fn stop(&mut self, graceful: bool) -> Result<String, LoadError> {
        if graceful {
            signal(&self.pid(), "TERM");
            let deadline = Instant::now() + Duration::from_secs(60);
            while self.child.try_wait()?.is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let _ = self.child.kill();
        Ok(format!("{:?}", self.child.wait()?))
    }
}

impl Drop for ServerProc {
    /// A soak that fails half-way leaves no server behind.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn signal(pid: &str, name: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{name}"), pid])
        .status();
}

/// Run the soak and return its summary.
pub async fn soak(opts: &SoakOptions) -> Result<serde_json::Value, LoadError> {
    std::fs::create_dir_all(&opts.dir)?;
    let corpus = Arc::new(Corpus::load(&opts.corpus)?);
    let db = opts.dir.join("incidents.sqlite");
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    let log = opts.dir.join("server.log");
    let _ = std::fs::remove_file(&log);
    let config = opts.dir.join("callguard.toml");
    let base = match &opts.config {
        Some(path) => std::fs::read_to_string(path)?,
        None => String::new(),
    };
    let write_config = |profanity: f32| {
        // the soak's own keys first; a table the base file also has would clash, so the base
        // file must not set [server] (documented in `callguard soak --help`)
        std::fs::write(
            &config,
            format!(
                "[server]\nmetrics_addr = \"\"\nshutdown_grace_s = 5\n\
                 [thresholds.da]\nprofanity = {profanity}\n{base}"
            ),
        )
    };
    write_config(0.99)?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let args: Vec<String> = vec![
        "serve".into(),
        "--addr".into(),
        format!("127.0.0.1:{port}"),
        "--config".into(),
        config.display().to_string(),
        "--incidents-db".into(),
        db.display().to_string(),
    ];
    let mut server = ServerProc::spawn(args, log.clone())?;
    let endpoint = format!("http://127.0.0.1:{port}");
    let channels: Vec<Channel> = (0..4)
        .map(|_| {
            Channel::from_shared(endpoint.clone())
                .map(|e| e.tcp_nodelay(true).connect_lazy())
                .map_err(|_| LoadError::Connect(endpoint.clone()))
        })
        .collect::<Result<_, _>>()?;
    wait_serving(&channels[0], Duration::from_secs(60)).await?;

    let ledger = Arc::new(Ledger::default());
    let started = Instant::now();
    let end = started + Duration::from_secs(opts.secs);
    let mut feeds = tokio::task::JoinSet::new();
    let mut calls = tokio::task::JoinSet::new();
    let stop_feeds = tokio_util::sync::CancellationToken::new();
    for slot in 0..opts.calls {
        let ch = channels[slot % channels.len()].clone();
        let agent = format!("soak-agent-{slot}");
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        feeds.spawn(follow_feed(
            ch.clone(),
            agent.clone(),
            ledger.clone(),
            stop_feeds.clone(),
            slot as u64,
            ready_tx,
        ));
        // the softphone is listening before the agent's first call
        let _ = ready_rx.await;
        calls.spawn(run_calls(
            ch,
            corpus.clone(),
            agent,
            slot,
            ledger.clone(),
            end,
        ));
    }

    // the fault schedule, and RSS samples of the last server life
    let at = |share: f64| started + Duration::from_secs_f64(opts.secs as f64 * share);
    let mut events = Vec::new();
    let mut rss: Vec<(f64, f64)> = Vec::new();
    let mut last_start = started;
    let mut config_reloaded = None;
    let mut schedule = vec![
        (at(0.2), "sigterm"),
        (at(0.35), "sigkill"),
        (at(0.5), "reload"),
    ];
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let now = Instant::now();
        if let Some(&(when, what)) = schedule.first()
            && now >= when
        {
            schedule.remove(0);
            let t = round1((now - started).as_secs_f64());
            match what {
                "reload" => {
                    let before = config_version(&channels[0]).await;
                    write_config(0.98)?;
                    let mut after = before;
                    for _ in 0..50 {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        after = config_version(&channels[0]).await;
                        if after > before {
                            break;
                        }
                    }
                    config_reloaded = Some(after > before);
                    events.push(json!({"at_s": t, "event": "config_reload", "version_before": before, "version_after": after}));
                }
                kind => {
                    let graceful = kind == "sigterm";
                    let exit = tokio::task::block_in_place(|| server.restart(graceful))?;
                    events.push(json!({"at_s": t, "event": kind, "exit": exit}));
                    let _ = wait_serving(&channels[0], Duration::from_secs(60)).await;
                    last_start = Instant::now();
                    rss.clear();
                }
            }
            continue;
        }
        rss.push((
            (now - last_start).as_secs_f64(),
            sample_proc(&server.pid()).rss_mb,
        ));
    }

    let mut task_panics = 0u64;
    while let Some(done) = calls.join_next().await {
        task_panics += u64::from(done.is_err_and(|e| e.is_panic()));
    }
    // let the last alerts arrive, then stop the softphones and the server (gracefully)
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop_feeds.cancel();
    while let Some(done) = feeds.join_next().await {
        task_panics += u64::from(done.is_err_and(|e| e.is_panic()));
    }
    let final_exit = tokio::task::block_in_place(|| server.stop(true))?;

    let expected = std::mem::take(&mut *ledger.expected.lock().unwrap_or_else(|p| p.into_inner()));
    let delivered =
        std::mem::take(&mut *ledger.delivered.lock().unwrap_or_else(|p| p.into_inner()));
    let stored = stored_incidents(&db)?;
    let lost: Vec<&Key> = expected
        .iter()
        .filter(|k| !delivered.contains(*k))
        .collect();
    let not_stored = expected.iter().filter(|k| !stored.contains(*k)).count();
    let server_panics = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .matches("panicked at")
        .count() as u64;
    // RSS after a warm-up of 30 s into the last server life, and at the end
    let rss_start = rss
        .iter()
        .find(|(t, _)| *t >= 30.0)
        .or(rss.first())
        .map_or(0.0, |s| s.1);
    let rss_end = rss.last().map_or(0.0, |s| s.1);
    let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
    Ok(json!({
        "seconds": opts.secs,
        "concurrent_calls": opts.calls,
        "calls_completed": n(&ledger.calls_done),
        "calls_cut_by_restart": n(&ledger.calls_cut),
        "finals_acked": n(&ledger.finals),
        "alerts_expected": expected.len(),
        "alerts_delivered": expected.len() - lost.len(),
        "alerts_lost": lost.len(),
        "lost_examples": lost.iter().take(5).map(|k| format!("{}/{}/{}", k.0, k.1, k.2)).collect::<Vec<_>>(),
        "alerts_delivered_twice": n(&ledger.duplicates),
        "replay_gaps": n(&ledger.gaps),
        "incidents_stored": stored.len(),
        "incidents_lost": not_stored,
        "events_rejected": n(&ledger.rejected),
        "call_stream_drops": n(&ledger.stream_drops),
        "softphone_drops": n(&ledger.feed_drops),
        "faults": events,
        "config_reloaded": config_reloaded,
        "final_exit": final_exit,
        "rss_mb_start": round1(rss_start),
        "rss_mb_end": round1(rss_end),
        "rss_growth_pct": round1(if rss_start > 0.0 { (rss_end / rss_start - 1.0) * 100.0 } else { 0.0 }),
        "panics": server_panics + task_panics,
    }))
}

fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

async fn wait_serving(ch: &Channel, wait: Duration) -> Result<(), LoadError> {
    let deadline = Instant::now() + wait;
    let mut health = tonic_health::pb::health_client::HealthClient::new(ch.clone());
    loop {
        let req = tonic_health::pb::HealthCheckRequest {
            service: "callguard.v1.Ingest".into(),
        };
        if let Ok(resp) = health.check(req).await
            && resp.into_inner().status
                == tonic_health::pb::health_check_response::ServingStatus::Serving as i32
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(LoadError::Connect("server did not come up".into()));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn config_version(ch: &Channel) -> u64 {
    let mut ops = pb::ops_client::OpsClient::new(ch.clone());
    ops.status(pb::StatusRequest {})
        .await
        .map_or(0, |r| r.into_inner().config_version)
}

/// Every (call, utterance, kind) the incident store holds.
fn stored_incidents(db: &Path) -> Result<HashSet<Key>, LoadError> {
    let conn = rusqlite::Connection::open(db).map_err(std::io::Error::other)?;
    let mut stmt = conn
        .prepare("SELECT call_id, utterance_id, kind FROM incidents")
        .map_err(std::io::Error::other)?;
    let rows = stmt
        .query_map([], |r| {
            Ok(key(
                &r.get::<_, String>(0)?,
                &r.get::<_, String>(1)?,
                &r.get::<_, String>(2)?,
            ))
        })
        .map_err(std::io::Error::other)?;
    Ok(rows.filter_map(Result::ok).collect())
}

/// One agent's softphone: follow the feed, resume after the last seen sequence number when
/// the stream breaks (or, now and then, on purpose), record what arrives.
async fn follow_feed(
    ch: Channel,
    agent: String,
    ledger: Arc<Ledger>,
    stop: tokio_util::sync::CancellationToken,
    seed: u64,
    ready: tokio::sync::oneshot::Sender<()>,
) {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut last_seq: Option<u64> = None;
    let mut ready = Some(ready);
    while !stop.is_cancelled() {
        let request = pb::SubscribeRequest {
            agent_id: agent.clone(),
            // the first subscription (nothing seen yet) asks for the whole buffer too
            resume_after: Some(last_seq.unwrap_or(0)),
        };
        let stream = pb::alert_feed_client::AlertFeedClient::new(ch.clone())
            .subscribe(request)
            .await;
        let Ok(stream) = stream else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        if let Some(ready) = ready.take() {
            let _ = ready.send(());
        }
        let mut stream = stream.into_inner();
        loop {
            let item = tokio::select! {
                _ = stop.cancelled() => return,
                item = stream.next() => item,
            };
            let Some(Ok(event)) = item else { break };
            match event.event {
                Some(pb::alert_event::Event::Alert(a)) => {
                    if last_seq.is_some_and(|last| a.seq <= last) {
                        ledger.duplicates.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    last_seq = Some(a.seq);
                    ledger
                        .delivered
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(key(&a.call_id, &a.utterance_id, &a.kind_name));
                }
                Some(pb::alert_event::Event::Gap(_)) => {
                    ledger.gaps.fetch_add(1, Ordering::Relaxed);
                }
                None => {}
            }
            // a softphone that drops now and then (network, laptop lid)
            if rng.unit() < 0.05 {
                ledger.feed_drops.fetch_add(1, Ordering::Relaxed);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50 + rng.below(400) as u64)).await;
    }
}

/// How one call attempt ended.
enum Attempt {
    /// The call was closed normally.
    Done,
    /// The stream broke: resume from this turn.
    Broken(usize),
    /// The server no longer knows the call (it restarted): give it up.
    Cut,
}

/// One slot: call after call for `agent` until `end`.
async fn run_calls(
    ch: Channel,
    corpus: Arc<Corpus>,
    agent: String,
    slot: usize,
    ledger: Arc<Ledger>,
    end: Instant,
) {
    let mut rng = Rng((slot as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03) | 1);
    let mut generation = 0u32;
    while Instant::now() < end {
        generation += 1;
        let call_id = format!("soak-{slot}-{generation}");
        let lang = ["sv", "nb", "nn", "da"][rng.below(4)];
        let turns: Vec<String> = (0..6 + rng.below(9))
            .map(|t| corpus.pick(&mut rng, t % 2 == 1, lang, 0.15))
            .collect();
        let mut from = 0;
        let mut resume = false;
        loop {
            if Instant::now() > end + Duration::from_secs(30) {
                return;
            }
            match call_attempt(
                &ch, &call_id, &agent, lang, &turns, from, resume, &ledger, &mut rng, end,
            )
            .await
            {
                Attempt::Done => {
                    ledger.calls_done.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                Attempt::Cut => {
                    ledger.calls_cut.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                Attempt::Broken(turn) => {
                    ledger.stream_drops.fetch_add(1, Ordering::Relaxed);
                    from = turn;
                    resume = true;
                    tokio::time::sleep(Duration::from_millis(100 + rng.below(300) as u64)).await;
                }
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn call_attempt(
    ch: &Channel,
    call_id: &str,
    agent: &str,
    lang: &str,
    turns: &[String],
    from: usize,
    resume: bool,
    ledger: &Ledger,
    rng: &mut Rng,
    end: Instant,
) -> Attempt {
    let (tx, rx) = mpsc::channel::<pb::CallEvent>(4);
    let start = pb::call_event::Event::Start(pb::CallStart {
        call_id: call_id.into(),
        tenant: "soak".into(),
        agent_id: agent.into(),
        language: lang.into(),
        team: "soak-team".into(),
        resume,
    });
    let _ = tx.send(pb::CallEvent { event: Some(start) }).await;
    let Ok(acks) = pb::ingest_client::IngestClient::new(ch.clone())
        .stream_call(ReceiverStream::new(rx))
        .await
    else {
        return Attempt::Broken(from);
    };
    let mut acks = acks.into_inner();
    match next_ack(&mut acks).await {
        Ok(pb::call_ack::Ack::Accepted(_)) => {}
        Err(Some(tonic::Code::NotFound)) => return Attempt::Cut,
        _ => return Attempt::Broken(from),
    }
    for (turn, text) in turns.iter().enumerate().skip(from) {
        let speaker = if turn % 2 == 1 {
            pb::Speaker::Agent
        } else {
            pb::Speaker::Customer
        } as i32;
        let utterance = |is_final: bool, text: String| pb::CallEvent {
            event: Some(pb::call_event::Event::Utterance(pb::Utterance {
                utterance_id: turn.to_string(),
                speaker,
                text,
                is_final,
                ..Default::default()
            })),
        };
        let first_word = text.split(' ').next().unwrap_or_default().to_string();
        if tx.send(utterance(false, first_word)).await.is_err()
            || next_ack(&mut acks).await.is_err()
        {
            return Attempt::Broken(turn);
        }
        if tx.send(utterance(true, text.clone())).await.is_err() {
            return Attempt::Broken(turn);
        }
        // now and then the stream breaks before the ack arrives: resume resends this turn
        if rng.unit() < 0.01 {
            return Attempt::Broken(turn);
        }
        match next_ack(&mut acks).await {
            Ok(pb::call_ack::Ack::Scored(s)) => {
                ledger.finals.fetch_add(1, Ordering::Relaxed);
                ledger.expect(call_id, &s.utterance_id, &s.alert_kinds);
            }
            Ok(pb::call_ack::Ack::Rejected(_)) => {
                ledger.rejected.fetch_add(1, Ordering::Relaxed);
            }
            Ok(_) => {}
            Err(_) => return Attempt::Broken(turn),
        }
        if Instant::now() > end {
            break;
        }
        tokio::time::sleep(Duration::from_millis(600 + rng.below(800) as u64)).await;
    }
    let close = pb::call_event::Event::End(pb::CallEnd {
        reason: "soak".into(),
    });
    if tx.send(pb::CallEvent { event: Some(close) }).await.is_err() {
        return Attempt::Broken(turns.len());
    }
    match next_ack(&mut acks).await {
        Ok(pb::call_ack::Ack::Closed(c)) => {
            ledger.expect(call_id, "", &c.alert_kinds);
            Attempt::Done
        }
        // the end was not confirmed: resuming finds the call gone or still open
        _ => Attempt::Broken(turns.len()),
    }
}

/// The next ack, or the status code (None: the stream just ended or timed out).
async fn next_ack(
    acks: &mut tonic::Streaming<pb::CallAck>,
) -> Result<pb::call_ack::Ack, Option<tonic::Code>> {
    match tokio::time::timeout(Duration::from_secs(15), acks.next()).await {
        Ok(Some(Ok(pb::CallAck { ack: Some(ack) }))) => Ok(ack),
        Ok(Some(Err(status))) => Err(Some(status.code())),
        _ => Err(None),
    }
}
