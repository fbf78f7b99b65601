//! `causeway`: the binary. Thin by design: it reads arguments, wires the libraries together
//! and maps outcomes to exit codes; behaviour lives in the library crates.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cmd;

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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Parse(args) => cmd::parse::run(&args),
        Command::Send(args) => runtime().and_then(|rt| {
            cmd::common::init_logging(cli.log_format, "warn");
            rt.block_on(cmd::send::run(&args))
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
