//! Test harness: the real server on 127.0.0.1:0 with the real model, and small clients.
//!
//! A server runs on its own thread and runtime, so tests (each with their own runtime) can
//! share one. `Server::start` gives a private one with its own config file for tests that
//! change config.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use callguard::proto as pb;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

/// Utterances whose labels the model gets right by a wide margin.
pub const THREAT_SV: &str = "jag vet var du bor och jag kommer hem till dig ikväll med en kniv";
pub const THREAT_NB: &str = "jeg skal komme på kontoret deres og skyte dere alle sammen";
pub const ABUSE_SV: &str = "du är en värdelös jävla idiot och du borde skämmas";
pub const ABUSE_DA: &str = "du er simpelthen for dum til det her job din lille kælling";
pub const WARNING_SV: &str =
    "om du fortsätter att prata till mig på det sättet kommer jag att avsluta samtalet";
pub const WARNING_DA: &str = "hvis du bliver ved med at tale sådan til mig lægger jeg på";
pub const SELF_HARM_SV: &str = "jag orkar inte mer jag tänker ta livet av mig ikväll";
pub const COMPLAINTS: [(&str, &str); 3] = [
    (
        "sv",
        "det här är en skandal, tredubblad elräkning, jag ringer Konsumentverket och pressen imorgon",
    ),
    (
        "nb",
        "dette er helt uakseptabelt, jeg har ventet i førti minutter og nå vil jeg snakke med en leder",
    ),
    (
        "da",
        "jeg er så træt af jer, pakken er væk igen og jeg vil have pengene tilbage nu",
    ),
];

pub const WAIT: Duration = Duration::from_secs(20);

pub struct Server {
    pub addr: SocketAddr,
    pub metrics_port: u16,
    pub config_path: PathBuf,
    pub db_path: PathBuf,
    pub shutdown: CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl Server {
    /// Start a server whose config file holds `config_toml` (merged over the defaults).
    pub fn start(config_toml: &str) -> Server {
        callguard::telemetry::init(false);
        let dir = tempfile::tempdir().expect("tempdir");
        let config_path = dir.path().join("callguard.toml");
        // each test server gets its own free metrics port
        let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let db = dir.path().join("incidents.sqlite");
        let config_toml = inject(
            &inject(
                config_toml,
                "server",
                &format!("metrics_addr = \"127.0.0.1:{metrics_port}\""),
            ),
            "incidents",
            &format!("path = {:?}", db.display().to_string()),
        );
        std::fs::write(&config_path, &config_toml).expect("write config");
        let cfg = callguard::config::load(Some(&config_path)).expect("valid test config");
        let shutdown = CancellationToken::new();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let token = shutdown.clone();
        let path = config_path.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind");
                addr_tx
                    .send(listener.local_addr().expect("addr"))
                    .expect("send addr");
                callguard::run(cfg, Some(path), listener, token)
                    .await
                    .expect("server runs");
            });
        });
        let addr = addr_rx.recv_timeout(WAIT).expect("server bound");
        Server {
            addr,
            metrics_port,
            config_path,
            db_path: db,
            shutdown,
            thread: Some(thread),
            _dir: dir,
        }
    }

    /// The server shared by tests that do not change config.
    pub fn shared() -> &'static Server {
        static SHARED: OnceLock<Server> = OnceLock::new();
        SHARED.get_or_init(|| Server::start(""))
    }

    pub async fn channel(&self) -> Channel {
        Server::connect(&format!("http://{}", self.addr)).await
    }

    /// A channel to the server at `endpoint`, once it reports itself serving.
    pub async fn connect(endpoint: &str) -> Channel {
        let endpoint = endpoint.to_string();
        // the model loads after bind: retry until the server answers
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Ok(ch) = Channel::from_shared(endpoint.clone())
                .expect("uri")
                .connect()
                .await
            {
                let mut health = tonic_health::pb::health_client::HealthClient::new(ch.clone());
                let req = tonic_health::pb::HealthCheckRequest {
                    service: "callguard.v1.Ingest".into(),
                };
                if let Ok(resp) = health.check(req).await
                    && resp.into_inner().status
                        == tonic_health::pb::health_check_response::ServingStatus::Serving as i32
                {
                    return ch;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "server did not come up"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Shut the server down and wait for it. Async so that the test's own clients keep
    /// running meanwhile (they must see their streams end for the drain to finish).
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(t) = self.thread.take() {
            tokio::task::spawn_blocking(move || t.join().expect("server thread"))
                .await
                .expect("join");
        }
    }
}

/// Put `line` first in TOML table `[section]`, adding the table if `toml` has none.
pub fn inject(toml: &str, section: &str, line: &str) -> String {
    let header = format!("[{section}]");
    if toml.contains(&header) {
        toml.replacen(&header, &format!("{header}\n{line}"), 1)
    } else {
        format!("{header}\n{line}\n{toml}")
    }
}

/// A call stream driven step by step.
pub struct Call {
    pub tx: mpsc::Sender<pb::CallEvent>,
    pub acks: tonic::Streaming<pb::CallAck>,
}

pub fn start_event(call_id: &str, agent_id: &str, lang: &str) -> pb::CallEvent {
    pb::CallEvent {
        event: Some(pb::call_event::Event::Start(pb::CallStart {
            call_id: call_id.into(),
            tenant: "test".into(),
            agent_id: agent_id.into(),
            language: lang.into(),
            team: "team-a".into(),
            resume: false,
        })),
    }
}

pub fn utterance(id: &str, speaker: pb::Speaker, text: &str, is_final: bool) -> pb::CallEvent {
    pb::CallEvent {
        event: Some(pb::call_event::Event::Utterance(pb::Utterance {
            utterance_id: id.into(),
            speaker: speaker as i32,
            text: text.into(),
            is_final,
            ..Default::default()
        })),
    }
}

pub fn end_event() -> pb::CallEvent {
    pb::CallEvent {
        event: Some(pb::call_event::Event::End(pb::CallEnd {
            reason: "hangup".into(),
        })),
    }
}

impl Call {
    /// Open a stream and send `first` (normally a start event).
    pub async fn open(channel: &Channel, first: pb::CallEvent) -> Result<Call, tonic::Status> {
        Call::open_as(channel, None, first).await
    }

    /// `open` with a bearer token.
    pub async fn open_as(
        channel: &Channel,
        token: Option<&str>,
        first: pb::CallEvent,
    ) -> Result<Call, tonic::Status> {
        let (tx, rx) = mpsc::channel(64);
        tx.send(first).await.expect("queue first event");
        let acks =
            pb::ingest_client::IngestClient::with_interceptor(channel.clone(), Bearer::new(token))
                .stream_call(ReceiverStream::new(rx))
                .await?
                .into_inner();
        Ok(Call { tx, acks })
    }

    /// Open and expect the call to be accepted.
    pub async fn start(channel: &Channel, call_id: &str, agent_id: &str, lang: &str) -> Call {
        let mut call = Call::open(channel, start_event(call_id, agent_id, lang))
            .await
            .expect("open");
        match call.next().await {
            Ok(Some(pb::call_ack::Ack::Accepted(_))) => call,
            other => panic!("call {call_id} not accepted: {other:?}"),
        }
    }

    /// The next ack, or the stream's error status.
    pub async fn next(&mut self) -> Result<Option<pb::call_ack::Ack>, tonic::Status> {
        match tokio::time::timeout(WAIT, self.acks.next())
            .await
            .expect("ack in time")
        {
            Some(Ok(ack)) => Ok(ack.ack),
            Some(Err(status)) => Err(status),
            None => Ok(None),
        }
    }

    pub async fn send(&self, event: pb::CallEvent) {
        self.tx.send(event).await.expect("stream open");
    }

    /// Send a final utterance and return its scored ack.
    pub async fn say(&mut self, id: &str, speaker: pb::Speaker, text: &str) -> pb::UtteranceScored {
        self.send(utterance(id, speaker, text, true)).await;
        match self.next().await {
            Ok(Some(pb::call_ack::Ack::Scored(s))) => s,
            other => panic!("expected a scored ack for {id}, got {other:?}"),
        }
    }

    pub async fn end(mut self) -> pb::CallClosed {
        self.send(end_event()).await;
        match self.next().await {
            Ok(Some(pb::call_ack::Ack::Closed(c))) => c,
            other => panic!("expected closed, got {other:?}"),
        }
    }
}

/// An agent's alert subscription.
pub struct Feed {
    pub stream: tonic::Streaming<pb::AlertEvent>,
}

impl Feed {
    pub async fn subscribe(channel: &Channel, agent_id: &str, resume_after: u64) -> Feed {
        Feed::subscribe_as(channel, None, agent_id, resume_after)
            .await
            .expect("subscribe")
    }

    /// `subscribe` with a bearer token, returning the refusal status if any.
    pub async fn subscribe_as(
        channel: &Channel,
        token: Option<&str>,
        agent_id: &str,
        resume_after: u64,
    ) -> Result<Feed, tonic::Status> {
        let stream = pb::alert_feed_client::AlertFeedClient::with_interceptor(
            channel.clone(),
            Bearer::new(token),
        )
        .subscribe(pb::SubscribeRequest {
            agent_id: agent_id.into(),
            resume_after: (resume_after > 0).then_some(resume_after),
        })
        .await?
        .into_inner();
        Ok(Feed { stream })
    }

    pub async fn next_event(&mut self) -> pb::alert_event::Event {
        let item = tokio::time::timeout(WAIT, self.stream.next())
            .await
            .expect("alert in time")
            .expect("feed open")
            .expect("feed ok");
        item.event.expect("event set")
    }

    pub async fn next_alert(&mut self) -> pb::Alert {
        match self.next_event().await {
            pb::alert_event::Event::Alert(a) => a,
            other => panic!("expected an alert, got {other:?}"),
        }
    }

    /// No alert arrives within `wait`.
    pub async fn assert_quiet(&mut self, wait: Duration) {
        if let Ok(item) = tokio::time::timeout(wait, self.stream.next()).await {
            panic!("unexpected alert: {item:?}");
        }
    }
}

/// Adds `authorization: Bearer <token>` to each request, when it has a token.
#[derive(Clone)]
pub struct Bearer(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl Bearer {
    pub fn new(token: Option<&str>) -> Bearer {
        Bearer(token.map(|t| format!("Bearer {t}").parse().expect("ascii token")))
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            req.metadata_mut().insert("authorization", value.clone());
        }
        Ok(req)
    }
}

/// A fresh id so tests sharing a server never collide.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}
