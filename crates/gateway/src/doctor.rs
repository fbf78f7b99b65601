//! `causeway doctor` for a configured destination: the checks run with the destination's own
//! address and TLS settings, from wherever the gateway runs (the pod is where the network
//! problem is).

use causeway_mllp::tls::ClientTlsSettings;

use crate::config::{Config, DestinationKind};

/// The address and TLS settings of MLLP destination `name`.
pub fn target(config: &Config, name: &str) -> Result<(String, Option<ClientTlsSettings>), String> {
    let dest = config
        .channels
        .iter()
        .flat_map(|c| c.destinations.iter())
        .find(|d| d.name == name)
        .ok_or_else(|| {
            let known: Vec<&str> = config
                .channels
                .iter()
                .flat_map(|c| c.destinations.iter().map(|d| d.name.as_str()))
                .collect();
            format!(
                "no destination named {name:?} (configured: {})",
                known.join(", ")
            )
        })?;
    let DestinationKind::Mllp(mllp) = &dest.kind else {
        return Err(format!(
            "destination {name:?} is not an MLLP destination; doctor checks MLLP receivers"
        ));
    };
    let tls = match &mllp.tls {
        None => None,
        Some(t) => {
            let mut s = ClientTlsSettings::default();
            s.ca_path = t.ca.clone();
            s.pin = t
                .pin
                .as_deref()
                .map(str::parse)
                .transpose()
                .map_err(|e| format!("tls.pin: {e}"))?;
            s.client_cert_path = t.cert.clone();
            s.client_key_path = t.key.clone();
            s.server_name = t.server_name.clone();
            Some(s)
        }
    };
    Ok((mllp.to.clone(), tls))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_mllp_destinations_only() {
        let config = Config::parse(include_str!("../../../causeway.example.toml")).unwrap();
        let (to, tls) = target(&config, "lab").unwrap();
        assert_eq!(to, "127.0.0.1:2576");
        assert!(tls.is_none());
        assert!(
            target(&config, "cloud")
                .unwrap_err()
                .contains("not an MLLP")
        );
        assert!(target(&config, "nope").unwrap_err().contains("lab"));
    }
}
