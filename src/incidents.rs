//! The incident store: every alert, durably, in an embedded SQLite database (WAL).
//!
//! One writer thread owns the connection. Sessions hand it incidents and await its commit
//! before acknowledging the utterance, so an acknowledged alert survives a crash (kill -9):
//! WAL with `synchronous = NORMAL` loses nothing when the process dies, only on power loss.
//! Writes queued together commit in one transaction (group commit). At start the store
//! enforces retention and gives back each agent's last sequence number and recent alerts, so
//! sequence numbers continue across restarts and a softphone can still resume. Transcript
//! text is stored only when `[incidents] store_text` says so; otherwise the row has ids,
//! labels, scores, evidence offsets and alert kinds.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, params};
use serde_json::{Value, json};
use tokio::sync::oneshot;

use crate::alerts::Alert;
use crate::domain::{AgentId, AlertKind, CallId, Evidence, EvidenceSource, Label, Lang};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("incident store {path}: {source}")]
    Open {
        path: String,
        source: rusqlite::Error,
    },
    #[error("incident store: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("incident store stopped")]
    Stopped,
}

/// One alert and what the audit trail keeps beside it.
#[derive(Clone, Debug)]
pub struct Incident {
    pub alert: Arc<Alert>,
    pub config_version: u64,
    /// The utterance, only when `[incidents] store_text = true`.
    pub text: Option<Arc<str>>,
}

enum Write {
    Record(Vec<Incident>, oneshot::Sender<Result<(), String>>),
    Prune(i64),
    /// Commit what is queued, checkpoint the WAL and stop (shutdown).
    Close,
}

/// Handle to the writer thread. Clones share it; the thread ends when the last is dropped,
/// after committing what is queued.
#[derive(Clone)]
pub struct IncidentStore {
    /// To the writer thread (unbounded: the ack path waits for each commit, which bounds it).
    tx: Sender<Write>,
    path: PathBuf,
}

/// What a restart recovers from the store.
#[derive(Default)]
pub struct Recovered {
    /// The last sequence number per agent.
    pub last_seq: Vec<(AgentId, u64)>,
    /// Recent alerts, per agent in sequence order, for the replay buffers.
    pub recent: Vec<Alert>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS incidents (
    id INTEGER PRIMARY KEY,
    created_ms INTEGER NOT NULL,
    tenant TEXT NOT NULL,
    team TEXT NOT NULL,
    agent_id TEXT NOT NULL,
    call_id TEXT NOT NULL,
    utterance_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    kind TEXT NOT NULL,
    lang TEXT NOT NULL,
    labels TEXT NOT NULL,
    evidence TEXT NOT NULL,
    reason TEXT NOT NULL,
    reason_en TEXT NOT NULL,
    crisis_line TEXT,
    report_to_police INTEGER NOT NULL,
    config_version INTEGER NOT NULL,
    text TEXT
);
CREATE INDEX IF NOT EXISTS incidents_call ON incidents(call_id);
CREATE UNIQUE INDEX IF NOT EXISTS incidents_agent_seq ON incidents(agent_id, seq);
CREATE INDEX IF NOT EXISTS incidents_created ON incidents(created_ms);
";

fn connect(path: &Path) -> Result<Connection, StoreError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        let _ = std::fs::create_dir_all(dir);
    }
    let open_err = |source| StoreError::Open {
        path: path.display().to_string(),
        source,
    };
    let conn = Connection::open(path).map_err(open_err)?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(open_err)?;
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(open_err)?;
    conn.busy_timeout(Duration::from_secs(5))
        .map_err(open_err)?;
    conn.execute_batch(SCHEMA).map_err(open_err)?;
    Ok(conn)
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl IncidentStore {
    /// Open (creating) the database, drop incidents older than `retention_days`, recover
    /// sequence numbers and the last `replay` alerts per agent, and start the writer.
    pub fn open(
        path: &Path,
        retention_days: u32,
        replay: usize,
    ) -> Result<(IncidentStore, Recovered, JoinHandle<()>), StoreError> {
        let conn = connect(path)?;
        let cutoff = now_ms() - i64::from(retention_days) * 86_400_000;
        let pruned = conn.execute(
            "DELETE FROM incidents WHERE created_ms < ?1",
            params![cutoff],
        )?;
        if pruned > 0 {
            tracing::info!(pruned, "incidents past retention deleted");
        }
        let recovered = recover(&conn, replay)?;
        let (tx, rx) = std::sync::mpsc::channel();
        let writer = std::thread::Builder::new()
            .name("callguard-incidents".into())
            .spawn(move || write_loop(conn, rx))
            .map_err(|e| StoreError::Open {
                path: path.display().to_string(),
                source: rusqlite::Error::ToSqlConversionFailure(Box::new(e)),
            })?;
        Ok((
            IncidentStore {
                tx,
                path: path.to_path_buf(),
            },
            recovered,
            writer,
        ))
    }

    /// Stop the writer after it commits what is queued. Later `record`s fail with `Stopped`.
    pub fn close(&self) {
        let _ = self.tx.send(Write::Close);
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Record incidents and wait until they are committed.
    pub async fn record(&self, incidents: Vec<Incident>) -> Result<(), StoreError> {
        if incidents.is_empty() {
            return Ok(());
        }
        let (done, committed) = oneshot::channel();
        self.tx
            .send(Write::Record(incidents, done))
            .map_err(|_| StoreError::Stopped)?;
        match committed.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(cause)) => {
                tracing::error!(error = %cause, "incident write failed");
                Err(StoreError::Stopped)
            }
            Err(_) => Err(StoreError::Stopped),
        }
    }

    /// Delete incidents older than `retention_days` (run hourly by the server).
    pub fn prune(&self, retention_days: u32) {
        let _ = self.tx.send(Write::Prune(
            now_ms() - i64::from(retention_days) * 86_400_000,
        ));
    }
}

fn write_loop(mut conn: Connection, rx: Receiver<Write>) {
    let mut closing = false;
    while !closing && let Ok(first) = rx.recv() {
        let mut batch = Vec::new();
        let mut waiters = Vec::new();
        let mut next = Some(first);
        // group commit: everything queued now goes in one transaction
        while let Some(write) = next.take() {
            match write {
                Write::Record(incidents, done) => {
                    batch.extend(incidents);
                    waiters.push(done);
                }
                Write::Prune(cutoff) => {
                    if let Err(err) = conn.execute(
                        "DELETE FROM incidents WHERE created_ms < ?1",
                        params![cutoff],
                    ) {
                        tracing::error!(error = %err, "incident retention failed");
                    }
                }
                Write::Close => closing = true,
            }
            if batch.len() < 512 && !closing {
                next = rx.try_recv().ok();
            }
        }
        let result = insert_all(&mut conn, &batch).map_err(|e| e.to_string());
        for done in waiters {
            let _ = done.send(result.clone());
        }
    }
    if let Err(err) = conn.pragma_update(None, "wal_checkpoint", "TRUNCATE") {
        tracing::warn!(error = %err, "incident store checkpoint at close");
    }
}

fn insert_all(conn: &mut Connection, batch: &[Incident]) -> Result<(), rusqlite::Error> {
    let tx = conn.transaction()?;
    {
        let mut stmt = tx.prepare_cached(
            "INSERT OR IGNORE INTO incidents (created_ms, tenant, team, agent_id, call_id, utterance_id, seq, kind,
             lang, labels, evidence, reason, reason_en, crisis_line, report_to_police, config_version, text)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)",
        )?;
        for inc in batch {
            let a = &inc.alert;
            let labels: Vec<Value> = a
                .labels
                .iter()
                .map(|(l, s)| json!({"label": l.name(), "score": s}))
                .collect();
            let evidence: Vec<Value> = a
                .evidence
                .iter()
                .map(|(e, snippet)| {
                    let mut v = json!({"label": e.label.name(), "start": e.start, "end": e.end, "source": e.source.name()});
                    if inc.text.is_some() {
                        v["snippet"] = json!(snippet);
                    }
                    v
                })
                .collect();
            stmt.execute(params![
                a.created_unix_ms,
                &*a.tenant,
                &*a.team,
                &*a.agent_id.0,
                &*a.call_id.0,
                &*a.utterance_id,
                a.seq as i64,
                a.kind.name(),
                a.lang.code(),
                Value::Array(labels).to_string(),
                Value::Array(evidence).to_string(),
                a.reason,
                a.reason_en,
                a.crisis_line,
                a.report_to_police,
                inc.config_version as i64,
                inc.text.as_deref(),
            ])?;
        }
    }
    tx.commit()
}

fn recover(conn: &Connection, replay: usize) -> Result<Recovered, StoreError> {
    let mut out = Recovered::default();
    let mut stmt = conn.prepare("SELECT agent_id, MAX(seq) FROM incidents GROUP BY agent_id")?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
    for row in rows {
        let (agent, seq) = row?;
        out.last_seq.push((AgentId(agent.into()), seq as u64));
    }
    let mut stmt = conn.prepare(
        "SELECT * FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY agent_id ORDER BY seq DESC) AS rn FROM incidents)
         WHERE rn <= ?1 ORDER BY agent_id, seq",
    )?;
    let rows = stmt.query_map(params![replay as i64], row_alert)?;
    for row in rows {
        out.recent.push(row?);
    }
    Ok(out)
}

/// An alert from a row (`SELECT *` order). Evidence snippets are empty unless text was kept.
fn row_alert(r: &rusqlite::Row<'_>) -> rusqlite::Result<Alert> {
    let labels: Value = serde_json::from_str(&r.get::<_, String>("labels")?).unwrap_or(Value::Null);
    let evidence: Value =
        serde_json::from_str(&r.get::<_, String>("evidence")?).unwrap_or(Value::Null);
    let kind: String = r.get("kind")?;
    let lang: String = r.get("lang")?;
    Ok(Alert {
        seq: r.get::<_, i64>("seq")? as u64,
        agent_id: AgentId(r.get::<_, String>("agent_id")?.into()),
        call_id: CallId(r.get::<_, String>("call_id")?.into()),
        tenant: r.get::<_, String>("tenant")?.into(),
        team: r.get::<_, String>("team")?.into(),
        utterance_id: r.get::<_, String>("utterance_id")?.into(),
        kind: AlertKind::parse(&kind).unwrap_or(AlertKind::Escalate),
        labels: labels
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| {
                        Some((
                            Label::parse(v["label"].as_str()?)?,
                            v["score"].as_f64()? as f32,
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default(),
        reason: r.get("reason")?,
        reason_en: r.get("reason_en")?,
        lang: Lang::parse(&lang).unwrap_or(Lang::Sv),
        crisis_line: r.get("crisis_line")?,
        report_to_police: r.get("report_to_police")?,
        created_unix_ms: r.get("created_ms")?,
        evidence: evidence
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| {
                        let e = Evidence {
                            label: Label::parse(v["label"].as_str()?)?,
                            start: v["start"].as_u64()? as usize,
                            end: v["end"].as_u64()? as usize,
                            source: if v["source"] == "lexicon" {
                                EvidenceSource::Lexicon
                            } else {
                                EvidenceSource::Model
                            },
                        };
                        Some((e, v["snippet"].as_str().unwrap_or_default().to_string()))
                    })
                    .collect()
            })
            .unwrap_or_default(),
    })
}

/// Everything the store holds for one call, as JSON rows (for `incidents export`).
pub fn export_call(path: &Path, call_id: &str) -> Result<Vec<Value>, StoreError> {
    let conn = connect(path)?;
    let mut stmt =
        conn.prepare("SELECT * FROM incidents WHERE call_id = ?1 ORDER BY created_ms, seq")?;
    let names: Vec<String> = stmt.column_names().iter().map(|s| s.to_string()).collect();
    let rows = stmt.query_map(params![call_id], |r| {
        let mut obj = serde_json::Map::new();
        for (i, name) in names.iter().enumerate() {
            let v: rusqlite::types::Value = r.get(i)?;
            let v = match v {
                rusqlite::types::Value::Null => Value::Null,
                rusqlite::types::Value::Integer(n) => json!(n),
                rusqlite::types::Value::Real(f) => json!(f),
                rusqlite::types::Value::Text(t) => {
                    if name == "labels" || name == "evidence" {
                        serde_json::from_str(&t).unwrap_or(Value::String(t))
                    } else {
                        Value::String(t)
                    }
                }
                rusqlite::types::Value::Blob(_) => Value::Null,
            };
            obj.insert(name.clone(), v);
        }
        Ok(Value::Object(obj))
    })?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

/// Alert counts per team and kind since `since_ms` (for `incidents stats`).
pub fn team_stats(
    path: &Path,
    since_ms: i64,
) -> Result<Vec<(String, String, i64, i64)>, StoreError> {
    let conn = connect(path)?;
    let mut stmt = conn.prepare(
        "SELECT team, kind, COUNT(*), COUNT(DISTINCT call_id) FROM incidents WHERE created_ms >= ?1
         GROUP BY team, kind ORDER BY team, kind",
    )?;
    let rows = stmt.query_map(params![since_ms], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
    })?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

/// A readable rendering of an exported call, as plain text or HTML.
pub fn render_export(call_id: &str, rows: &[Value], html: bool) -> String {
    let mut lines = Vec::new();
    for r in rows {
        let when = r["created_ms"].as_i64().unwrap_or(0);
        let labels: Vec<String> = r["labels"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|l| {
                        format!(
                            "{} {:.2}",
                            l["label"].as_str().unwrap_or("?"),
                            l["score"].as_f64().unwrap_or(0.0)
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let mut line = format!(
            "{} UTC  seq {}  {}  agent {}  team {}  utterance {}  [{}]  {}",
            format_utc(when),
            r["seq"],
            r["kind"].as_str().unwrap_or("?"),
            r["agent_id"].as_str().unwrap_or("?"),
            r["team"].as_str().unwrap_or(""),
            r["utterance_id"].as_str().unwrap_or(""),
            labels.join(", "),
            r["reason_en"].as_str().unwrap_or(""),
        );
        if let Some(text) = r["text"].as_str() {
            line.push_str(&format!("\n    said: {text}"));
        }
        lines.push(line);
    }
    if !html {
        return format!(
            "Callguard incident report, call {call_id}\n{} alerts\n\n{}\n",
            rows.len(),
            lines.join("\n")
        );
    }
    let esc = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
    };
    let items: String = lines
        .iter()
        .map(|l| format!("<li><pre>{}</pre></li>\n", esc(l)))
        .collect();
    format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>Callguard call {id}</title></head>\n<body><h1>Callguard incident report</h1>\n<p>Call {id}: {n} alerts</p>\n<ol>\n{items}</ol></body></html>\n",
        id = esc(call_id),
        n = rows.len()
    )
}

/// `YYYY-MM-DD HH:MM:SS` for Unix milliseconds (UTC, proleptic Gregorian).
pub fn format_utc(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // civil-from-days (Howard Hinnant's algorithm)
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(agent: &str, seq: u64, call: &str) -> Alert {
        Alert {
            seq,
            agent_id: AgentId(agent.into()),
            call_id: CallId(call.into()),
            tenant: "t".into(),
            team: "team-a".into(),
            utterance_id: "u1".into(),
            kind: AlertKind::Escalate,
            labels: vec![(Label::Threat, 0.97)],
            reason: "Hot".into(),
            reason_en: "Threat".into(),
            lang: Lang::Sv,
            crisis_line: None,
            report_to_police: true,
            created_unix_ms: now_ms(),
            evidence: vec![(
                Evidence {
                    label: Label::Threat,
                    start: 4,
                    end: 9,
                    source: EvidenceSource::Model,
                },
                "kniv".into(),
            )],
        }
    }

    #[tokio::test]
    async fn records_survive_reopening_and_recover_sequences() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("i.sqlite");
        {
            let (store, recovered, writer) = IncidentStore::open(&path, 30, 8).unwrap();
            assert!(recovered.last_seq.is_empty());
            let batch = (1..=3)
                .map(|s| Incident {
                    alert: Arc::new(alert("a", s, "c1")),
                    config_version: 2,
                    text: None,
                })
                .collect();
            store.record(batch).await.unwrap();
            store
                .record(vec![Incident {
                    alert: Arc::new(alert("b", 1, "c2")),
                    config_version: 2,
                    text: Some("jag har en kniv".into()),
                }])
                .await
                .unwrap();
            drop(store);
            writer.join().unwrap();
        }
        let (_store, recovered, _w) = IncidentStore::open(&path, 30, 2).unwrap();
        let mut seqs = recovered.last_seq.clone();
        seqs.sort_by(|x, y| x.0.cmp(&y.0));
        assert_eq!(
            seqs,
            vec![(AgentId("a".into()), 3), (AgentId("b".into()), 1)]
        );
        let recent: Vec<(String, u64)> = recovered
            .recent
            .iter()
            .map(|a| (a.agent_id.to_string(), a.seq))
            .collect();
        assert_eq!(
            recent,
            vec![("a".into(), 2), ("a".into(), 3), ("b".into(), 1)]
        );
        let rows = export_call(&path, "c1").unwrap();
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0]["labels"][0]["label"], "threat");
        assert!(rows[0]["text"].is_null(), "no text unless configured");
        assert!(rows[0]["evidence"][0].get("snippet").is_none());
        let with_text = export_call(&path, "c2").unwrap();
        assert_eq!(with_text[0]["text"], "jag har en kniv");
        let stats = team_stats(&path, 0).unwrap();
        assert_eq!(stats, vec![("team-a".into(), "escalate".into(), 4, 2)]);
        assert!(render_export("c1", &rows, true).contains("<ol>"));
    }

    #[test]
    fn utc_formatting() {
        assert_eq!(format_utc(0), "1970-01-01 00:00:00");
        assert_eq!(format_utc(1_764_158_400_000), "2025-11-26 12:00:00");
    }
}
