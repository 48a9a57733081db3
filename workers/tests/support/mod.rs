//! Shared helpers of the outbound tests: an in-process worker process whose `/metrics` the test
//! can read, a Kafka consumer for librdkafka's mock cluster, and a scriptable webhook receiver.
#![allow(
    dead_code,
    reason = "each test file uses a different subset of the helpers"
)]

use std::{
    collections::VecDeque,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    Router,
    body::Bytes,
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    routing::post,
};
use rdkafka::{
    ClientConfig, Message, Offset, TopicPartitionList,
    consumer::{BaseConsumer, Consumer},
    message::Headers,
};
use serde_json::Value;
use slotq_runtime::config::{Config, Role};
use slotq_runtime::shutdown::{self, Trigger};
use slotq_testkit::TestApp;

/// A worker process started in-process by the test (not by the harness), so the test knows
/// its admin address.
pub struct Workers {
    /// `/metrics` lives here.
    pub admin: SocketAddr,
    trigger: Trigger,
    handle: tokio::task::JoinHandle<()>,
}

/// Starts `slotq_workers::run` with the app's environment.
pub async fn start_workers(app: &TestApp) -> Workers {
    let config = Config::from_vars(Role::Workers, &app.env).expect("workers config");
    let (trigger, stop) = shutdown::channel();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let handle = tokio::spawn(async move {
        slotq_workers::run(config, stop, move |a| {
            let _ = tx.send(a);
        })
        .await
        .expect("workers run");
    });
    let admin = tokio::time::timeout(Duration::from_secs(20), rx)
        .await
        .expect("workers start in time")
        .expect("admin address");
    Workers {
        admin,
        trigger,
        handle,
    }
}

impl Workers {
    /// The value of one series on `/metrics` (`name` or `name{labels}`), 0 when absent.
    pub async fn metric(&self, series: &str) -> f64 {
        let text = reqwest::get(format!("http://{}/metrics", self.admin))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics body");
        text.lines()
            .find_map(|l| {
                l.strip_prefix(series)
                    .and_then(|rest| rest.strip_prefix(' '))
                    .and_then(|v| v.trim().parse().ok())
            })
            .unwrap_or(0.0)
    }

    /// Stops the workers and waits for them (drained).
    pub async fn stop(self) {
        self.trigger.fire();
        tokio::time::timeout(Duration::from_secs(20), self.handle)
            .await
            .expect("workers stop in time")
            .expect("workers task");
    }
}

/// Evaluates `$cond` (which may `.await`) every 50 ms until it is true, or panics naming
/// `$what` after `$timeout`.
macro_rules! eventually {
    ($timeout:expr, $what:expr, $cond:expr) => {{
        let deadline = std::time::Instant::now() + $timeout;
        loop {
            if $cond {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for: {}",
                $what
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }};
}

/// One consumed Kafka message.
#[derive(Clone, Debug)]
pub struct Consumed {
    /// Partition.
    pub partition: i32,
    /// Offset in the partition.
    pub offset: i64,
    /// Message key.
    pub key: String,
    /// The CloudEvent.
    pub event: Value,
    /// The `content-type` header.
    pub content_type: Option<String>,
}

/// Reads the topic from the beginning until `expected` messages arrived (then `settle` more,
/// to catch duplicates), or `timeout`. Blocking: call through `spawn_blocking`.
pub fn consume(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    expected: usize,
    timeout: Duration,
) -> Vec<Consumed> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("test-{}", uuid::Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .expect("partition");
    }
    consumer.assign(&tpl).expect("assign");
    let deadline = Instant::now() + timeout;
    let mut settle_until: Option<Instant> = None;
    let mut out = Vec::new();
    loop {
        let now = Instant::now();
        if now >= deadline || settle_until.is_some_and(|t| now >= t) {
            return out;
        }
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            let content_type = m.headers().and_then(|h| {
                h.iter()
                    .find(|h| h.key == "content-type")
                    .and_then(|h| h.value)
                    .map(|v| String::from_utf8_lossy(v).into_owned())
            });
            out.push(Consumed {
                partition: m.partition(),
                offset: m.offset(),
                key: String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
                event: serde_json::from_slice(m.payload().unwrap_or_default())
                    .expect("a JSON CloudEvent"),
                content_type,
            });
            if out.len() >= expected && settle_until.is_none() {
                settle_until = Some(Instant::now() + Duration::from_millis(700));
            }
        }
    }
}

/// A request the receiver got.
#[derive(Clone, Debug)]
pub struct Received {
    /// Path segment after `/hooks/`.
    pub endpoint: String,
    /// Headers.
    pub headers: HeaderMap,
    /// Raw body.
    pub body: Bytes,
    /// When it arrived.
    pub at: Instant,
}

impl Received {
    /// A header as text ("" when absent).
    pub fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    }

    /// The body as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }
}

#[derive(Default)]
struct ReceiverState {
    /// Statuses to answer next, in order; then `fallback`.
    script: VecDeque<u16>,
    fallback: u16,
    received: Vec<Received>,
}

/// A small HTTP receiver on 127.0.0.1 with scripted answers: `POST /hooks/{endpoint}`.
#[derive(Clone)]
pub struct Receiver {
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    state: Arc<Mutex<ReceiverState>>,
}

async fn receive(
    State(state): State<Arc<Mutex<ReceiverState>>>,
    Path(endpoint): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let mut s = state.lock().expect("receiver state");
    s.received.push(Received {
        endpoint,
        headers,
        body,
        at: Instant::now(),
    });
    let code = s.script.pop_front().unwrap_or(s.fallback);
    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

impl Receiver {
    /// Starts a receiver answering `script` first, then `fallback`.
    pub async fn start(script: &[u16], fallback: u16) -> Receiver {
        let state = Arc::new(Mutex::new(ReceiverState {
            script: script.iter().copied().collect(),
            fallback,
            received: Vec::new(),
        }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind receiver");
        let addr = listener.local_addr().expect("addr");
        let app = Router::new()
            .route("/hooks/{endpoint}", post(receive))
            .with_state(state.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver {
            base: format!("http://{addr}"),
            state,
        }
    }

    /// The URL of one endpoint.
    pub fn url(&self, endpoint: &str) -> String {
        format!("{}/hooks/{endpoint}", self.base)
    }

    /// Requests received so far at `endpoint`.
    pub fn received(&self, endpoint: &str) -> Vec<Received> {
        self.state
            .lock()
            .expect("receiver state")
            .received
            .iter()
            .filter(|r| r.endpoint == endpoint)
            .cloned()
            .collect()
    }

    /// Changes the answer once the script is used up.
    pub fn answer(&self, fallback: u16) {
        self.state.lock().expect("receiver state").fallback = fallback;
    }
}
