//! Integration tests over real HTTP on loopback. Each test starts its own
//! server on a free port with its own data directory.

mod accounts;
mod actors;
mod auth;
mod backup;
mod concurrency;
mod config;
mod connections;
mod crash;
mod damage;
mod disk_faults;
mod durability;
mod effects;
mod errors;
#[cfg(feature = "etcd")]
mod etcd;
mod exactly_once;
mod gated;
mod group_commit;
mod helpers;
mod idempotency;
mod journal;
mod jwt;
mod ledger_load;
mod listing;
mod metrics;
mod migrate;
mod offline;
mod openapi;
mod otlp;
mod redis_faults;
mod redis_lease;
mod redis_server;
mod restart;
mod retries;
mod runtime;
mod store;
mod supervision;
mod tls;
mod tour;
mod trace_export;
mod transfers;
