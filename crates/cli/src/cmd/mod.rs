//! One module per subcommand, each with its `Args` and a `run`.

pub mod certs;
pub mod common;
pub mod doctor;
pub mod listen;
pub mod parse;
pub mod send;
pub mod serve;
