//! MLLP destination: send, wait for the ACK, check that MSA-2 is our MSH-10.

use causeway_mllp::client::{AckStatus, Client, ClientError, ClientSettings};
use causeway_mllp::tls::{ClientTls, ClientTlsSettings};

use super::{Attempt, Failure, Outgoing};
use crate::config::MllpDestination;

/// Sends to one MLLP receiver over a kept-open connection.
#[derive(Debug)]
pub struct MllpSender {
    client: Client,
    retry_on_ae: bool,
}

impl MllpSender {
    /// From the destination's configuration; TLS files are read here.
    pub fn new(config: &MllpDestination) -> Result<MllpSender, String> {
        let mut settings = ClientSettings::default();
        settings.ack_timeout = config.ack_timeout.0;
        settings.connect_timeout = config.connect_timeout.0;
        settings.write_timeout = config.write_timeout.0;
        settings.tcp_keepalive = crate::config::keepalive(config.tcp_keepalive);
        settings.accept_commit_ack = config.accept_commit_ack;
        // The worker retries with its own backoff; one connection attempt per send.
        settings.connect_attempts = 1;
        settings.framing = config.framing.apply(settings.framing.clone());
        if let Some(tls) = &config.tls {
            let mut t = ClientTlsSettings::default();
            t.ca_path = tls.ca.clone();
            t.pin = tls
                .pin
                .as_deref()
                .map(str::parse)
                .transpose()
                .map_err(|e| format!("tls.pin: {e}"))?;
            t.client_cert_path = tls.cert.clone();
            t.client_key_path = tls.key.clone();
            t.client_key_password = tls
                .key_password
                .as_ref()
                .map(|pw| pw.resolve("tls.key_password"))
                .transpose()
                .map_err(|e| e.to_string())?
                .map(causeway_mllp::tls::KeyPassword::new);
            t.server_name = tls.server_name.clone();
            t.min_version = tls.min_version.min();
            settings.tls = Some(ClientTls::load(&t).map_err(|e| format!("TLS: {e}"))?);
        }
        Ok(MllpSender {
            client: Client::new(config.to.clone(), settings),
            retry_on_ae: config.retry_on_ae,
        })
    }

    /// After a send was abandoned half-way (its future dropped): the next one starts on a
    /// fresh connection.
    pub fn abandon(&mut self) {
        self.client.disconnect();
    }

    /// One attempt.
    pub async fn send(&mut self, message: &Outgoing) -> Attempt {
        match self.client.send(&message.raw).await {
            Ok(delivery) => {
                let reply = delivery.reply.as_ref();
                let code = reply.map(|r| r.code.to_string());
                let text = reply.and_then(|r| {
                    r.error
                        .as_ref()
                        .map(|e| format!("{} {}", e.code, e.text))
                        .or_else(|| r.text.clone())
                });
                let refused = || {
                    // The code is ours to log; the text is the receiver's (see `Failure`).
                    Failure::said(
                        format!("{} from the receiver", code.as_deref().unwrap_or("no code")),
                        text.clone(),
                    )
                };
                match delivery.status {
                    AckStatus::Accepted | AckStatus::NotRequested => Attempt::Delivered {
                        code,
                        text,
                        ack: delivery.raw.clone(),
                    },
                    AckStatus::Error if self.retry_on_ae => Attempt::Retry(refused()),
                    _ => Attempt::Permanent(refused()),
                }
            }
            // The message itself cannot be sent as it is: retrying will not change that.
            Err(
                e @ (ClientError::InvalidMessage(_)
                | ClientError::MissingControlId
                | ClientError::Encode(_)),
            ) => Attempt::Permanent(e.to_string().into()),
            Err(e) => Attempt::Retry(e.to_string().into()),
        }
    }
}
