//! HTTP destination: POST the message (HL7 over HTTP, or JSON), 2xx is delivered.

use std::time::Duration;

use causeway_message::{Charset, Message};
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, LOCATION};

use super::{Attempt, Failure, Outgoing};
use crate::config::{HttpDestination, HttpFormat};

/// Posts to one URL.
#[derive(Debug)]
pub struct HttpSender {
    client: reqwest::Client,
    url: String,
    format: HttpFormat,
    id_header: HeaderName,
    permanent: Vec<u16>,
    destination: String,
}

impl HttpSender {
    /// From the destination's configuration; the token is resolved here.
    pub fn new(config: &HttpDestination, destination: &str) -> Result<HttpSender, String> {
        let mut headers = HeaderMap::new();
        for (k, v) in &config.headers {
            let name =
                HeaderName::from_bytes(k.as_bytes()).map_err(|e| format!("header {k:?}: {e}"))?;
            let v = v
                .resolve(&format!("headers.{k}"))
                .map_err(|e| e.to_string())?;
            let mut value = HeaderValue::from_str(&v).map_err(|e| format!("header {k:?}: {e}"))?;
            value.set_sensitive(true);
            headers.insert(name, value);
        }
        if let Some(token) = &config.bearer_token {
            let token = token.resolve("bearer_token").map_err(|e| e.to_string())?;
            let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|e| format!("bearer_token: {e}"))?;
            value.set_sensitive(true);
            headers.insert(AUTHORIZATION, value);
        }
        let mut builder = reqwest::Client::builder()
            .default_headers(headers)
            .timeout(config.timeout.0)
            .connect_timeout(Duration::from_secs(10))
            // A redirect is answered, never followed: on 301/302/303 a client repeats the
            // POST as a GET without its body, and a 2xx to that GET would count a message
            // as delivered that never arrived (an http-to-https redirect does exactly this).
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("causeway/", env!("CARGO_PKG_VERSION")));
        if let Some(ca) = &config.ca {
            let pem = std::fs::read(ca).map_err(|e| format!("ca {}: {e}", ca.display()))?;
            for cert in
                reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| format!("ca: {e}"))?
            {
                builder = builder.add_root_certificate(cert);
            }
        }
        Ok(HttpSender {
            client: builder.build().map_err(|e| format!("HTTP client: {e}"))?,
            url: config.url.clone(),
            format: config.format,
            id_header: HeaderName::from_bytes(config.message_id_header.as_bytes())
                .map_err(|e| format!("message_id_header: {e}"))?,
            permanent: config.permanent_failure_codes.clone(),
            destination: destination.to_owned(),
        })
    }

    /// One attempt.
    pub async fn send(&mut self, message: &Outgoing) -> Attempt {
        let (content_type, body) = match self.format {
            HttpFormat::Er7 => (er7_content_type(&message.raw), message.raw.to_vec()),
            HttpFormat::Json => match crate::render::message_json(&message.raw) {
                Ok(json) => ("application/json".to_owned(), json.to_string().into_bytes()),
                Err(e) => return Attempt::Permanent(format!("cannot render JSON: {e}").into()),
            },
        };
        // Stable across retries and replays of the same delivery target: the receiver can
        // drop repeats.
        let id = format!("{}-{}", self.destination, message.message_id);
        let request = self
            .client
            .post(&self.url)
            .header(CONTENT_TYPE, content_type)
            .header(self.id_header.clone(), id)
            .body(body);
        match request.send().await {
            Ok(response) => {
                let status = response.status();
                let response_location = response
                    .headers()
                    .get(LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .map(|v| v.chars().take(200).collect::<String>());
                let text = response
                    .text()
                    .await
                    .ok()
                    .map(|t| t.chars().take(200).collect::<String>());
                if status.is_success() {
                    Attempt::Delivered {
                        code: Some(status.as_u16().to_string()),
                        text,
                        ack: None,
                    }
                } else if self.permanent.contains(&status.as_u16()) {
                    Attempt::Permanent(format!("HTTP {status}").into())
                } else if status.is_redirection() {
                    Attempt::Retry(redirect_error(status, response_location))
                } else {
                    Attempt::Retry(format!("HTTP {status}").into())
                }
            }
            Err(e) => Attempt::Retry(format!("HTTP request failed: {e}").into()),
        }
    }
}

/// Why a redirect counts as a failed attempt, and what to do about it. The location is the
/// receiver's text (a signed URL may carry a token): stored with the attempt, not logged.
fn redirect_error(status: reqwest::StatusCode, location: Option<String>) -> Failure {
    Failure::said(
        format!(
            "HTTP {status}: redirects are not followed (the body would be dropped); point the destination's url at the new location"
        ),
        location.map(|to| format!("location {to}")),
    )
}

/// `application/hl7-v2` with the charset MSH-18 declares (UTF-8 when it declares none and
/// the bytes are UTF-8; no charset parameter when unknown).
fn er7_content_type(raw: &[u8]) -> String {
    let charset = Message::parse(raw)
        .ok()
        .and_then(|m| m.declared_charset().ok().flatten())
        .or_else(|| std::str::from_utf8(raw).is_ok().then_some(Charset::Utf8));
    match charset {
        Some(c) => format!("application/hl7-v2; charset={}", c.mime_name()),
        None => "application/hl7-v2".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::er7_content_type;

    #[test]
    fn content_types() {
        assert_eq!(
            er7_content_type(b"MSH|^~\\&|A||||||ADT^A01|1|P|2.5||||||8859/1\r"),
            "application/hl7-v2; charset=ISO-8859-1"
        );
        assert_eq!(
            er7_content_type(b"MSH|^~\\&|A\r"),
            "application/hl7-v2; charset=UTF-8"
        );
        assert_eq!(er7_content_type(b"MSH|^~\\&|\xe9\r"), "application/hl7-v2");
    }
}
