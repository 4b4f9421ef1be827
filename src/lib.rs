//! troupe: an actor-based message-passing service whose flagship business is
//! a ledger. See docs/ (the book) for the architecture.
#![forbid(unsafe_code)]

pub mod auth;
pub mod background;
pub mod client;
pub mod cluster;
pub mod http;
pub mod reload;
pub mod remote;
pub mod runtime;
pub mod settings;
pub mod sim;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod upgrade;
pub mod watch;

/// The version of this build (Cargo.toml's).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The git commit it was built from (`build.rs`), or `unknown`.
pub const COMMIT: &str = env!("TROUPE_COMMIT");
