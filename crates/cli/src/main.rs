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
    Parse(cmd::parse::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Parse(args) => cmd::parse::run(&args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("causeway: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
