//! `causeway serve` and `causeway config check`.

use std::path::PathBuf;
use std::process::ExitCode;

use causeway_gateway::{Config, Gateway};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The configuration file (TOML). Without it: one channel on 127.0.0.1:2575, stored in
    /// ./causeway-data, delivered to files in ./causeway-data/outbox, admin API on
    /// 127.0.0.1:8080. See causeway.example.toml for every setting.
    #[arg(long, short, value_name = "FILE", env = "CAUSEWAY_CONFIG")]
    config: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// The configuration file to check.
    file: PathBuf,
}

/// Exit code for configuration errors (EX_CONFIG from sysexits.h).
const EX_CONFIG: u8 = 78;

pub fn load(path: Option<&PathBuf>) -> Result<Config, ExitCode> {
    let loaded = match path {
        Some(path) => Config::load(path).map_err(|e| (path.display().to_string(), e)),
        None => Ok(Config::embedded_default()),
    };
    loaded.map_err(|(path, e)| {
        eprintln!("causeway: {path}: {e}");
        ExitCode::from(EX_CONFIG)
    })
}

pub fn check(args: &CheckArgs) -> ExitCode {
    match load(Some(&args.file)) {
        Ok(config) => {
            // What `serve` reads besides the file: TLS certificates, keys and CA bundles,
            // secrets from the environment. Nothing is bound and nothing is dialled.
            if let Err(e) = causeway_gateway::gateway::preflight(&config) {
                eprintln!("causeway: {}: {e}", args.file.display());
                return ExitCode::from(EX_CONFIG);
            }
            let destinations: usize = config.channels.iter().map(|c| c.destinations.len()).sum();
            println!(
                "{}: OK ({} channel{}, {} destination{})",
                args.file.display(),
                config.channels.len(),
                if config.channels.len() == 1 { "" } else { "s" },
                destinations,
                if destinations == 1 { "" } else { "s" }
            );
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

pub async fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let config = match load(args.config.as_ref()) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let data = match (&config.store.postgres, &config.store.schema) {
        (Some(_), Some(schema)) => format!("PostgreSQL (schema {schema})"),
        (Some(_), None) => "PostgreSQL".to_owned(),
        (None, _) => config.store.path.display().to_string(),
    };
    let (gateway, running) = match Gateway::start(config).await {
        Ok(started) => started,
        Err(e) => {
            eprintln!("causeway: cannot start: {e}");
            return Ok(ExitCode::from(EX_CONFIG));
        }
    };
    for (channel, addr) in &gateway.listening {
        let dests: Vec<String> = gateway
            .config
            .channels
            .iter()
            .filter(|c| &c.name == channel)
            .flat_map(|c| c.destinations.iter().map(|d| d.name.clone()))
            .collect();
        eprintln!(
            "causeway: channel {channel}: MLLP on {addr} -> {}",
            dests.join(", ")
        );
    }
    if let Some(addr) = gateway.link_listening {
        eprintln!("causeway: link hub on {addr}");
    }
    if let Some(link) = gateway.config.link.as_ref().and_then(|l| l.hub.as_ref()) {
        eprintln!("causeway: link edge, dialing {link}");
    }
    eprintln!("causeway: data in {data}; node {}", gateway.node_id);
    if let Some(addr) = gateway.admin_addr() {
        eprintln!("causeway: admin API on http://{addr} (/healthz /readyz /metrics /api)");
    }
    // One listener for both signals, from before "ready" to the exit: a second signal is
    // seen however soon it follows the first.
    let mut signals = super::listen::StopSignals::new();
    eprintln!("causeway: ready; stop with Ctrl-C or SIGTERM");
    signals.next().await;
    eprintln!(
        "causeway: stopping within {:?}: finishing messages in hand (a second signal exits at once)",
        gateway.config.shutdown.grace.0
    );
    tokio::spawn(async move {
        signals.next().await;
        // Nothing acknowledged is lost: an ACK goes out only after its message is synced.
        // Attempts in hand are made again after the restart (at least once).
        eprintln!(
            "causeway: second signal: exiting now; attempts in hand are retried after restart"
        );
        // Exiting now is the point: returning would wait for the very work being cut short.
        #[allow(clippy::disallowed_methods)]
        std::process::exit(1);
    });
    running.stop(&gateway).await;
    Ok(ExitCode::SUCCESS)
}
