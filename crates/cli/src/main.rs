//! `causeway`: the binary. Thin by design: it reads arguments, wires the libraries together
//! and maps outcomes to exit codes; behaviour lives in the library crates.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cmd;

/// mimalloc instead of glibc's allocator: the gateway allocates a message on a connection's
/// task and frees it on the store's writer thread, and glibc's per-thread arenas spent a
/// seventh of the async runtime's CPU on that traffic (see docs/BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Causeway: an HL7 v2 messaging gateway.
///
/// Receives and sends HL7 v2 over MLLP, stores every message before acknowledging it, and
/// forwards it in order. These subcommands are also the tools an integration engineer needs
/// at the keyboard: read a message, send files to an interface, listen like one.
#[derive(Debug, Parser)]
#[command(
    name = "causeway",
    version,
    about,
    long_about,
    propagate_version = true
)]
struct Cli {
    /// Log format on standard error. The level comes from RUST_LOG (default: info).
    /// Logs never hold segment contents: control ids, types, sizes and peers only.
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: cmd::common::LogFormat,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print HL7 v2 messages as a tree of paths and values, as JSON, or one value.
    ///
    /// Reads each FILE (or standard input when none is given, or for "-"). A file may hold
    /// one message, several back to back, or an FHS/BHS batch. Segments may end in CR, LF
    /// or CRLF. Values are shown unescaped and decoded from the message's charset (MSH-18)
    /// to UTF-8.
    ///
    /// Examples:
    ///   causeway parse adt.hl7
    ///   causeway parse --path PID-3.1 adt.hl7
    ///   causeway parse --json < oru.hl7
    /// Run the gateway: receive on every channel, store durably, acknowledge, deliver.
    ///
    /// Without --config it runs on embedded defaults: one channel on 127.0.0.1:2575, data in
    /// ./causeway-data (SQLite), delivered as files to ./causeway-data/outbox, admin API on
    /// 127.0.0.1:8080. SIGTERM or Ctrl-C stops accepting, finishes messages in hand and exits.
    ///
    /// Examples:
    ///   causeway serve
    ///   causeway serve --config causeway.toml --log-format json
    #[command(verbatim_doc_comment)]
    Serve(cmd::serve::Args),

    /// Configuration tools.
    #[command(subcommand)]
    Config(ConfigCommand),

    #[command(verbatim_doc_comment)]
    Parse(cmd::parse::Args),

    /// Send messages to an MLLP receiver, wait for each ACK and report it.
    ///
    /// Prints one line per message: source, control id (MSH-10), ACK code, latency and the
    /// receiver's error text, then a summary. An ACK whose MSA-2 does not match the sent
    /// MSH-10 is an error, never a success. Exit code 0 only when every message got AA or CA.
    ///
    /// Examples:
    ///   causeway send --to 127.0.0.1:2575 adt.hl7
    ///   causeway send --to lab.example.org:6661 --ca ca.pem --cert me.pem --key me.key outbox/
    #[command(verbatim_doc_comment)]
    Send(cmd::send::Args),

    /// Receive messages like an interface would: print a line per message, store them if
    /// asked, and answer each with a correct ACK.
    ///
    /// Binds 127.0.0.1:2575 unless told otherwise. Garbage and oversized frames get an AR
    /// with an ERR segment. Stops on Ctrl-C or SIGTERM after answering messages in hand;
    /// SIGHUP reloads the TLS certificate.
    ///
    /// Examples:
    ///   causeway listen
    ///   causeway listen --port 6661 --out inbox/ --ack AE --delay 2s
    ///   causeway listen --tls-cert srv.pem --tls-key srv.key --client-ca ca.pem --allow-client cn:ehr-1
    #[command(verbatim_doc_comment)]
    Listen(cmd::listen::Args),

    /// Check the path to an MLLP receiver step by step and say why messages do not get through.
    ///
    /// Checks DNS, the route (source address and interface), the TCP connection, what the
    /// port speaks (MLLP, TLS, HTTP), the TLS certificate, one round trip with a harmless
    /// test message (NMD^N02, processing id T, no patient data), a ladder of message sizes
    /// from 1 KB to 1 MB (MTU black holes), and latency. Stops at the first failure. Each
    /// check prints its evidence and a hint; --json gives stable codes such as tcp.refused,
    /// tls.expired or path.mtu_blackhole. Exit code 0 when all pass, 1 with warnings only,
    /// 2 when a check failed.
    ///
    /// Examples:
    ///   causeway doctor 10.0.4.12:2575
    ///   causeway doctor lab.example.org:6661 --ca ca.pem --cert me.pem --key me.key
    ///   causeway doctor lab.example.org:6661 --tls --json --timeout 2s
    #[command(verbatim_doc_comment)]
    Doctor(cmd::doctor::Args),

    /// Certificates for the edge/hub link: a private CA and the certificates it signs.
    ///
    /// Examples:
    ///   causeway certs init --dir pki
    ///   causeway certs issue --dir pki --hub hub.example.org
    ///   causeway certs issue --dir pki --edge stmarys
    #[command(subcommand, verbatim_doc_comment)]
    Certs(cmd::certs::Command),
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Check a configuration file and name the exact key that is wrong.
    Check(cmd::serve::CheckArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Parse(args) => cmd::parse::run(&args),
        Command::Config(ConfigCommand::Check(args)) => Ok(cmd::serve::check(&args)),
        Command::Certs(command) => cmd::certs::run(&command),
        Command::Serve(args) => runtime().and_then(|rt| {
            cmd::common::init_logging(cli.log_format, "info");
            rt.block_on(cmd::serve::run(&args))
        }),
        Command::Send(args) => runtime().and_then(|rt| {
            cmd::common::init_logging(cli.log_format, "warn");
            rt.block_on(cmd::send::run(&args))
        }),
        Command::Doctor(args) => runtime().and_then(|rt| {
            cmd::common::init_logging(cli.log_format, "warn");
            rt.block_on(cmd::doctor::run(&args))
        }),
        Command::Listen(args) => runtime().and_then(|rt| {
            cmd::common::init_logging(cli.log_format, "info");
            rt.block_on(cmd::listen::run(&args))
        }),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("causeway: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}
