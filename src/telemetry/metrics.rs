//! The Prometheus registry served at `/metrics`, the metrics actor that
//! folds the runtime's reports into it, and the store's instrumentation.

use std::collections::HashMap;
use std::sync::Arc;

use actix::prelude::*;
use prometheus::{
    exponential_buckets, Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter,
    IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use super::SpanCounters;
use crate::runtime::{Runtime, RuntimeReport};
use crate::store::{InstrumentedStore, Store};

/// Every metric troupe exports, registered in one registry. Process
/// metrics (CPU, resident memory, file descriptors, threads) come from the
/// prometheus crate's process collector.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    pub http_requests: IntCounterVec,
    pub http_duration: HistogramVec,
    pub http_in_flight: IntGauge,
    activations: IntCounterVec,
    passivations: IntCounterVec,
    restarts: IntCounterVec,
    failures: IntCounterVec,
    deadline_drops: IntCounterVec,
    abandoned_drops: IntCounterVec,
    messages: IntCounterVec,
    live: IntGaugeVec,
    mailbox_depth: IntGauge,
    batch_size: Histogram,
    store_duration: HistogramVec,
    store_errors: IntCounterVec,
    reports_dropped: IntCounter,
    store_memory: IntGaugeVec,
    spans: IntCounterVec,
    /// Configuration reloads by result: applied or rejected.
    pub config_reloads: IntCounterVec,
    /// Requests refused by authentication or authorisation.
    pub auth_denied: IntCounterVec,
    /// API keys in force, and reloads of the keys file by result.
    pub auth_keys: IntGauge,
    pub auth_reloads: IntCounterVec,
    /// Reloads of the TLS certificate by result, and when it expires.
    pub tls_reloads: IntCounterVec,
    pub tls_expiry: IntGauge,
    redis_settings: IntGaugeVec,
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    registry
        .register(Box::new(c.clone()))
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    c
}

fn histogram(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: Vec<f64>,
) -> HistogramVec {
    let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    registry
        .register(Box::new(h.clone()))
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    h
}

fn gauge(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    registry
        .register(Box::new(g.clone()))
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    g
}

impl Metrics {
    /// Registers every metric. Names and labels are constants, so a failure
    /// here is a programming error caught by any test.
    pub fn new() -> Self {
        let r = Registry::new();
        #[cfg(target_os = "linux")]
        if let Err(e) = r.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        )) {
            tracing::warn!(error.message = %e, "process metrics unavailable");
        }
        let latency = exponential_buckets(0.0001, 2.0, 16).unwrap_or_default();
        Self {
            http_requests: counter(&r, "troupe_http_requests_total", "HTTP requests by route template, method and status.", &["route", "method", "status"]),
            http_duration: histogram(&r, "troupe_http_request_duration_seconds", "HTTP request latency by route template.", &["route"], latency.clone()),
            http_in_flight: gauge(&r, "troupe_http_requests_in_flight", "HTTP requests being served.", &[]).with_label_values::<&str>(&[]),
            activations: counter(&r, "troupe_actor_activations_total", "Actors activated.", &["kind"]),
            passivations: counter(&r, "troupe_actor_passivations_total", "Idle actors passivated.", &["kind"]),
            restarts: counter(&r, "troupe_actor_restarts_total", "Actors restarted from durable state after a panic.", &["kind"]),
            failures: counter(&r, "troupe_actor_failures_total", "Actors that passed the restart intensity and gave up for a window.", &["kind"]),
            deadline_drops: counter(&r, "troupe_actor_deadline_drops_total", "Messages dropped unprocessed because their deadline passed in the mailbox.", &["kind"]),
            abandoned_drops: counter(&r, "troupe_actor_abandoned_drops_total", "Messages dropped unprocessed because their caller was gone (the HTTP client disconnected) before they were handled.", &["kind"]),
            messages: counter(&r, "troupe_actor_messages_total", "Messages handled by kind, message and outcome (ok or the error code).", &["kind", "message", "outcome"]),
            live: gauge(&r, "troupe_actors_live", "Live activations by kind.", &["kind"]),
            mailbox_depth: gauge(&r, "troupe_actor_mailbox_depth", "Messages routed to actors and not yet answered.", &[]).with_label_values::<&str>(&[]),
            batch_size: histogram(&r, "troupe_group_commit_messages", "Messages answered by one actor commit (first level of group commit).", &[], exponential_buckets(1.0, 2.0, 11).unwrap_or_default()).with_label_values::<&str>(&[]),
            store_duration: histogram(&r, "troupe_store_operation_duration_seconds", "Store operation latency by backend and operation.", &["backend", "op"], latency),
            store_errors: counter(&r, "troupe_store_errors_total", "Store operations that failed, by backend, operation and kind of error.", &["backend", "op", "error"]),
            store_memory: gauge(&r, "troupe_store_memory_bytes", "Memory the store holds in this process, by part (embedded store: block_cache, memtables).", &["part"]),
            reports_dropped: counter(&r, "troupe_metrics_reports_dropped_total", "Runtime reports dropped because the metrics actor's mailbox was full.", &[]).with_label_values::<&str>(&[]),
            spans: counter(&r, "troupe_trace_spans_total", "Spans by export stage: ended, exported, failed (ended - exported - failed = dropped or queued).", &["stage"]),
            config_reloads: counter(&r, "troupe_config_reloads_total", "Configuration reloads by result (applied, rejected).", &["result"]),
            auth_keys: gauge(&r, "troupe_auth_keys", "API keys in force (auth.keys_file).", &[]).with_label_values::<&str>(&[]),
            auth_reloads: counter(&r, "troupe_auth_key_reloads_total", "Reloads of the keys file by result: applied, rejected (the keys in force stay), gone (every key revoked); of the JWT public key: jwt_applied, jwt_rejected.", &["result"]),
            tls_expiry: gauge(&r, "troupe_tls_certificate_expiry_timestamp_seconds", "When the TLS certificate in force expires (Unix seconds); absent without TLS.", &[]).with_label_values::<&str>(&[]),
            tls_reloads: counter(&r, "troupe_tls_reloads_total", "Reloads of the TLS certificate and key by result: applied, rejected (the pair in force stays).", &["result"]),
            auth_denied: counter(&r, "troupe_auth_denied_total", "Requests refused by key name (none when no key matched) and reason (missing, malformed, unknown_key, jwt_expired, jwt_not_yet_valid, jwt_issuer, jwt_audience, jwt_signature, jwt_invalid, scope, ids); jwt for an identity provider's token.", &["key", "reason"]),
            redis_settings: gauge(&r, "troupe_redis_settings_info", "1, labelled with the Redis settings read at start that decide what survives of an acknowledged write (maxmemory_policy, appendonly, appendfsync, save); absent on the embedded store or where CONFIG GET is refused.", &["maxmemory_policy", "appendonly", "appendfsync", "save"]),
            registry: r,
        }
        .with_build_info()
    }

    /// `troupe_build_info{version, commit} 1`: which build runs.
    fn with_build_info(self) -> Self {
        gauge(
            &self.registry,
            "troupe_build_info",
            "1, labelled with the running build's version and commit.",
            &["version", "commit"],
        )
        .with_label_values(&[crate::VERSION, crate::COMMIT])
        .set(1);
        self
    }

    /// Exports the Redis settings read at start.
    pub fn redis_settings(&self, server: &crate::store::ServerSettings) {
        self.redis_settings
            .with_label_values(&[
                server.maxmemory_policy.as_str(),
                &server.appendonly,
                &server.appendfsync,
                &server.save,
            ])
            .set(1);
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The text exposition, after bringing externally kept counters up to date.
    pub fn render(&self, runtime: &Runtime, spans: Option<&SpanCounters>) -> String {
        catch_up(&self.reports_dropped, runtime.dropped_reports());
        for (part, bytes) in runtime.store().memory() {
            self.store_memory
                .with_label_values(&[part])
                .set(i64::try_from(bytes).unwrap_or(i64::MAX));
        }
        if let Some(spans) = spans {
            use std::sync::atomic::Ordering::Relaxed;
            for (stage, n) in [
                ("ended", &spans.ended),
                ("exported", &spans.exported),
                ("failed", &spans.failed),
            ] {
                catch_up(&self.spans.with_label_values(&[stage]), n.load(Relaxed));
            }
        }
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::error!(error.message = %e, "encoding metrics failed");
        }
        String::from_utf8(buf).unwrap_or_default()
    }

    /// Wraps a store so every operation is timed and every error counted.
    pub fn instrument(&self, store: Arc<dyn Store>) -> Arc<dyn Store> {
        Arc::new(InstrumentedStore::new(
            store,
            self.store_duration.clone(),
            self.store_errors.clone(),
        ))
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn catch_up(counter: &IntCounter, value: u64) {
    let current = counter.get();
    if value > current {
        counter.inc_by(value - current);
    }
}

/// Folds the shards' reports into the registry. Shards send with
/// `try_send` and never wait on it; gauges are kept per shard and summed.
pub struct MetricsActor {
    metrics: Metrics,
    live: HashMap<usize, Vec<(&'static str, u64)>>,
    depth: HashMap<usize, u64>,
}

impl MetricsActor {
    pub fn new(metrics: Metrics) -> Self {
        Self {
            metrics,
            live: HashMap::new(),
            depth: HashMap::new(),
        }
    }
}

impl Actor for MetricsActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(256);
    }
}

impl Handler<RuntimeReport> for MetricsActor {
    type Result = ();

    fn handle(&mut self, report: RuntimeReport, _: &mut Context<Self>) {
        let m = &self.metrics;
        for (counters, values) in [
            (&m.activations, &report.activations),
            (&m.passivations, &report.passivations),
            (&m.restarts, &report.restarts),
            (&m.failures, &report.failures),
            (&m.deadline_drops, &report.deadline_drops),
            (&m.abandoned_drops, &report.abandoned_drops),
        ] {
            for (kind, n) in values {
                counters.with_label_values(&[*kind]).inc_by(*n);
            }
        }
        for ((kind, message, outcome), n) in &report.messages {
            m.messages
                .with_label_values(&[*kind, *message, *outcome])
                .inc_by(*n);
        }
        for size in &report.batch_sizes {
            m.batch_size.observe(f64::from(*size));
        }
        self.live.insert(report.shard, report.live);
        self.depth.insert(report.shard, report.mailbox_depth);
        let mut totals: HashMap<&'static str, u64> = HashMap::new();
        for (kind, n) in self.live.values().flatten() {
            *totals.entry(kind).or_default() += n;
        }
        for (kind, n) in totals {
            m.live
                .with_label_values(&[kind])
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        m.mailbox_depth
            .set(i64::try_from(self.depth.values().sum::<u64>()).unwrap_or(i64::MAX));
    }
}
