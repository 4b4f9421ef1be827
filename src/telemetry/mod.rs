//! Logs, traces and metrics.

pub mod http_metrics;
mod logging;
mod metrics;
mod traces;

pub use logging::{init, init_logging, span_counters, FilterError, FilterSetter, Telemetry};
pub use metrics::{Metrics, MetricsActor};
pub use traces::{set_sampling_ratio, SpanCounters};
