//! Alert fan-out: per-agent sequence numbers, a bounded replay buffer, and subscribers.
//!
//! Each agent has one feed behind a short `std::sync::Mutex` (never held across an await).
//! Publishing assigns the next sequence number, keeps the alert in the replay buffer and
//! `try_send`s it to every subscriber of that agent: a softphone whose queue is full is dropped
//! (it reconnects with `resume_after` and loses nothing that is still buffered), so a slow
//! softphone never slows a call. Subscribing replays what the client missed and registers it
//! under the same lock, so no alert is lost or repeated between replay and live delivery.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use dashmap::DashMap;
use tokio::sync::mpsc;

use crate::domain::{AgentId, AlertKind, CallId, Evidence, Label, Lang};

/// An alert as delivered to the softphone and recorded.
#[derive(Clone, Debug, PartialEq)]
pub struct Alert {
    pub seq: u64,
    pub agent_id: AgentId,
    pub call_id: CallId,
    pub tenant: Arc<str>,
    pub team: Arc<str>,
    pub utterance_id: Arc<str>,
    pub kind: AlertKind,
    pub labels: Vec<(Label, f32)>,
    pub reason: String,
    pub reason_en: String,
    pub lang: Lang,
    pub crisis_line: Option<String>,
    pub report_to_police: bool,
    pub created_unix_ms: i64,
    /// Evidence spans with their snippet of the utterance (shown to the agent, never logged).
    pub evidence: Vec<(Evidence, String)>,
}

/// What a subscriber receives.
#[derive(Clone, Debug)]
pub enum FeedItem {
    Alert(Arc<Alert>),
    /// Alerts `from..=to` are no longer in the replay buffer.
    Gap {
        from: u64,
        to: u64,
    },
}

struct Feed {
    /// The sequence number the next alert gets (first is 1).
    next_seq: u64,
    /// The last `replay_capacity` alerts, oldest first.
    buffer: VecDeque<Arc<Alert>>,
    /// Live subscribers; the receiving end is the softphone's stream task. Full or closed: dropped.
    subscribers: Vec<mpsc::Sender<FeedItem>>,
    /// The agent's team, from their latest call (supervisor scope).
    team: Option<Arc<str>>,
}

impl Feed {
    /// Keep `alert` in the replay buffer, dropping the oldest beyond `capacity`.
    fn remember(&mut self, alert: Arc<Alert>, capacity: usize) {
        self.buffer.push_back(alert);
        while self.buffer.len() > capacity.max(1) {
            self.buffer.pop_front();
        }
    }
}

/// The registry of every agent's feed.
#[derive(Default)]
pub struct AlertHub {
    feeds: DashMap<AgentId, Arc<Mutex<Feed>>>,
}

impl AlertHub {
    pub fn new() -> AlertHub {
        AlertHub::default()
    }

    fn feed(&self, agent: &AgentId) -> Arc<Mutex<Feed>> {
        // clone the Arc out so the DashMap shard lock is released at once
        self.feeds
            .entry(agent.clone())
            .or_insert_with(|| {
                Arc::new(Mutex::new(Feed {
                    next_seq: 1,
                    buffer: VecDeque::new(),
                    subscribers: Vec::new(),
                    team: None,
                }))
            })
            .clone()
    }

    /// Assign the agent's next sequence number to `alert`, buffer it and deliver it.
    /// Returns the alert as sent (with its `seq`).
    pub fn publish(&self, mut alert: Alert, replay_capacity: usize) -> Arc<Alert> {
        let feed = self.feed(&alert.agent_id);
        let mut feed = feed.lock().unwrap_or_else(|p| p.into_inner());
        alert.seq = feed.next_seq;
        feed.next_seq += 1;
        let alert = Arc::new(alert);
        feed.remember(alert.clone(), replay_capacity);
        feed.subscribers.retain(|tx| match tx.try_send(FeedItem::Alert(alert.clone())) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!(agent_id = %alert.agent_id, "alert subscriber too slow: dropped; it can resume");
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        });
        alert
    }

    /// Subscribe to an agent's alerts. With `resume_after`, alerts with a higher `seq` still
    /// buffered are queued first (`Some(0)`: all of them); if some of them are gone, a `Gap`
    /// says which. `resume_after` beyond the last sequence number (a client from before a
    /// restart that lost the store) replays the whole buffer. Without it: new alerts only.
    pub fn subscribe(
        &self,
        agent: &AgentId,
        resume_after: Option<u64>,
        queue: usize,
    ) -> mpsc::Receiver<FeedItem> {
        let feed = self.feed(agent);
        let mut feed = feed.lock().unwrap_or_else(|p| p.into_inner());
        let last = feed.next_seq - 1;
        let Some(after) = resume_after else {
            let (tx, rx) = mpsc::channel(queue.max(1));
            feed.subscribers.push(tx);
            return rx;
        };
        let from = if after > last { 0 } else { after };
        let replay: Vec<Arc<Alert>> = feed
            .buffer
            .iter()
            .filter(|a| a.seq > from)
            .cloned()
            .collect();
        let (tx, rx) = mpsc::channel(replay.len() + 1 + queue.max(1));
        let oldest = feed.buffer.front().map_or(feed.next_seq, |a| a.seq);
        if oldest > from + 1 {
            let _ = tx.try_send(FeedItem::Gap {
                from: from + 1,
                to: oldest - 1,
            });
        }
        for alert in replay {
            let _ = tx.try_send(FeedItem::Alert(alert));
        }
        feed.subscribers.push(tx);
        rx
    }

    /// Continue after a restart: each agent's sequence resumes after its last recorded alert,
    /// and recent alerts (in sequence order per agent) refill the replay buffers.
    pub fn restore(&self, last_seq: &[(AgentId, u64)], recent: Vec<Alert>, replay_capacity: usize) {
        for (agent, seq) in last_seq {
            let feed = self.feed(agent);
            let mut feed = feed.lock().unwrap_or_else(|p| p.into_inner());
            feed.next_seq = feed.next_seq.max(seq + 1);
        }
        for alert in recent {
            let feed = self.feed(&alert.agent_id);
            let mut feed = feed.lock().unwrap_or_else(|p| p.into_inner());
            feed.remember(Arc::new(alert), replay_capacity);
        }
    }

    /// Record the team of an agent's call (supervisor scope checks).
    pub fn set_team(&self, agent: &AgentId, team: &Arc<str>) {
        let feed = self.feed(agent);
        feed.lock().unwrap_or_else(|p| p.into_inner()).team = Some(team.clone());
    }

    /// The agent's team: from their latest call, else from their latest recorded alert.
    pub fn team_of(&self, agent: &AgentId) -> Option<Arc<str>> {
        let feed = self.feeds.get(agent)?.value().clone();
        let feed = feed.lock().unwrap_or_else(|p| p.into_inner());
        feed.team
            .clone()
            .or_else(|| feed.buffer.back().map(|a| a.team.clone()))
            .filter(|t| !t.is_empty())
    }

    /// The last sequence number given to an agent's alerts (0 if none).
    pub fn last_seq(&self, agent: &AgentId) -> u64 {
        self.feeds
            .get(agent)
            .map(|f| f.value().clone())
            .map_or(0, |f| {
                f.lock().unwrap_or_else(|p| p.into_inner()).next_seq - 1
            })
    }

    /// Drop every subscriber (shutdown): their streams end after draining what is queued.
    pub fn close_all(&self) {
        for feed in self.feeds.iter() {
            feed.value()
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .subscribers
                .clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(agent: &str, n: usize) -> Alert {
        Alert {
            seq: 0,
            agent_id: AgentId(agent.into()),
            call_id: CallId("c".into()),
            tenant: "t".into(),
            team: "team".into(),
            utterance_id: n.to_string().into(),
            kind: AlertKind::Escalate,
            labels: vec![(Label::Threat, 0.9)],
            reason: String::new(),
            reason_en: String::new(),
            lang: Lang::Sv,
            crisis_line: None,
            report_to_police: true,
            created_unix_ms: 0,
            evidence: Vec::new(),
        }
    }

    fn drain(rx: &mut mpsc::Receiver<FeedItem>) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(item) = rx.try_recv() {
            out.push(match item {
                FeedItem::Alert(a) => format!("{}", a.seq),
                FeedItem::Gap { from, to } => format!("gap {from}-{to}"),
            });
        }
        out
    }

    #[test]
    fn sequence_numbers_are_per_agent() {
        let hub = AlertHub::new();
        assert_eq!(hub.publish(alert("a", 0), 8).seq, 1);
        assert_eq!(hub.publish(alert("a", 1), 8).seq, 2);
        assert_eq!(hub.publish(alert("b", 0), 8).seq, 1);
        assert_eq!(hub.last_seq(&AgentId("a".into())), 2);
    }

    #[test]
    fn a_new_subscriber_gets_only_new_alerts() {
        let hub = AlertHub::new();
        hub.publish(alert("a", 0), 8);
        let mut rx = hub.subscribe(&AgentId("a".into()), None, 4);
        hub.publish(alert("a", 1), 8);
        assert_eq!(drain(&mut rx), vec!["2"]);
    }

    #[test]
    fn resume_replays_what_was_missed_once_in_order() {
        let hub = AlertHub::new();
        for n in 0..5 {
            hub.publish(alert("a", n), 8);
        }
        let mut rx = hub.subscribe(&AgentId("a".into()), Some(2), 4);
        hub.publish(alert("a", 5), 8);
        assert_eq!(drain(&mut rx), vec!["3", "4", "5", "6"]);
    }

    #[test]
    fn resume_past_the_buffer_reports_a_gap() {
        let hub = AlertHub::new();
        for n in 0..10 {
            hub.publish(alert("a", n), 3);
        }
        let mut rx = hub.subscribe(&AgentId("a".into()), Some(2), 4);
        assert_eq!(drain(&mut rx), vec!["gap 3-7", "8", "9", "10"]);
    }

    #[test]
    fn a_slow_subscriber_is_dropped_without_blocking() {
        let hub = AlertHub::new();
        let mut slow = hub.subscribe(&AgentId("a".into()), None, 1);
        for n in 0..5 {
            hub.publish(alert("a", n), 8);
        }
        // it got what fit, then was dropped: its stream ends and it can resume
        assert_eq!(drain(&mut slow), vec!["1"]);
        assert!(slow.try_recv().is_err());
        let mut again = hub.subscribe(&AgentId("a".into()), Some(1), 8);
        assert_eq!(drain(&mut again), vec!["2", "3", "4", "5"]);
    }

    #[test]
    fn resuming_after_zero_replays_the_whole_buffer_and_absent_replays_nothing() {
        let hub = AlertHub::new();
        for n in 0..3 {
            hub.publish(alert("a", n), 8);
        }
        let mut all = hub.subscribe(&AgentId("a".into()), Some(0), 8);
        assert_eq!(drain(&mut all), vec!["1", "2", "3"]);
        let mut live = hub.subscribe(&AgentId("a".into()), None, 8);
        assert!(drain(&mut live).is_empty());
        // a buffer that no longer reaches back to seq 1 says so
        for n in 3..12 {
            hub.publish(alert("a", n), 8);
        }
        let mut late = hub.subscribe(&AgentId("a".into()), Some(0), 8);
        assert_eq!(drain(&mut late)[0], "gap 1-4");
    }
}
