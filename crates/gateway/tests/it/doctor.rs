//! `POST /api/doctor`: the doctor's checks against a configured MLLP destination, run by the
//! gateway itself.

use serde_json::{Value, json};

use crate::support::{accept_all, receiver, start};

#[tokio::test]
async fn doctor_checks_a_configured_destination() {
    let lab = receiver(accept_all).await.addr;
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
name = "lab"
type = "mllp"
to = "{lab}"
[[channel.destination]]
name = "files"
type = "file"
directory = '{root}/out'
"#
        )
    })
    .await;
    let url = format!("http://{}/api/doctor", gateway.admin_addr().unwrap());
    let http = reqwest::Client::new();
    let post = |body: Value| {
        http.post(&url)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
    };
    let response = post(json!({"destination": "lab", "max_size": 4096, "samples": 2}))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let report: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
    assert_eq!(report["code"], "ok", "{report:#}");
    let mllp = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "mllp")
        .unwrap();
    assert_eq!(mllp["code"], "ok");
    for bad in [
        json!({"destination": "files"}),
        json!({"destination": "nope"}),
        json!({"dest": "lab"}),
    ] {
        let response = post(bad.clone()).await.unwrap();
        assert!(
            response.status().is_client_error(),
            "{bad}: {}",
            response.status()
        );
    }
    running.stop(&gateway).await;
}
