//! One module per subcommand, each with its `Args` and a `run`.

pub mod parse;
