//! The admin API against a running gateway: probes, metrics, channels, search, view,
//! replay, injection, quarantine, the token and the audit log.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use causeway_gateway::admin::ROUTES;
use causeway_gateway::gateway::Running;
use causeway_gateway::{Config, Gateway};
use causeway_mllp::client::{AckStatus, Client, ClientSettings};
use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap};
use serde_json::{Value, json};

use crate::support::start;

const TOKEN: &str = "correct-horse-battery-staple";

/// A gateway on ephemeral ports with one channel `adt` delivering to files.
struct Harness {
    gateway: Arc<Gateway>,
    running: Running,
    dir: tempfile::TempDir,
    outbox: PathBuf,
    http: reqwest::Client,
    base: String,
    mllp: SocketAddr,
    token: Option<&'static str>,
}

/// What an HTTP call returned.
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    text: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.text))
    }
}

impl Harness {
    async fn start(token: bool) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().display().to_string();
        let admin = if token {
            format!("token = '{TOKEN}'\ntoken_name = 'ci-bot'\n")
        } else {
            String::new()
        };
        let toml = format!(
            r#"
[store]
path = '{root}/data'

[admin]
bind = "127.0.0.1:0"
{admin}
[[channel]]
name = "adt"

[channel.source]
bind = "127.0.0.1:0"

[[channel.destination]]
name = "outbox"
type = "file"
directory = '{root}/outbox'
"#
        );
        let config = Config::parse(&toml).unwrap();
        let (gateway, running) = Gateway::start(config).await.unwrap();
        let base = format!("http://{}", gateway.admin_addr().unwrap());
        let mllp = gateway.listening["adt"];
        Harness {
            gateway,
            running,
            outbox: dir.path().join("outbox"),
            dir,
            http: reqwest::Client::new(),
            base,
            mllp,
            token: token.then_some(TOKEN),
        }
    }

    async fn stop(self) {
        self.running.stop(&self.gateway).await;
    }

    async fn call(&self, method: &str, path: &str, body: Option<(&str, Vec<u8>)>) -> Reply {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = self.token {
            req = req.header(AUTHORIZATION, format!("Bearer {token}"));
        }
        if let Some((content_type, bytes)) = body {
            req = req.header(CONTENT_TYPE, content_type).body(bytes);
        }
        let resp = req.send().await.unwrap();
        Reply {
            status: resp.status(),
            headers: resp.headers().clone(),
            text: resp.text().await.unwrap(),
        }
    }

    async fn get(&self, path: &str) -> Reply {
        self.call("GET", path, None).await
    }

    async fn post(&self, path: &str, body: Value) -> Reply {
        let bytes = serde_json::to_vec(&body).unwrap();
        self.call("POST", path, Some(("application/json", bytes)))
            .await
    }

    async fn search(&self, filters: Value) -> Value {
        let reply = self.post("/api/messages/search", filters).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
        reply.json()
    }

    /// Sends each message over MLLP and checks it was accepted.
    async fn send(&self, messages: &[Vec<u8>]) {
        let mut client = Client::new(self.mllp.to_string(), ClientSettings::default());
        for m in messages {
            let delivery = client.send(m).await.unwrap();
            assert_eq!(delivery.status, AckStatus::Accepted);
        }
        client.close().await;
    }

    /// The message, once every delivery of it is delivered.
    async fn delivered(&self, id: i64) -> Value {
        eventually(|| async {
            let m = self.get(&format!("/api/messages/{id}")).await.json();
            let deliveries = m["deliveries"].as_array().unwrap();
            (!deliveries.is_empty() && deliveries.iter().all(|d| d["state"] == "delivered"))
                .then_some(m)
        })
        .await
    }

    /// The outbox file of message `id`, once written.
    async fn outbox_file(&self, id: i64) -> PathBuf {
        eventually(|| async { file_of(&self.outbox, id) }).await
    }
}

fn file_of(dir: &Path, id: i64) -> Option<PathBuf> {
    let needle = format!("-{id}-");
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            // `.NAME.tmp` is the file destination's half-written file.
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            !name.starts_with('.') && name.contains(&needle)
        })
}

/// Polls `check` until it gives a value (10 s at most).
async fn eventually<T, F, Fut>(mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    for _ in 0..200 {
        if let Some(v) = check().await {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("condition not met within 10 s");
}

fn adt(control_id: &str, patient_id: &str) -> Vec<u8> {
    format!(
        "MSH|^~\\&|HIS|HOSP|RIS|RAD|20240101120000||ADT^A01|{control_id}|P|2.5\r\
         PID|1||{patient_id}^^^HOSP^MR||DOE^JANE\r"
    )
    .into_bytes()
}

fn ids(page: &Value) -> Vec<i64> {
    page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_i64().unwrap())
        .collect()
}

#[tokio::test]
async fn probes_metrics_and_channels() {
    let h = Harness::start(false).await;
    let health = h.get("/healthz").await;
    assert_eq!(
        (health.status, health.text.as_str()),
        (StatusCode::OK, "ok")
    );
    let ready = h.get("/readyz").await;
    assert_eq!(ready.status, StatusCode::OK, "{}", ready.text);

    h.send(&[adt("C1", "P1"), adt("C2", "P2"), adt("C3", "P3")])
        .await;
    let metrics = h.get("/metrics").await;
    assert_eq!(metrics.status, StatusCode::OK);
    assert!(
        metrics.headers[CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text"),
    );
    assert!(
        metrics
            .text
            .contains("causeway_messages_received_total{channel=\"adt\"} 3"),
        "{}",
        metrics.text
    );
    assert!(metrics.text.trim_end().ends_with("# EOF"));
    // The store's writer, read at the scrape: three ingests, each made durable by a timed
    // sync (one may cover several), none failed.
    let value = |name: &str| -> f64 {
        let line = metrics
            .text
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")));
        line.and_then(|l| l.split(' ').nth(1)?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in\n{}", metrics.text))
    };
    assert!(value("causeway_store_batch_writes_total") >= 3.0);
    assert!(value("causeway_store_batches_total") >= 1.0);
    assert!(value("causeway_store_syncs_total") >= 1.0);
    assert!(value("causeway_store_sync_seconds_total") > 0.0);
    assert_eq!(value("causeway_store_failed_batches_total"), 0.0);

    let newest = ids(&h.search(json!({ "limit": 1 })).await)[0];
    h.delivered(newest).await;
    let channels = h.get("/api/channels").await;
    assert_eq!(channels.status, StatusCode::OK, "{}", channels.text);
    let c = &channels.json()["channels"][0];
    assert_eq!(c["name"], "adt");
    assert_eq!(c["listen"], h.mllp.to_string());
    assert_eq!(c["ack"], "after_store");
    assert_eq!(c["received"], 3);
    assert_eq!(c["acked"]["AA"], 3);
    assert_eq!(c["quarantined"], 0);
    let d = &c["destinations"][0];
    assert_eq!(d["name"], "outbox");
    assert_eq!(d["type"], "file");
    assert_eq!(d["target"], h.outbox.display().to_string());
    assert_eq!(d["queue"]["dead_letters"], 0);
    assert!(d["delivered"].as_u64().unwrap() >= 1);

    // Unknown routes and methods answer in JSON too.
    // The delivery lease: this node (SQLite: one node) holds the destination's.
    let leases = eventually(|| async {
        let r = h.get("/api/leases").await;
        (r.status == StatusCode::OK && r.json()["leases"].as_array().is_some_and(|l| !l.is_empty()))
            .then_some(r.json())
    })
    .await;
    assert_eq!(leases["node_id"], h.gateway.node_id.as_str());
    let lease = &leases["leases"][0];
    assert_eq!(lease["destination"], "outbox");
    assert_eq!(lease["node_id"], h.gateway.node_id.as_str());
    assert_eq!(lease["this_node"], true);
    assert_eq!(lease["expired"], false);
    let metrics = h.get("/metrics").await.text;
    assert!(
        metrics.contains("causeway_lease_held{destination=\"outbox\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains(&format!(
        "causeway_node_info{{node_id=\"{}\"}} 1",
        h.gateway.node_id
    )));

    let missing = h.get("/api/nothing").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert!(missing.json()["error"].is_string());
    let wrong = h.call("DELETE", "/api/channels", None).await;
    assert_eq!(wrong.status, StatusCode::METHOD_NOT_ALLOWED);

    // A listener that stops after start makes the gateway unready, naming the channel.
    h.gateway
        .listener_failures
        .lock()
        .unwrap()
        .insert("adt".into(), "accept failed".into());
    let unready = h.get("/readyz").await;
    assert_eq!(unready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        unready.json()["error"]
            .as_str()
            .unwrap()
            .contains("channel adt stopped listening: accept failed"),
        "{}",
        unready.text
    );
    h.gateway.listener_failures.lock().unwrap().clear();
    assert_eq!(h.get("/readyz").await.status, StatusCode::OK);

    // A store that cannot commit makes the gateway unready, not dead.
    h.gateway.store.close().await.unwrap();
    // (The store check is reused for up to a second.)
    let unready = eventually(|| async {
        let r = h.get("/readyz").await;
        (r.status == StatusCode::SERVICE_UNAVAILABLE).then_some(r)
    })
    .await;
    assert!(
        unready.json()["error"].as_str().unwrap().contains("store"),
        "{}",
        unready.text
    );
    assert_eq!(h.get("/healthz").await.status, StatusCode::OK);
    h.stop().await;
}

#[tokio::test]
async fn search_view_replay_and_audit() {
    let h = Harness::start(false).await;
    let sent = [
        adt("CTRL-1", "MRN-A"),
        adt("CTRL-2", "MRN-B"),
        adt("CTRL-3", "MRN-A"),
        adt("CTRL-4", "MRN-C"),
    ];
    h.send(&sent).await;

    // By control id.
    let page = h.search(json!({ "control_id": "CTRL-2" })).await;
    let found = ids(&page);
    assert_eq!(found.len(), 1);
    let m = &page["messages"][0];
    assert_eq!(m["control_id"], "CTRL-2");
    assert_eq!(m["patient_id"], "MRN-B");
    assert_eq!(m["type"], "ADT^A01");
    assert_eq!(m["channel"], "adt");
    assert!(m.get("raw").is_none(), "summaries carry no bytes");
    assert_eq!(page["next"], Value::Null);
    let id = found[0];

    // By patient id, one per page, newest first.
    let first = h.search(json!({ "patient_id": "MRN-A", "limit": 1 })).await;
    let cursor = first["next"].as_str().unwrap().to_owned();
    let second = h
        .search(json!({ "patient_id": "MRN-A", "limit": 1, "cursor": cursor }))
        .await;
    assert_eq!(second["next"], Value::Null);
    let (a, b) = (ids(&first), ids(&second));
    assert_eq!((a.len(), b.len()), (1, 1));
    assert!(a[0] > b[0]);
    assert_eq!(first["messages"][0]["control_id"], "CTRL-3");

    // Type, time and status filters.
    assert_eq!(ids(&h.search(json!({ "type": "ADT" })).await).len(), 4);
    assert_eq!(ids(&h.search(json!({ "type": "ADT^A01" })).await).len(), 4);
    assert_eq!(ids(&h.search(json!({ "type": "ORU^R01" })).await).len(), 0);
    let future = h
        .search(json!({ "received_from": "2999-01-01T00:00:00Z" }))
        .await;
    assert!(ids(&future).is_empty());
    let since_epoch = h
        .search(json!({ "received_from": 0, "received_until": "2999-01-01T00:00:00+02:00" }))
        .await;
    assert_eq!(ids(&since_epoch).len(), 4);

    // Bad requests say why.
    for (body, needle) in [
        (b"{".to_vec(), "bad JSON"),
        (br#"{"patient":"x"}"#.to_vec(), "unknown field"),
        (br#"{"status":"lost"}"#.to_vec(), "lost"),
        (
            br#"{"received_from":"yesterday"}"#.to_vec(),
            "received_from",
        ),
        (br#"{"cursor":"nope"}"#.to_vec(), "cursor"),
    ] {
        let reply = h
            .call(
                "POST",
                "/api/messages/search",
                Some(("application/json", body)),
            )
            .await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.text);
        let error = reply.json()["error"].as_str().unwrap().to_owned();
        assert!(error.contains(needle), "{error}");
    }
    let huge = h
        .call(
            "POST",
            "/api/messages/search",
            Some(("application/json", vec![b' '; 100 << 10])),
        )
        .await;
    assert_eq!(huge.status, StatusCode::PAYLOAD_TOO_LARGE);

    // View: the exact bytes, the tree, the delivery.
    let view = h.delivered(id).await;
    assert_eq!(view["raw"].as_str().unwrap().as_bytes(), &sent[1][..]);
    let exact = base64::engine::general_purpose::STANDARD
        .decode(view["raw_base64"].as_str().unwrap())
        .unwrap();
    assert_eq!(exact, sent[1]);
    assert_eq!(view["parsed"]["control_id"], "CTRL-2");
    assert_eq!(view["routed_to"], json!(["outbox"]));
    let delivery = &view["deliveries"][0];
    assert_eq!(delivery["destination"], "outbox");
    assert_eq!(delivery["attempts"][0]["result"], "delivered");
    assert_eq!(
        h.get("/api/messages/999999").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        h.get("/api/messages/abc").await.status,
        StatusCode::BAD_REQUEST
    );

    // Replay: a new delivery that gets delivered again.
    let file = h.outbox_file(id).await;
    assert_eq!(std::fs::read(&file).unwrap(), sent[1]);
    std::fs::remove_file(&file).unwrap();
    let replay = h
        .call("POST", &format!("/api/messages/{id}/replay"), None)
        .await;
    assert_eq!(replay.status, StatusCode::OK, "{}", replay.text);
    let new_delivery = replay.json()["deliveries"][0].as_i64().unwrap();
    let again = h.outbox_file(id).await;
    assert_eq!(std::fs::read(&again).unwrap(), sent[1]);
    let view = h.delivered(id).await;
    let deliveries = view["deliveries"].as_array().unwrap();
    assert_eq!(deliveries.len(), 2);
    assert_eq!(deliveries[1]["id"], new_delivery);
    assert_eq!(deliveries[1]["replay_of"], deliveries[0]["id"]);
    let to_one = h
        .post(
            &format!("/api/messages/{id}/replay"),
            json!({ "destination": "outbox" }),
        )
        .await;
    assert_eq!(to_one.status, StatusCode::OK, "{}", to_one.text);
    let unknown = h
        .post(
            &format!("/api/messages/{id}/replay"),
            json!({ "destination": "nowhere" }),
        )
        .await;
    assert_eq!(unknown.status, StatusCode::BAD_REQUEST);
    let missing = h.post("/api/messages/999999/replay", json!({})).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);

    let dead = h
        .call("POST", "/api/destinations/outbox/replay-dead-letters", None)
        .await;
    assert_eq!(dead.status, StatusCode::OK, "{}", dead.text);
    assert_eq!(dead.json()["deliveries"], json!([]));
    let nowhere = h
        .call(
            "POST",
            "/api/destinations/nowhere/replay-dead-letters",
            None,
        )
        .await;
    assert_eq!(nowhere.status, StatusCode::NOT_FOUND);

    // The audit log: who, from where, what, which messages; no patient ids.
    let audit = h.get("/api/audit?limit=1000").await;
    assert_eq!(audit.status, StatusCode::OK);
    let entries = audit.json()["entries"].as_array().unwrap().clone();
    for e in &entries {
        assert_eq!(e["actor"], "local");
        assert!(e["address"].as_str().unwrap().starts_with("127.0.0.1:"));
        let detail = e["detail"].as_str().unwrap();
        assert!(
            !detail.contains("MRN") && !detail.contains("CTRL"),
            "{detail}"
        );
    }
    let action = |name: &str| {
        entries
            .iter()
            .filter(|e| e["action"] == name)
            .cloned()
            .collect::<Vec<_>>()
    };
    let searches = action("search");
    assert!(
        searches
            .iter()
            .any(|e| e["detail"].as_str().unwrap().contains("patient_id")
                && e["message_ids"].as_array().unwrap().len() == 1)
    );
    assert!(
        action("view")
            .iter()
            .any(|e| e["message_ids"] == json!([id]))
    );
    let replays = action("replay");
    assert!(replays.iter().any(|e| e["message_ids"] == json!([id])));
    assert!(replays.iter().any(|e| {
        e["detail"]
            .as_str()
            .unwrap()
            .contains("dead letters of outbox")
    }));
    // Newest first.
    let audit_ids: Vec<i64> = entries.iter().map(|e| e["id"].as_i64().unwrap()).collect();
    assert!(audit_ids.windows(2).all(|w| w[0] > w[1]));
    h.stop().await;
}

#[tokio::test]
async fn inject_and_quarantine() {
    let h = Harness::start(false).await;
    let raw = adt("INJ-1", "MRN-X");
    let created = h
        .call(
            "POST",
            "/api/channels/adt/messages",
            Some(("application/hl7-v2", raw.clone())),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    let body = created.json();
    let id = body["id"].as_i64().unwrap();
    assert_eq!(body["destinations"], json!(["outbox"]));
    assert_eq!(
        created.headers["location"].to_str().unwrap(),
        format!("/api/messages/{id}")
    );
    let view = h.delivered(id).await;
    assert_eq!(view["peer"], "api:local");
    assert_eq!(view["raw"].as_str().unwrap().as_bytes(), &raw[..]);
    assert_eq!(
        std::fs::read(h.outbox_file(id).await).unwrap(),
        raw,
        "delivered as sent"
    );

    let as_json = h
        .post(
            "/api/channels/adt/messages",
            json!({ "message": String::from_utf8(adt("INJ-2", "MRN-Y")).unwrap() }),
        )
        .await;
    assert_eq!(as_json.status, StatusCode::CREATED, "{}", as_json.text);
    h.delivered(as_json.json()["id"].as_i64().unwrap()).await;

    let garbage = h
        .call(
            "POST",
            "/api/channels/adt/messages",
            Some(("text/plain", b"hello, not hl7".to_vec())),
        )
        .await;
    assert_eq!(garbage.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        garbage.json()["error"]
            .as_str()
            .unwrap()
            .contains("not an HL7 message")
    );
    let quarantine = h.get("/api/quarantine?limit=10").await;
    assert_eq!(quarantine.status, StatusCode::OK, "{}", quarantine.text);
    let q = quarantine.json();
    assert_eq!(q["entries"][0]["raw"], "hello, not hl7");
    assert_eq!(q["entries"][0]["peer"], "api:local");
    assert_eq!(q["next"], Value::Null);
    assert_eq!(
        h.get("/api/quarantine?limit=x").await.status,
        StatusCode::BAD_REQUEST
    );

    let nowhere = h
        .call(
            "POST",
            "/api/channels/nowhere/messages",
            Some(("application/hl7-v2", raw.clone())),
        )
        .await;
    assert_eq!(nowhere.status, StatusCode::NOT_FOUND);
    let png = h
        .call(
            "POST",
            "/api/channels/adt/messages",
            Some(("image/png", raw.clone())),
        )
        .await;
    assert_eq!(png.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    // Larger than the JSON limit, well within the inject limit.
    let mut big = adt("INJ-3", "MRN-Z");
    big.extend_from_slice(format!("NTE|1||{}\r", "x".repeat(200 << 10)).as_bytes());
    let big_reply = h
        .call(
            "POST",
            "/api/channels/adt/messages",
            Some(("application/hl7-v2", big)),
        )
        .await;
    assert_eq!(big_reply.status, StatusCode::CREATED, "{}", big_reply.text);

    let channels = h.get("/api/channels").await.json();
    assert_eq!(channels["channels"][0]["received"], 3);
    assert_eq!(channels["channels"][0]["quarantined"], 1);

    let audit = h.get("/api/audit").await.json();
    let injects: Vec<&Value> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "inject")
        .collect();
    assert_eq!(injects.len(), 4);
    assert!(injects.iter().any(|e| e["message_ids"] == json!([id])));
    assert!(
        injects
            .iter()
            .any(|e| e["detail"].as_str().unwrap().contains("not HL7"))
    );
    for e in injects {
        assert!(!e["detail"].as_str().unwrap().contains("MRN"));
    }
    h.stop().await;
}

#[tokio::test]
async fn token_is_required_except_for_probes() {
    let mut h = Harness::start(true).await;
    h.send(&[adt("T-1", "MRN-T")]).await;
    let with_token = h.search(json!({ "control_id": "T-1" })).await;
    assert_eq!(ids(&with_token).len(), 1);
    assert_eq!(h.get("/metrics").await.status, StatusCode::OK);
    assert_eq!(h.get("/api/channels").await.status, StatusCode::OK);
    let audit = h.get("/api/audit").await.json();
    assert_eq!(audit["entries"][0]["actor"], "ci-bot");

    for token in [None, Some("wrong-token-wrong-token")] {
        h.token = token;
        for path in ["/metrics", "/api/channels", "/api/audit", "/api/quarantine"] {
            let reply = h.get(path).await;
            assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{path}");
            assert_eq!(reply.headers["www-authenticate"], "Bearer");
            assert!(reply.json()["error"].is_string());
        }
        let search = h.post("/api/messages/search", json!({})).await;
        assert_eq!(search.status, StatusCode::UNAUTHORIZED);
        let inject = h
            .call(
                "POST",
                "/api/channels/adt/messages",
                Some(("application/hl7-v2", adt("T-2", "MRN-T"))),
            )
            .await;
        assert_eq!(inject.status, StatusCode::UNAUTHORIZED);
        assert_eq!(h.get("/healthz").await.status, StatusCode::OK);
        assert_eq!(h.get("/readyz").await.status, StatusCode::OK);
    }
    // Nothing was injected without the token.
    h.token = Some(TOKEN);
    assert_eq!(
        ids(&h.search(json!({ "control_id": "T-2" })).await).len(),
        0
    );
    h.stop().await;
}

/// No unaudited access: when the audit log cannot be written, reads fail with 503 and
/// show nothing, and actions that were carried out say so.
#[tokio::test]
async fn audit_failure_fails_the_request() {
    let h = Harness::start(false).await;
    h.send(&[adt("AUD-1", "MRN-AUD")]).await;
    let id = ids(&h.search(json!({ "control_id": "AUD-1" })).await)[0];
    let db = rusqlite::Connection::open(h.dir.path().join("data/causeway.db")).unwrap();
    db.execute_batch(
        "CREATE TRIGGER refuse_audit BEFORE INSERT ON audit \
         BEGIN SELECT RAISE(ABORT, 'audit refused by test'); END;",
    )
    .unwrap();

    let search = h
        .post("/api/messages/search", json!({ "control_id": "AUD-1" }))
        .await;
    assert_eq!(
        search.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        search.text
    );
    assert!(search.json()["error"].as_str().unwrap().contains("audit"));
    assert!(!search.text.contains("MRN-AUD"));
    let view = h.get(&format!("/api/messages/{id}")).await;
    assert_eq!(view.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(!view.text.contains("MRN-AUD"));
    let quarantine = h.get("/api/quarantine").await;
    assert_eq!(quarantine.status, StatusCode::SERVICE_UNAVAILABLE);
    let inject = h
        .call(
            "POST",
            "/api/channels/adt/messages",
            Some(("application/hl7-v2", adt("AUD-2", "MRN-AUD"))),
        )
        .await;
    assert_eq!(inject.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        inject.json()["error"]
            .as_str()
            .unwrap()
            .contains("do not repeat")
    );
    let replay = h
        .call("POST", &format!("/api/messages/{id}/replay"), None)
        .await;
    assert_eq!(replay.status, StatusCode::SERVICE_UNAVAILABLE);

    db.execute_batch("DROP TRIGGER refuse_audit;").unwrap();
    let search = h
        .post("/api/messages/search", json!({ "control_id": "AUD-1" }))
        .await;
    assert_eq!(search.status, StatusCode::OK);
    h.stop().await;
}

#[tokio::test]
async fn admin_can_be_disabled() {
    let (gateway, running, _dir) = start(|root| {
        format!(
            r#"
[admin]
disabled = true
[[channel]]
name = "adt"
[channel.source]
bind = "127.0.0.1:0"
[[channel.destination]]
name = "outbox"
type = "file"
directory = '{root}/outbox'
"#
        )
    })
    .await;
    assert_eq!(gateway.admin_addr(), None);
    running.stop(&gateway).await;
}

/// A channel without `[channel.source]` (fed by the admin API or the link) has no listener
/// to wait for: the gateway is ready with it.
#[tokio::test]
async fn a_channel_without_a_source_does_not_hold_readiness() {
    let (gateway, running, _dir) = start(|root| {
        format!(
            r#"
[admin]
bind = "127.0.0.1:0"
[[channel]]
name = "adt"
[channel.source]
bind = "127.0.0.1:0"
[[channel.destination]]
name = "outbox"
type = "file"
directory = '{root}/outbox'
[[channel]]
name = "outbound"
[[channel.destination]]
name = "sent"
type = "file"
directory = '{root}/sent'
"#
        )
    })
    .await;
    let url = format!("http://{}/readyz", gateway.admin_addr().unwrap());
    let reply = reqwest::get(&url).await.unwrap();
    let status = reply.status();
    let body = reply.text().await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    running.stop(&gateway).await;
}

/// Every route the router serves is described in docs/openapi.yaml, with its method.
#[test]
fn openapi_describes_every_route() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.yaml");
    let yaml = std::fs::read_to_string(&path).unwrap();
    assert!(yaml.starts_with("openapi: 3.1"), "an OpenAPI 3.1 document");
    for (method, route) in ROUTES {
        let key = format!("  {route}:");
        let mut lines = yaml.lines().skip_while(|l| *l != key);
        assert!(
            lines.next().is_some(),
            "{route} is not in docs/openapi.yaml"
        );
        // The path item's lines: indented deeper than its key.
        let mut item = lines.take_while(|l| l.is_empty() || l.starts_with("   "));
        assert!(
            item.any(|l| l == format!("    {method}:")),
            "{method} {route} is not in docs/openapi.yaml"
        );
    }
}
