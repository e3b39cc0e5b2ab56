//! One module per subcommand (except `sync`, which has its own module at the crate root).

pub mod call;
pub mod common;
pub mod completions;
pub mod deregister;
pub mod get;
pub mod health;
pub mod ls;
pub mod man;
pub mod register;
pub mod watch;
