//! The incident store over a real process: an acknowledged alert survives kill -9, the
//! restarted server resumes sequence numbers and replay, and the export CLI reads it back.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};

use callguard::proto as pb;
use common::*;
use pb::Speaker::Customer;

const BIN: &str = env!("CARGO_BIN_EXE_callguard");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// A server process that is killed (SIGKILL) when dropped, so a failing test leaves none behind.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `callguard serve` as its own process on a free port, with the metrics endpoint off.
fn spawn_server(dir: &Path, db: &Path) -> (Killed, String) {
    let config = dir.join("callguard.toml");
    std::fs::write(&config, "[server]\nmetrics_addr = \"\"\n").expect("config");
    let addr = format!("127.0.0.1:{}", free_port());
    let child = Command::new(BIN)
        .args(["serve", "--addr", &addr, "--config"])
        .arg(&config)
        .arg("--incidents-db")
        .arg(db)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn callguard serve");
    (Killed(child), format!("http://{addr}"))
}

fn export(db: &Path, call: &str, format: &str) -> String {
    let out = Command::new(BIN)
        .args([
            "incidents",
            "export",
            "--call",
            call,
            "--format",
            format,
            "--db",
        ])
        .arg(db)
        .output()
        .expect("run export");
    assert!(out.status.success(), "export failed: {out:?}");
    String::from_utf8(out.stdout).expect("utf-8")
}

#[tokio::test]
async fn an_acknowledged_incident_survives_kill_9_and_the_restart_resumes_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("incidents.sqlite");
    let (agent, call_id) = ("agent-k9", "call-k9");

    let (child, endpoint) = spawn_server(dir.path(), &db);
    let ch = Server::connect(&endpoint).await;
    let mut call = Call::start(&ch, call_id, agent, "sv").await;
    let scored = call.say("u1", Customer, THREAT_SV).await;
    assert!(scored.alert_kinds.iter().any(|k| k == "escalate"));
    call.say("u2", Customer, THREAT_SV).await;
    drop(child); // SIGKILL: no shutdown, no flush, only what was committed survives

    let json: serde_json::Value =
        serde_json::from_str(&export(&db, call_id, "json")).expect("json");
    let rows = json["incidents"].as_array().expect("incidents");
    assert_eq!(rows.len(), 2, "{json}");
    assert_eq!(rows[0]["kind"], "escalate");
    assert_eq!(rows[0]["agent_id"], agent);
    assert_eq!(rows[0]["team"], "team-a");
    assert_eq!(rows[0]["seq"], 1);
    assert!(
        rows[0]["text"].is_null(),
        "text is stored only when config opts in"
    );
    assert!(export(&db, call_id, "text").contains("escalate"));
    assert!(export(&db, call_id, "html").starts_with("<!doctype html>"));

    // restart on the same database: a softphone that saw seq 1 resumes, numbering continues
    let (child, endpoint) = spawn_server(dir.path(), &db);
    let ch = Server::connect(&endpoint).await;
    let mut feed = Feed::subscribe(&ch, agent, 1).await;
    let replayed = feed.next_alert().await;
    assert_eq!((replayed.seq, replayed.utterance_id.as_str()), (2, "u2"));
    let mut call = Call::start(&ch, "call-k9-2", agent, "sv").await;
    call.say("u1", Customer, THREAT_SV).await;
    let next = feed.next_alert().await;
    assert_eq!((next.seq, next.call_id.as_str()), (3, "call-k9-2"));
    drop(child);

    let stats = Command::new(BIN)
        .args(["incidents", "stats", "--format", "json", "--db"])
        .arg(&db)
        .output()
        .expect("stats");
    let stats: serde_json::Value = serde_json::from_slice(&stats.stdout).expect("json");
    assert_eq!(stats["teams"][0]["team"], "team-a");
    assert_eq!(stats["teams"][0]["alerts"], 3);
    assert_eq!(stats["teams"][0]["calls"], 2);
}
