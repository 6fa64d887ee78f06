//! End-to-end behaviour over real gRPC on loopback, with the real model.

mod common;

use std::time::Duration;

use callguard::proto as pb;
use common::*;
use pb::Speaker::{Agent, Customer};
use tonic::Code;

fn kinds(scored: &pb::UtteranceScored) -> Vec<&str> {
    scored.alert_kinds.iter().map(String::as_str).collect()
}

#[tokio::test]
async fn a_threat_reaches_the_agent_as_escalate_and_ends_in_debrief() {
    let server = Server::shared();
    let ch = server.channel().await;
    let agent = unique("agent");
    let mut feed = Feed::subscribe(&ch, &agent, 0).await;
    let mut call = Call::start(&ch, &unique("call"), &agent, "nb").await;
    call.say(
        "u1",
        Agent,
        "hei, du snakker med kundeservice, hva kan jeg hjelpe med",
    )
    .await;
    let scored = call.say("u2", Customer, THREAT_NB).await;
    assert!(scored.labels.contains(&"threat".to_string()), "{scored:?}");
    assert_eq!(kinds(&scored), vec!["escalate"]);

    let alert = feed.next_alert().await;
    assert_eq!(alert.kind(), pb::AlertKind::Escalate);
    assert_eq!(alert.kind_name, "escalate");
    assert_eq!(alert.utterance_id, "u2");
    assert_eq!(alert.agent_id, agent);
    assert!(alert.report_to_police);
    assert_eq!(alert.seq, 1);
    assert!(
        alert
            .labels
            .iter()
            .any(|l| l.label == "threat" && l.score > 0.5)
    );
    assert!(
        !alert.reason.is_empty() && !alert.reason_en.is_empty() && alert.reason != alert.reason_en
    );
    assert!(
        alert
            .evidence
            .iter()
            .any(|e| e.label == "threat" && !e.snippet.is_empty())
    );

    let closed = call.end().await;
    assert_eq!(closed.alert_kinds, vec!["debrief"]);
    let debrief = feed.next_alert().await;
    assert_eq!(debrief.kind(), pb::AlertKind::Debrief);
    assert_eq!(debrief.seq, 2);
    assert_eq!(debrief.utterance_id, "u2");
}

#[tokio::test]
async fn harassment_suggests_a_warning_and_after_a_warning_allows_hang_up() {
    let server = Server::shared();
    let ch = server.channel().await;
    let agent = unique("agent");
    let mut feed = Feed::subscribe(&ch, &agent, 0).await;
    let mut call = Call::start(&ch, &unique("call"), &agent, "sv").await;

    let first = call.say("u1", Customer, ABUSE_SV).await;
    assert_eq!(kinds(&first), vec!["suggest_warning"]);
    assert_eq!(
        feed.next_alert().await.kind(),
        pb::AlertKind::SuggestWarning
    );

    let warned = call.say("u2", Agent, WARNING_SV).await;
    assert_eq!(warned.labels, vec!["warning"]);
    assert!(warned.alert_kinds.is_empty());

    let again = call
        .say(
            "u3",
            Customer,
            ABUSE_SV.replace("skämmas", "sluta").as_str(),
        )
        .await;
    assert_eq!(kinds(&again), vec!["hang_up_allowed"]);
    let alert = feed.next_alert().await;
    assert_eq!(alert.kind(), pb::AlertKind::HangUpAllowed);
    assert_eq!(alert.utterance_id, "u3");

    // once per call
    let more = call.say("u4", Customer, ABUSE_SV).await;
    assert!(more.alert_kinds.is_empty(), "{more:?}");
    assert!(call.end().await.alert_kinds.is_empty());
    feed.assert_quiet(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn self_harm_gets_the_acute_procedure_and_never_hang_up() {
    let server = Server::shared();
    let ch = server.channel().await;
    let agent = unique("agent");
    let mut feed = Feed::subscribe(&ch, &agent, 0).await;
    let mut call = Call::start(&ch, &unique("call"), &agent, "sv").await;

    let s = call.say("u1", Customer, SELF_HARM_SV).await;
    assert_eq!(kinds(&s), vec!["acute_procedure"]);
    let alert = feed.next_alert().await;
    assert_eq!(alert.kind(), pb::AlertKind::AcuteProcedure);
    assert!(alert.crisis_line.contains("90101"), "{}", alert.crisis_line);
    assert!(alert.reason.contains("90101"));

    call.say("u2", Agent, WARNING_SV).await;
    let abuse = call.say("u3", Customer, ABUSE_SV).await;
    assert!(!kinds(&abuse).contains(&"hang_up_allowed"), "{abuse:?}");
    let closed = call.end().await;
    assert_eq!(closed.alert_kinds, vec!["debrief"]);
    // suggest_warning may come first; hang_up_allowed never
    loop {
        let a = feed.next_alert().await;
        assert_ne!(a.kind(), pb::AlertKind::HangUpAllowed);
        if a.kind() == pb::AlertKind::Debrief {
            break;
        }
    }
}

#[tokio::test]
async fn angry_legitimate_complaints_raise_no_alert() {
    let server = Server::shared();
    let ch = server.channel().await;
    for (lang, text) in COMPLAINTS {
        let agent = unique("agent");
        let mut feed = Feed::subscribe(&ch, &agent, 0).await;
        let mut call = Call::start(&ch, &unique("call"), &agent, lang).await;
        let scored = call.say("u1", Customer, text).await;
        assert!(scored.alert_kinds.is_empty(), "{lang}: {scored:?}");
        for label in ["threat", "harassment", "self_harm"] {
            assert!(
                !scored.labels.contains(&label.to_string()),
                "{lang}: {scored:?}"
            );
        }
        assert!(call.end().await.alert_kinds.is_empty());
        feed.assert_quiet(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn partials_are_counted_and_duplicates_are_idempotent() {
    let server = Server::shared();
    let ch = server.channel().await;
    let mut call = Call::start(&ch, &unique("call"), &unique("agent"), "da").await;
    for n in 1..=3 {
        call.send(utterance("u1", Customer, "du er simpelthen", false))
            .await;
        match call.next().await {
            Ok(Some(pb::call_ack::Ack::Partial(p))) => assert_eq!(p.partials_seen, n),
            other => panic!("{other:?}"),
        }
    }
    let first = call.say("u1", Customer, ABUSE_DA).await;
    assert!(!first.duplicate);
    assert_eq!(kinds(&first), vec!["suggest_warning"]);
    let again = call.say("u1", Customer, ABUSE_DA).await;
    assert!(again.duplicate);
    assert_eq!(again.labels, first.labels);
    let warned = call.say("u2", Agent, WARNING_DA).await;
    assert_eq!(warned.labels, vec!["warning"]);
}

#[tokio::test]
async fn bad_input_gets_its_status_while_another_call_still_gets_its_alert() {
    let server = Server::shared();
    let ch = server.channel().await;
    let agent = unique("agent");
    let mut feed = Feed::subscribe(&ch, &agent, 0).await;
    let call_id = unique("call");
    let mut good = Call::start(&ch, &call_id, &agent, "sv").await;

    // utterance before start
    let mut bad = Call::open(&ch, utterance("u1", Customer, "hej", true))
        .await
        .expect("open");
    assert_eq!(
        bad.next().await.expect_err("status").code(),
        Code::FailedPrecondition
    );
    // invalid language
    let mut bad = Call::open(&ch, start_event(&unique("call"), "a", "klingon"))
        .await
        .expect("open");
    assert_eq!(
        bad.next().await.expect_err("status").code(),
        Code::InvalidArgument
    );
    // empty call id
    let mut bad = Call::open(&ch, start_event("", "a", "sv"))
        .await
        .expect("open");
    assert_eq!(
        bad.next().await.expect_err("status").code(),
        Code::InvalidArgument
    );
    // a second stream for a live call
    let mut bad = Call::open(&ch, start_event(&call_id, &agent, "sv"))
        .await
        .expect("open");
    assert_eq!(
        bad.next().await.expect_err("status").code(),
        Code::AlreadyExists
    );
    // resuming an unknown call
    let mut resume = start_event(&unique("call"), "a", "sv");
    if let Some(pb::call_event::Event::Start(s)) = resume.event.as_mut() {
        s.resume = true;
    }
    let mut bad = Call::open(&ch, resume).await.expect("open");
    assert_eq!(bad.next().await.expect_err("status").code(), Code::NotFound);
    // a second start on the same stream
    let mut twice = Call::start(&ch, &unique("call"), "a", "sv").await;
    twice.send(start_event("again", "a", "sv")).await;
    assert_eq!(
        twice.next().await.expect_err("status").code(),
        Code::FailedPrecondition
    );

    // per-event rejections keep the call going
    good.send(utterance("e1", Customer, "   ", true)).await;
    match good.next().await {
        Ok(Some(pb::call_ack::Ack::Rejected(r))) => {
            assert_eq!(r.code, Code::InvalidArgument as i32)
        }
        other => panic!("{other:?}"),
    }
    good.send(utterance("e2", Customer, &"a".repeat(5000), true))
        .await;
    match good.next().await {
        Ok(Some(pb::call_ack::Ack::Rejected(r))) => {
            assert_eq!(r.code, Code::InvalidArgument as i32);
            assert!(r.message.contains("max_text_bytes"), "{}", r.message);
        }
        other => panic!("{other:?}"),
    }
    good.send(utterance("e3", pb::Speaker::Unspecified, "hej", true))
        .await;
    assert!(matches!(
        good.next().await,
        Ok(Some(pb::call_ack::Ack::Rejected(_)))
    ));

    let scored = good.say("u1", Customer, THREAT_SV).await;
    assert_eq!(kinds(&scored), vec!["escalate"]);
    assert_eq!(feed.next_alert().await.kind(), pb::AlertKind::Escalate);

    // the unary API validates too
    let mut scoring = pb::scoring_client::ScoringClient::new(ch.clone());
    let err = scoring
        .score(pb::ScoreRequest {
            text: String::new(),
            language: "sv".into(),
            speaker: 0,
        })
        .await
        .expect_err("empty text");
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = scoring
        .score(pb::ScoreRequest {
            text: "hej".into(),
            language: "xx".into(),
            speaker: 0,
        })
        .await
        .expect_err("bad language");
    assert_eq!(err.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn a_resumed_subscription_receives_the_alerts_it_missed() {
    let server = Server::shared();
    let ch = server.channel().await;
    let agent = unique("agent");
    let mut feed = Feed::subscribe(&ch, &agent, 0).await;
    let mut call = Call::start(&ch, &unique("call"), &agent, "sv").await;
    call.say("u1", Customer, THREAT_SV).await;
    let first = feed.next_alert().await;
    assert_eq!(first.seq, 1);
    drop(feed); // the softphone goes offline

    call.say("u2", Customer, SELF_HARM_SV).await;
    call.say("u3", Customer, THREAT_SV).await;
    call.end().await;

    let mut back = Feed::subscribe(&ch, &agent, first.seq).await;
    let missed: Vec<(u64, String)> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            let a = back.next_alert().await;
            v.push((a.seq, a.kind_name));
        }
        v
    };
    assert_eq!(
        missed,
        vec![
            (2, "acute_procedure".into()),
            (3, "escalate".into()),
            (4, "debrief".into())
        ]
    );
    back.assert_quiet(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn a_broken_call_stream_can_resume_with_its_state() {
    let server = Server::shared();
    let ch = server.channel().await;
    let agent = unique("agent");
    let call_id = unique("call");
    let mut call = Call::start(&ch, &call_id, &agent, "sv").await;
    call.say("u1", Agent, WARNING_SV).await;
    drop(call); // the platform's stream breaks

    let mut resume = start_event(&call_id, &agent, "sv");
    if let Some(pb::call_event::Event::Start(s)) = resume.event.as_mut() {
        s.resume = true;
    }
    // the server may not have seen the old stream close yet
    let mut call = loop {
        let mut call = Call::open(&ch, resume.clone()).await.expect("open");
        match call.next().await {
            Ok(Some(pb::call_ack::Ack::Accepted(a))) => {
                assert!(a.resumed);
                break call;
            }
            Err(s) if s.code() == Code::AlreadyExists => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            other => panic!("{other:?}"),
        }
    };
    // the earlier warning still counts
    let scored = call.say("u2", Customer, ABUSE_SV).await;
    assert_eq!(kinds(&scored), vec!["hang_up_allowed"]);
    call.send(end_event()).await;
}

#[tokio::test]
async fn a_config_edit_changes_a_threshold_on_the_running_server() {
    let server = Server::start("[server]\nshutdown_grace_s = 1\n[thresholds.sv]\nthreat = 0.5\n");
    let ch = server.channel().await;
    let mut scoring = pb::scoring_client::ScoringClient::new(ch.clone());
    let ask = || pb::ScoreRequest {
        text: THREAT_SV.into(),
        language: "sv".into(),
        speaker: Customer as i32,
    };
    let before = scoring.score(ask()).await.expect("score").into_inner();
    assert!(before.labels.contains(&"threat".to_string()), "{before:?}");

    // an invalid file is rejected and the old config stays
    std::fs::write(
        &server.config_path,
        "[server]\nshutdown_grace_s = 1\n[thresholds.sv]\nthreat = 7\n",
    )
    .expect("write");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let still = scoring.score(ask()).await.expect("score").into_inner();
    assert!(still.labels.contains(&"threat".to_string()));

    std::fs::write(
        &server.config_path,
        "[server]\nshutdown_grace_s = 1\n[thresholds.sv]\nthreat = 1.0\n",
    )
    .expect("write");
    let deadline = tokio::time::Instant::now() + common::WAIT;
    loop {
        let after = scoring.score(ask()).await.expect("score").into_inner();
        if !after.labels.contains(&"threat".to_string()) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "threshold change not applied"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // a live call follows the new threshold: no escalate
    let agent = unique("agent");
    let mut call = Call::start(&ch, &unique("call"), &agent, "sv").await;
    let scored = call.say("u1", Customer, THREAT_SV).await;
    assert!(scored.alert_kinds.is_empty(), "{scored:?}");
    drop((call, scoring, ch));
    server.stop().await;
}

#[tokio::test]
async fn health_and_reflection_are_served() {
    let server = Server::shared();
    let ch = server.channel().await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(ch.clone());
    for service in callguard::SERVICES {
        let status = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .expect("health")
            .into_inner()
            .status;
        assert_eq!(
            status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
            "{service}"
        );
    }
}

#[tokio::test]
async fn replay_reports_each_calls_alerts_by_turn() {
    let server = Server::shared();
    server.channel().await;
    let input = std::fs::read_to_string("examples/calls.jsonl").expect("examples/calls.jsonl");
    let mut out = Vec::new();
    let bad = callguard::replay::replay_jsonl(
        &format!("http://{}", server.addr),
        input.as_bytes(),
        &mut out,
    )
    .await
    .expect("replay");
    assert_eq!(bad, 0);
    let lines: Vec<serde_json::Value> = String::from_utf8(out)
        .expect("utf-8")
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    assert_eq!(lines.len(), input.lines().count());
    let alerts = |id: &str| -> Vec<(String, u64)> {
        let line = lines.iter().find(|l| l["call_id"] == id).expect(id);
        line["alerts"]
            .as_array()
            .expect("alerts")
            .iter()
            .map(|a| {
                (
                    a["kind"].as_str().expect("kind").to_string(),
                    a["at_turn"].as_u64().expect("turn"),
                )
            })
            .collect()
    };
    assert_eq!(
        alerts("sv-threat"),
        vec![("escalate".into(), 3), ("debrief".into(), 4)]
    );
    assert_eq!(
        alerts("sv-abuse-warned"),
        vec![("suggest_warning".into(), 2), ("hang_up_allowed".into(), 4)]
    );
    assert_eq!(
        alerts("nb-selfharm"),
        vec![("acute_procedure".into(), 2), ("debrief".into(), 4)]
    );
    for legit in ["sv-legit", "nb-legit", "da-legit"] {
        assert!(alerts(legit).is_empty(), "{legit}: {:?}", alerts(legit));
    }
}
