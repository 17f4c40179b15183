//! Shared test pieces: a real HTTP receiver on loopback that can be told to answer given
//! statuses, delay, or drop the connection; broker and connector set-up helpers.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Router};
use danube_connect_core::config::{ConnectorConfig, RetryConfig, RuntimeConfig, SinkTopicConfig};
use danube_connect_core::{RunReport, Runtime};
use danube_connector_http_sink::{HttpSinkConfig, HttpSinkFactory};
use danube_dev_broker::EmbeddedBroker;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpSocket;
use tokio::sync::Notify;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

/// What the receiver does with one request.
#[derive(Debug, Clone)]
pub(crate) enum Reply {
    /// Answer this status.
    Status(u16),
    /// Answer this status with these headers and body.
    Full(u16, Vec<(String, String)>, String),
    /// Wait, then answer this status.
    Delay(Duration, u16),
    /// Close the connection without answering.
    Drop,
}

impl Reply {
    fn status(&self) -> Option<u16> {
        match self {
            Self::Status(s) | Self::Full(s, ..) | Self::Delay(_, s) => Some(*s),
            Self::Drop => None,
        }
    }
}

/// One request the receiver got.
#[derive(Debug, Clone)]
pub(crate) struct Received {
    /// Method.
    pub method: String,
    /// Path and query.
    pub path: String,
    /// Headers, lower-case names.
    pub headers: HashMap<String, String>,
    /// Body.
    pub body: Bytes,
    /// When it arrived.
    pub at: Instant,
    /// The status it was answered with (`None`: dropped).
    pub status: Option<u16>,
}

impl Received {
    /// A header value.
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    /// The body as text.
    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Whether it was answered 2xx.
    pub(crate) fn ok(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
    }
}

type Responder = Box<dyn Fn(&Received, &[Received]) -> Reply + Send + Sync>;

struct ReceiverState {
    requests: Mutex<Vec<Received>>,
    responder: Mutex<Responder>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    /// Connections being served now.
    connections: AtomicUsize,
}

/// Counts one served connection while alive (dropped when its task ends or is aborted).
struct OpenConnection(Arc<ReceiverState>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A real HTTP server on 127.0.0.1.
pub(crate) struct Receiver {
    addr: SocketAddr,
    state: Arc<ReceiverState>,
    task: Mutex<Option<JoinHandle<()>>>,
    tls: Option<tokio_rustls::TlsAcceptor>,
}

#[derive(Clone)]
struct Kill(Arc<Notify>);

async fn handle(
    State(state): State<Arc<ReceiverState>>,
    Extension(kill): Extension<Kill>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let now = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    state.max_in_flight.fetch_max(now, Ordering::SeqCst);
    let mut received = Received {
        method: method.to_string(),
        path: uri.path_and_query().map(|p| p.to_string()).unwrap_or_default(),
        headers: headers
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect(),
        body,
        at: Instant::now(),
        status: None,
    };
    let reply = {
        let requests = state.requests.lock().expect("lock");
        (state.responder.lock().expect("lock"))(&received, &requests)
    };
    received.status = reply.status();
    state.requests.lock().expect("lock").push(received);
    let response = match reply {
        Reply::Status(s) => status(s).into_response(),
        Reply::Full(s, headers, body) => {
            let mut response = (status(s), body).into_response();
            for (k, v) in headers {
                response.headers_mut().insert(
                    axum::http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                    axum::http::HeaderValue::from_str(&v).expect("value"),
                );
            }
            response
        }
        Reply::Delay(d, s) => {
            tokio::time::sleep(d).await;
            status(s).into_response()
        }
        Reply::Drop => {
            kill.0.notify_one();
            std::future::pending::<()>().await;
            unreachable!()
        }
    };
    state.in_flight.fetch_sub(1, Ordering::SeqCst);
    response
}

fn status(code: u16) -> StatusCode {
    StatusCode::from_u16(code).expect("status")
}

impl Receiver {
    /// Starts a receiver answering 200 to everything.
    pub(crate) async fn start() -> Self {
        Self::start_with(None).await
    }

    /// Starts a receiver, serving TLS with `tls` when given.
    pub(crate) async fn start_with(tls: Option<tokio_rustls::TlsAcceptor>) -> Self {
        let state = Arc::new(ReceiverState {
            requests: Mutex::new(Vec::new()),
            responder: Mutex::new(Box::new(|_, _| Reply::Status(200))),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            connections: AtomicUsize::new(0),
        });
        let mut receiver = Self { addr: "127.0.0.1:0".parse().expect("addr"), state, task: Mutex::new(None), tls };
        receiver.listen().expect("receiver binds");
        receiver
    }

    fn listen(&mut self) -> std::io::Result<()> {
        let socket = TcpSocket::new_v4()?;
        socket.set_reuseaddr(true)?;
        socket.bind(self.addr)?;
        let listener = socket.listen(1024)?;
        self.addr = listener.local_addr()?;
        let router = Router::new().fallback(handle).with_state(self.state.clone());
        let tls = self.tls.clone();
        let state = self.state.clone();
        let task = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let kill = Arc::new(Notify::new());
                let service = TowerToHyperService::new(router.clone().layer(Extension(Kill(kill.clone()))));
                let tls = tls.clone();
                state.connections.fetch_add(1, Ordering::SeqCst);
                let open = OpenConnection(state.clone());
                connections.spawn(async move {
                    let _open = open;
                    let builder = hyper::server::conn::http1::Builder::new();
                    match tls {
                        Some(acceptor) => {
                            let Ok(stream) = acceptor.accept(stream).await else { return };
                            tokio::select! {
                                _ = builder.serve_connection(TokioIo::new(stream), service) => {}
                                _ = kill.notified() => {}
                            }
                        }
                        None => {
                            tokio::select! {
                                _ = builder.serve_connection(TokioIo::new(stream), service) => {}
                                _ = kill.notified() => {}
                            }
                        }
                    }
                });
                while connections.try_join_next().is_some() {}
            }
        });
        *self.task.lock().expect("lock") = Some(task);
        Ok(())
    }

    /// `http://127.0.0.1:PORT` (or `https://`).
    pub(crate) fn base(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.addr.port())
    }

    /// `base` + `path`.
    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base())
    }

    /// The port.
    pub(crate) fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Decides the reply per request, given the requests received before it.
    pub(crate) fn respond(&self, responder: impl Fn(&Received, &[Received]) -> Reply + Send + Sync + 'static) {
        *self.state.responder.lock().expect("lock") = Box::new(responder);
    }

    /// Replies `failing` until the returned flag is set, 200 from then on.
    pub(crate) fn fail_until_healthy(&self, failing: Reply) -> Arc<AtomicBool> {
        let healthy = Arc::new(AtomicBool::new(false));
        let flag = healthy.clone();
        self.respond(move |_, _| if flag.load(Ordering::SeqCst) { Reply::Status(200) } else { failing.clone() });
        healthy
    }

    /// Every request so far.
    pub(crate) fn requests(&self) -> Vec<Received> {
        self.state.requests.lock().expect("lock").clone()
    }

    /// Requests answered 2xx.
    pub(crate) fn delivered(&self) -> Vec<Received> {
        self.requests().into_iter().filter(Received::ok).collect()
    }

    /// The most requests handled at the same time.
    pub(crate) fn max_in_flight(&self) -> usize {
        self.state.max_in_flight.load(Ordering::SeqCst)
    }

    /// Stops listening and closes every connection (the port refuses connections).
    pub(crate) fn stop(&self) {
        if let Some(task) = self.task.lock().expect("lock").take() {
            task.abort();
        }
    }

    /// [`stop`](Self::stop), then waits until every connection it served is closed, so
    /// no request can be answered any more (not even on a pooled connection).
    pub(crate) async fn stop_and_wait(&self) {
        self.stop();
        let state = self.state.clone();
        assert!(
            eventually(Duration::from_secs(10), || state.connections.load(Ordering::SeqCst) == 0).await,
            "the receiver's connections closed"
        );
    }

    /// Listens again on the same port.
    pub(crate) fn restart(&mut self) {
        self.listen().expect("receiver re-binds its port");
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Polls `check` every 20 ms until it holds or `timeout` passes.
pub(crate) async fn eventually(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let started = Instant::now();
    while started.elapsed() < timeout {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    check()
}

/// A config for connector `name` consuming `topic` and posting to `url`, with fast retries.
pub(crate) fn config(name: &str, broker: &EmbeddedBroker, topic: &str, url: &str) -> ConnectorConfig<HttpSinkConfig> {
    let mut runtime = RuntimeConfig { name: name.to_string(), ..Default::default() };
    runtime.danube.service_url = broker.url();
    runtime.danube.connect_timeout = Duration::from_secs(30);
    runtime.ops.listen = "127.0.0.1:0".parse().expect("addr");
    runtime.retry = RetryConfig {
        max_attempts: 5,
        initial_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(200),
        max_elapsed: Duration::from_secs(20),
        ..RetryConfig::default()
    };
    runtime.shutdown.timeout = Duration::from_secs(10);
    runtime.sink.topics = vec![SinkTopicConfig::new(topic)];
    // The receivers of these tests listen on 127.0.0.1: opt out of the SSRF guard.
    let mut connector = HttpSinkConfig { url: url.into(), allow_private_targets: true, ..Default::default() };
    connector.circuit_breaker.cool_down = Duration::from_secs(1);
    ConnectorConfig { runtime, connector }
}

/// A running sink.
pub(crate) struct RunningSink {
    /// Stops it.
    pub token: CancellationToken,
    /// Its run.
    pub run: JoinHandle<RunReport>,
}

impl RunningSink {
    /// SIGTERM-like stop; returns the report.
    pub(crate) async fn stop(self) -> RunReport {
        self.token.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.run).await.expect("sink stops").expect("join")
    }
}

/// Starts the sink in process and waits until its consumer is connected to `topic`.
pub(crate) async fn start_sink(broker: &EmbeddedBroker, config: ConnectorConfig<HttpSinkConfig>) -> RunningSink {
    let topic = config.runtime.sink.topics[0].topic.clone();
    let subscription = config.runtime.name.clone();
    // The topic must exist for the subscription; this first message precedes it and is not delivered.
    if broker.messages(&topic).is_empty() {
        broker.publish(&topic, b"create".to_vec(), HashMap::new(), None);
    }
    danube_connect_core::config::Validate::validate(&config.connector).expect("valid connector config");
    let token = CancellationToken::new();
    let runtime = Runtime::start(config.runtime, token.clone()).await.expect("runtime starts");
    let sink = HttpSinkFactory::build(config.connector).expect("sink builds");
    let run =
        tokio::spawn(async move { runtime.run(danube_connect_core::Parts::new().with_sink(sink)).await.expect("run") });
    assert!(broker.wait_for_consumers(&topic, &subscription, 1, Duration::from_secs(20)).await, "the sink subscribed");
    RunningSink { token, run }
}

/// Publishes `n` records `{prefix}{i}` and returns their offsets.
pub(crate) fn publish_n(broker: &EmbeddedBroker, topic: &str, prefix: &str, n: usize) -> Vec<u64> {
    (0..n).map(|i| broker.publish(topic, format!("{prefix}{i}").into_bytes(), HashMap::new(), None)).collect()
}

/// How many requests carried each message id.
pub(crate) fn by_message_id(requests: &[Received]) -> HashMap<String, Vec<Received>> {
    let mut map: HashMap<String, Vec<Received>> = HashMap::new();
    for r in requests {
        if let Some(id) = r.header("danube-message-id") {
            map.entry(id.to_string()).or_default().push(r.clone());
        }
    }
    map
}
