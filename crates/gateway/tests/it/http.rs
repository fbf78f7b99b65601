//! The HTTP destination against a recording HTTP server in the test: what a request
//! carries (JSON, token, headers, idempotency key), redirects refused rather than followed,
//! and failures that end in dead letters (attempt limit, permanent status codes) and their
//! replay.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use causeway_gateway::Gateway;
use causeway_message::ack::AckCode;
use causeway_mllp::client::{Client, ClientSettings};
use causeway_store::{AttemptResult, DeliveryState, MessageRecord, SearchQuery};

use crate::support::{adt, adt_channel, start};

/// One request the server took.
#[derive(Debug, Clone)]
struct Seen {
    method: Method,
    path: String,
    headers: HeaderMap,
    body: Bytes,
}

/// How the server answers: the status for a request, given every request so far (this one
/// last); `Location: /moved` goes with a 3xx.
type Script = Box<dyn Fn(&[Seen]) -> StatusCode + Send + Sync>;

/// A recording HTTP server; its script can be swapped while it runs.
#[derive(Clone)]
struct Sink {
    url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    script: Arc<Mutex<Script>>,
}

impl Sink {
    async fn start(script: Script) -> Sink {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/in", listener.local_addr().unwrap());
        let sink = Sink {
            url,
            seen: Arc::default(),
            script: Arc::new(Mutex::new(script)),
        };
        let state = sink.clone();
        let app = axum::Router::new().fallback(
            move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                let state = state.clone();
                async move { state.answer(method, uri, headers, body) }
            },
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        sink
    }

    fn answer(&self, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
        let mut seen = self.seen.lock().unwrap();
        seen.push(Seen {
            method,
            path: uri.path().to_owned(),
            headers,
            body,
        });
        let status = (self.script.lock().unwrap())(&seen);
        if status.is_redirection() {
            (status, [(header::LOCATION, "/moved")], "moved\n").into_response()
        } else {
            (status, "answer\n").into_response()
        }
    }

    fn set(&self, script: Script) {
        *self.script.lock().unwrap() = script;
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// Sends each control id's `adt` and expects AA.
async fn send_all(gateway: &Gateway, ids: &[&str]) {
    let mut client = Client::new(
        gateway.listening["adt"].to_string(),
        ClientSettings::default(),
    );
    for id in ids {
        let reply = client.send(&adt(id)).await.unwrap().reply.unwrap();
        assert_eq!(reply.code, AckCode::AA, "{id}");
    }
    client.close().await;
}

/// The stored message with MSH-10 `control_id`.
async fn record(gateway: &Gateway, control_id: &str) -> MessageRecord {
    let page = gateway
        .store
        .search(SearchQuery {
            control_id: Some(control_id.to_owned()),
            limit: 2,
            ..SearchQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(page.messages.len(), 1, "{control_id}");
    gateway
        .store
        .message(page.messages[0].id)
        .await
        .unwrap()
        .unwrap()
}

/// Polls `check` for up to 20 s.
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The one delivery's state and its attempts' results, once `done` says so.
async fn delivery_when(
    gateway: &Gateway,
    control_id: &str,
    what: &str,
    done: impl Fn(DeliveryState, &[AttemptResult]) -> bool,
) -> (DeliveryState, Vec<AttemptResult>) {
    eventually(what, || async {
        let r = record(gateway, control_id).await;
        let d = r.deliveries.first()?;
        let attempts: Vec<AttemptResult> = d.attempts.iter().map(|a| a.result.clone()).collect();
        done(d.state, &attempts).then_some((d.state, attempts))
    })
    .await
}

/// `adt_channel`, with the admin API on a free loopback port.
fn admin_and_adt_channel(destinations: &str) -> String {
    adt_channel(destinations).replacen(
        "[admin]\ndisabled = true\n",
        "[admin]\nbind = \"127.0.0.1:0\"\n",
        1,
    )
}

fn ok_always() -> Script {
    Box::new(|_| StatusCode::OK)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_json_post_carries_the_token_headers_and_a_stable_id() {
    let sink = Sink::start(ok_always()).await;
    let url = sink.url.clone();
    let (gateway, running, _dir) = start(|_| {
        adt_channel(&format!(
            r#"
[[channel.destination]]
name = "api"
type = "http"
url = "{url}"
format = "json"
bearer_token = "token-for-the-test"
message_id_header = "X-Message-Id"
[channel.destination.headers]
X-Site = "north-campus"
"#
        ))
    })
    .await;
    send_all(&gateway, &["J1"]).await;
    let got = eventually("nothing was posted", || async {
        sink.seen().first().cloned()
    })
    .await;
    let id = record(&gateway, "J1").await.summary.id;
    running.stop(&gateway).await;

    assert_eq!(got.method, Method::POST);
    assert_eq!(got.path, "/in");
    let h = |name: &str| {
        got.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    assert_eq!(h("content-type").as_deref(), Some("application/json"));
    assert_eq!(
        h("authorization").as_deref(),
        Some("Bearer token-for-the-test")
    );
    assert_eq!(h("x-site").as_deref(), Some("north-campus"));
    assert_eq!(h("x-message-id"), Some(format!("api-{}", id.0)));
    assert_eq!(
        h("idempotency-key"),
        None,
        "the configured header replaces it"
    );
    let json: serde_json::Value = serde_json::from_slice(&got.body).unwrap();
    assert_eq!(json["control_id"], "J1");
    let segments = json["segments"].as_array().unwrap();
    assert_eq!(segments.len(), 2, "{json}");
}

/// A 3xx is not followed (a client would repeat the POST as a GET without its body, and a
/// 2xx to that GET would count a message as delivered that never arrived): it is a failed
/// attempt naming the new location, retried until the receiver accepts the POST.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_is_a_failed_attempt_not_a_delivery() {
    let sink = Sink::start(Box::new(|seen| {
        match seen.last().map(|s| s.path.as_str()) {
            Some("/in") => StatusCode::FOUND,
            _ => StatusCode::OK,
        }
    }))
    .await;
    let url = sink.url.clone();
    let (gateway, running, _dir) = start(|_| {
        adt_channel(&format!(
            r#"
[[channel.destination]]
name = "api"
type = "http"
url = "{url}"
retry_initial = "20ms"
retry_max = "50ms"
"#
        ))
    })
    .await;
    send_all(&gateway, &["R1"]).await;
    let (state, attempts) = delivery_when(&gateway, "R1", "no two failed attempts", |_, a| {
        a.len() >= 2
    })
    .await;
    assert_ne!(state, DeliveryState::Delivered);
    for a in &attempts {
        match a {
            AttemptResult::Failed { error, .. } => assert!(
                error.contains("302") && error.contains("not followed") && error.contains("/moved"),
                "{error}"
            ),
            other => panic!("{other:?}"),
        }
    }
    let seen = sink.seen();
    assert!(
        seen.iter()
            .all(|s| s.method == Method::POST && s.path == "/in"),
        "the redirect was followed: {:?}",
        seen.iter()
            .map(|s| (&s.method, &s.path))
            .collect::<Vec<_>>()
    );
    // The receiver takes the POST again: delivered, in the same delivery.
    sink.set(ok_always());
    delivery_when(&gateway, "R1", "not delivered once accepted", |s, _| {
        s == DeliveryState::Delivered
    })
    .await;
    running.stop(&gateway).await;
}

/// `on_failure = "dead_letter"`: a message that fails `max_attempts` times, and one the
/// receiver refuses with a permanent status code (at once), leave the queue as dead
/// letters, and the messages behind them are delivered; replayed, both are delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_end_in_dead_letters_that_replay_delivers() {
    // D1 gets 503 every time; D2 gets 422; D3 gets 200.
    let sink = Sink::start(Box::new(|seen| {
        let body = &seen.last().unwrap().body;
        if body.windows(4).any(|w| w == b"|D1|") {
            StatusCode::SERVICE_UNAVAILABLE
        } else if body.windows(4).any(|w| w == b"|D2|") {
            StatusCode::UNPROCESSABLE_ENTITY
        } else {
            StatusCode::OK
        }
    }))
    .await;
    let url = sink.url.clone();
    let (gateway, running, _dir) = start(|_| {
        admin_and_adt_channel(&format!(
            r#"
[[channel.destination]]
name = "api"
type = "http"
url = "{url}"
on_failure = "dead_letter"
max_attempts = 3
retry_initial = "20ms"
retry_max = "50ms"
"#
        ))
    })
    .await;
    send_all(&gateway, &["D1", "D2", "D3"]).await;
    let (_, d1) = delivery_when(&gateway, "D1", "D1 not dead-lettered", |s, _| {
        s == DeliveryState::DeadLetter
    })
    .await;
    assert_eq!(d1.len(), 3, "three attempts, then a dead letter: {d1:?}");
    assert!(matches!(&d1[2], AttemptResult::DeadLettered { error } if error.contains("503")));
    let (_, d2) = delivery_when(&gateway, "D2", "D2 not dead-lettered", |s, _| {
        s == DeliveryState::DeadLetter
    })
    .await;
    assert_eq!(d2.len(), 1, "a permanent code is not retried: {d2:?}");
    assert!(matches!(&d2[0], AttemptResult::DeadLettered { error } if error.contains("422")));
    delivery_when(&gateway, "D3", "D3 not delivered", |s, _| {
        s == DeliveryState::Delivered
    })
    .await;
    let before_replay = sink.seen().len();
    assert_eq!(before_replay, 5, "3 + 1 + 1 requests");

    // The receiver is fixed; the dead letters are replayed through the admin API, in their
    // queue order, and the audit log names both messages.
    sink.set(ok_always());
    let admin = gateway.admin_addr().unwrap();
    let reply = reqwest::Client::new()
        .post(format!(
            "http://{admin}/api/destinations/api/replay-dead-letters"
        ))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let reply: serde_json::Value = serde_json::from_str(&reply).unwrap();
    let (d1_id, d2_id) = (
        record(&gateway, "D1").await.summary.id,
        record(&gateway, "D2").await.summary.id,
    );
    assert_eq!(
        reply["messages"],
        serde_json::json!([d1_id.0, d2_id.0]),
        "{reply}"
    );
    let audit = gateway.store.list_audit(10).await.unwrap();
    let replay = audit
        .iter()
        .find(|a| a.entry.action == causeway_store::AuditAction::Replay)
        .expect("the replay is audited");
    assert_eq!(replay.entry.message_ids, [d1_id, d2_id]);
    for id in ["D1", "D2"] {
        eventually("a replay was not delivered", || async {
            let r = record(&gateway, id).await;
            r.deliveries
                .iter()
                .any(|d| d.state == DeliveryState::Delivered)
                .then_some(())
        })
        .await;
    }
    let after: Vec<String> = sink.seen()[before_replay..]
        .iter()
        .map(|s| {
            let body = String::from_utf8_lossy(&s.body).into_owned();
            body.split('|').nth(9).unwrap_or_default().to_owned()
        })
        .collect();
    assert_eq!(after, ["D1", "D2"], "replayed in queue order, once each");
    let dead = gateway
        .metrics
        .dead_lettered
        .get_or_create(&causeway_gateway::metrics::DestinationLabel {
            channel: "adt".into(),
            destination: "api".into(),
        })
        .get();
    assert_eq!(dead, 2, "counted once each");
    running.stop(&gateway).await;
}
