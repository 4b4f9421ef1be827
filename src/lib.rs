pub mod runtime;
pub mod store;
