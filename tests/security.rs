//! Authorisation, TLS and limits over real gRPC: each case gets its own status and metric,
//! and other calls keep flowing.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use callguard::auth::hash_token;
use callguard::proto as pb;
use common::*;
use pb::Speaker::Customer;
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

const INGEST: &str = "ingest-token-0123456789";
const AGENT_1: &str = "agent-1-token-0123456789";
const SUPERVISOR_A: &str = "supervisor-a-token-0123456789";
const SUPERVISOR_B: &str = "supervisor-b-token-0123456789";
const OPS: &str = "ops-token-0123456789";

fn auth_config() -> String {
    format!(
        "[auth]\nloopback_without_token = false\ntokens = [\n\
         {{ sha256 = \"{}\", role = \"ingest\" }},\n\
         {{ sha256 = \"{}\", role = \"agent\", agent_id = \"agent-1\" }},\n\
         {{ sha256 = \"{}\", role = \"supervisor\", team = \"team-a\" }},\n\
         {{ sha256 = \"{}\", role = \"supervisor\", team = \"team-b\" }},\n\
         {{ sha256 = \"{}\", role = \"ops\" }},\n]\n",
        hash_token(INGEST),
        hash_token(AGENT_1),
        hash_token(SUPERVISOR_A),
        hash_token(SUPERVISOR_B),
        hash_token(OPS),
    )
}

/// The Prometheus text of a server's metrics endpoint.
fn metrics(server: &Server) -> String {
    let mut conn =
        std::net::TcpStream::connect(("127.0.0.1", server.metrics_port)).expect("metrics port");
    conn.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .expect("request");
    let mut body = String::new();
    conn.read_to_string(&mut body).expect("response");
    body
}

fn reject_count(server: &Server, reason: &str) -> u64 {
    let key = format!("callguard_rejects_total{{reason=\"{reason}\"}} ");
    metrics(server)
        .lines()
        .find_map(|l| l.strip_prefix(&key))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

fn code<T>(r: Result<T, tonic::Status>) -> Code {
    match r {
        Ok(_) => panic!("expected a refusal"),
        Err(status) => status.code(),
    }
}

#[tokio::test]
async fn tokens_open_exactly_their_roles_scope() {
    let server = Server::start(&auth_config());
    let ch = server.channel().await; // health stays open without a token

    // no token, a wrong token: UNAUTHENTICATED, even on loopback once it is switched off
    let start = || start_event("call-auth", "agent-1", "sv");
    assert_eq!(code(Call::open(&ch, start()).await), Code::Unauthenticated);
    assert_eq!(
        code(Call::open_as(&ch, Some("not-a-known-token-000"), start()).await),
        Code::Unauthenticated
    );
    // a valid token with the wrong role: PERMISSION_DENIED
    assert_eq!(
        code(Call::open_as(&ch, Some(AGENT_1), start()).await),
        Code::PermissionDenied
    );
    assert_eq!(
        code(Feed::subscribe_as(&ch, Some(INGEST), "agent-1", 0).await),
        Code::PermissionDenied
    );
    // an agent reads only their own feed
    assert_eq!(
        code(Feed::subscribe_as(&ch, Some(AGENT_1), "agent-2", 0).await),
        Code::PermissionDenied
    );
    let mut own = Feed::subscribe_as(&ch, Some(AGENT_1), "agent-1", 0)
        .await
        .expect("own feed");

    // the telephony platform streams the call (agent-1 in team-a)
    let mut call = Call::open_as(&ch, Some(INGEST), start())
        .await
        .expect("open");
    assert!(matches!(
        call.next().await,
        Ok(Some(pb::call_ack::Ack::Accepted(_)))
    ));
    call.say("u1", Customer, THREAT_SV).await;
    assert_eq!(own.next_alert().await.kind_name, "escalate");

    // supervisors: their team's agents only
    assert_eq!(
        code(Feed::subscribe_as(&ch, Some(SUPERVISOR_B), "agent-1", 0).await),
        Code::PermissionDenied
    );
    let mut lead = Feed::subscribe_as(&ch, Some(SUPERVISOR_A), "agent-1", 1)
        .await
        .expect("team feed");
    call.say("u2", Customer, THREAT_SV).await;
    assert_eq!(lead.next_alert().await.seq, 2);
    assert_eq!(own.next_alert().await.seq, 2);

    // ops: status and incident export; nobody else
    let mut ops = pb::ops_client::OpsClient::with_interceptor(ch.clone(), Bearer::new(Some(OPS)));
    let status = ops
        .status(pb::StatusRequest {})
        .await
        .expect("status")
        .into_inner();
    assert_eq!(status.active_calls, 1);
    let export = ops
        .export_call(pb::ExportCallRequest {
            call_id: "call-auth".into(),
        })
        .await
        .expect("export")
        .into_inner();
    assert_eq!(export.incidents, 2);
    assert!(export.json.contains("\"escalate\""));
    let mut not_ops =
        pb::ops_client::OpsClient::with_interceptor(ch.clone(), Bearer::new(Some(INGEST)));
    assert_eq!(
        code(not_ops.status(pb::StatusRequest {}).await),
        Code::PermissionDenied
    );
    let mut anonymous = pb::ops_client::OpsClient::new(ch.clone());
    assert_eq!(
        code(anonymous.status(pb::StatusRequest {}).await),
        Code::Unauthenticated
    );

    assert!(reject_count(&server, "unauthenticated") >= 3);
    assert!(reject_count(&server, "permission_denied") >= 5);
    call.end().await;
    server.stop().await;
}

#[tokio::test]
async fn loopback_without_token_is_the_embedded_default() {
    let server = Server::shared();
    let ch = server.channel().await;
    let mut ops = pb::ops_client::OpsClient::new(ch);
    assert!(ops.status(pb::StatusRequest {}).await.is_ok());
}

struct Pki {
    ca: String,
    server_cert: String,
    server_key: String,
    client_cert: String,
    client_key: String,
}

/// A throwaway CA with a server certificate for localhost and one client certificate.
fn pki() -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().expect("key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).expect("ca");
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf = |names: Vec<String>| {
        let key = KeyPair::generate().expect("key");
        let cert = CertificateParams::new(names)
            .expect("params")
            .signed_by(&key, &issuer)
            .expect("sign");
        (cert.pem(), key.serialize_pem())
    };
    let (server_cert, server_key) = leaf(vec!["localhost".into()]);
    let (client_cert, client_key) = leaf(vec!["softphone-1".into()]);
    Pki {
        ca: ca_cert.pem(),
        server_cert,
        server_key,
        client_cert,
        client_key,
    }
}

async fn tls_health(
    addr: std::net::SocketAddr,
    tls: Option<ClientTlsConfig>,
) -> Result<(), String> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut endpoint = Channel::from_shared(format!("{scheme}://localhost:{}", addr.port()))
        .expect("uri")
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(5));
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls).map_err(|e| e.to_string())?;
    }
    let ch = endpoint.connect().await.map_err(|e| format!("{e:?}"))?;
    let mut scoring = pb::scoring_client::ScoringClient::new(ch);
    scoring
        .score(pb::ScoreRequest {
            text: "hej".into(),
            language: "sv".into(),
            speaker: 0,
        })
        .await
        .map(drop)
        .map_err(|s| format!("{s:?}"))
}

#[tokio::test]
async fn tls_with_client_certificates_admits_only_certified_clients() {
    let pki = pki();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = |name: &str, pem: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, pem).expect("write pem");
        p.display().to_string()
    };
    let config = format!(
        "[tls]\ncert = {:?}\nkey = {:?}\nclient_ca = {:?}\n",
        path("server.pem", &pki.server_cert),
        path("server.key", &pki.server_key),
        path("ca.pem", &pki.ca),
    );
    let server = Server::start(&config);
    let base = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&pki.ca))
        .domain_name("localhost");
    let certified = base
        .clone()
        .identity(Identity::from_pem(&pki.client_cert, &pki.client_key));
    // the model loads after bind: wait until the certified client gets through
    let deadline = tokio::time::Instant::now() + WAIT;
    while let Err(err) = tls_health(server.addr, Some(certified.clone())).await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "mTLS client refused: {err}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        tls_health(server.addr, Some(base)).await.is_err(),
        "no client certificate"
    );
    assert!(tls_health(server.addr, None).await.is_err(), "plaintext");
    server.stop().await;
}

#[tokio::test]
async fn each_limit_gets_its_own_status_and_metric_while_other_calls_flow() {
    let server = Server::start(
        "[server]\nmax_message_bytes = 2048\nmax_streams_per_connection = 4\n\
         [limits]\nmax_calls = 3\ncall_events_per_s = 1.0\ncall_event_burst = 4.0\n\
         call_idle_expiry_s = 2\nmax_text_bytes = 4096\n",
    );
    let ch = server.channel().await;
    let agent = unique("agent");
    let mut feed = Feed::subscribe(&ch, &agent, 0).await;

    // per-call event rate: the burst passes, the next event is refused, the call goes on
    let mut chatty = Call::start(&ch, "chatty", &agent, "sv").await;
    for i in 0..4 {
        chatty
            .send(utterance(&format!("p{i}"), Customer, "hej", false))
            .await;
        assert!(matches!(
            chatty.next().await,
            Ok(Some(pb::call_ack::Ack::Partial(_)))
        ));
    }
    chatty.send(utterance("p4", Customer, "hej", false)).await;
    match chatty.next().await {
        Ok(Some(pb::call_ack::Ack::Rejected(r))) => {
            assert_eq!(r.code, Code::ResourceExhausted as i32);
            assert!(r.message.contains("call_events_per_s"), "{}", r.message);
        }
        other => panic!("expected a rate rejection, got {other:?}"),
    }
    assert_eq!(reject_count(&server, "rate_limited"), 1);

    // max message size: the oversized message ends its own stream only
    let mut big = Call::start(&ch, "big", &agent, "sv").await;
    big.send(utterance("u1", Customer, &"å".repeat(1500), true))
        .await;
    let status = big.next().await.expect_err("too large");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("max_message_bytes"), "{status:?}");
    assert_eq!(reject_count(&server, "message_too_large"), 1);

    // max calls (chatty and big are still tracked: big's stream broke, the call is resumable)
    let third = Call::start(&ch, "third", &agent, "sv").await;
    let mut fourth = Call::open(&ch, start_event("fourth", &agent, "sv"))
        .await
        .expect("open");
    assert_eq!(
        fourth.next().await.expect_err("full").code(),
        Code::ResourceExhausted
    );
    assert_eq!(reject_count(&server, "too_many_calls"), 1);
    third.end().await;

    // idle expiry: a silent call's stream is ended and the call forgotten
    let mut idle = Call::start(&ch, &unique("idle"), &agent, "sv").await;
    tokio::time::sleep(Duration::from_millis(2600)).await;
    let _ = idle.tx.send(utterance("late", Customer, "hej", true)).await;
    assert_eq!(
        idle.next().await.expect_err("expired").code(),
        Code::DeadlineExceeded
    );

    // meanwhile an ordinary call on the same server still gets its alert
    let mut good = Call::start(&ch, &unique("good"), &agent, "sv").await;
    let scored = good.say("u1", Customer, THREAT_SV).await;
    assert_eq!(scored.alert_kinds, vec!["escalate".to_string()]);
    assert_eq!(feed.next_alert().await.kind_name, "escalate");
    server.stop().await;
}

#[tokio::test]
async fn streams_beyond_the_per_connection_limit_wait_for_a_free_slot() {
    let server = Server::start("[server]\nmax_streams_per_connection = 2\n");
    let ch = server.channel().await;
    let first = Call::start(&ch, &unique("s"), "a", "sv").await;
    let _second = Call::start(&ch, &unique("s"), "a", "sv").await;
    let third_id = unique("s");
    let pending = tokio::spawn({
        let ch = ch.clone();
        async move { Call::start(&ch, &third_id, "a", "sv").await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !pending.is_finished(),
        "a third stream opened on a 2-stream connection"
    );
    // another connection is not affected
    let other = Server::connect(&format!("http://{}", server.addr)).await;
    let _fourth = Call::start(&other, &unique("s"), "a", "sv").await;
    first.end().await;
    tokio::time::timeout(WAIT, pending)
        .await
        .expect("third stream opens once one ends")
        .expect("task");
    server.stop().await;
}
