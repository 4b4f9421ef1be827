//! The tracing subscriber: logs (human-readable in development, JSON lines
//! in production) and, when an OTLP endpoint is configured, spans to
//! OpenTelemetry.
//!
//! Each output has its own filter. Logs use the configured directive
//! (`log.filter`, `RUST_LOG` wins), which can be replaced while running.
//! Spans go to OpenTelemetry at `debug` for troupe (the runtime's
//! `actor.handle` and `store.commit` spans) whatever the log filter says;
//! when export is off those debug spans are disabled at their call sites
//! and cost next to nothing. JSON lines list the spans they were emitted
//! in, so a line inside a request carries the root span's `request_id`,
//! `trace_id` and `span_id`.

use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, reload, EnvFilter, Layer};

use super::traces::{self, SpanCounters, Traces};
use crate::settings::{LogFormat, LogSettings, Settings};

static SPAN_COUNTERS: std::sync::OnceLock<std::sync::Arc<SpanCounters>> =
    std::sync::OnceLock::new();

/// The export pipeline's counters, when trace export is on in this process.
pub fn span_counters() -> Option<&'static SpanCounters> {
    SPAN_COUNTERS.get().map(|c| &**c)
}

/// Replaces the log filter directive while running.
pub type FilterSetter = std::sync::Arc<dyn Fn(&str) -> Result<(), FilterError> + Send + Sync>;

/// Why a log filter was not applied; the one in force stays.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    #[error("log filter: {0}")]
    Parse(#[from] tracing_subscriber::filter::ParseError),
    #[error("log filter not applied: {0}")]
    Reload(#[from] tracing_subscriber::reload::Error),
}

/// The installed subscriber's handles: flush traces on the way out,
/// change the log filter while running.
pub struct Telemetry {
    traces: Option<Traces>,
    set_filter: FilterSetter,
}

impl Telemetry {
    /// Replaces the log filter directive (e.g. `info,troupe=debug`).
    ///
    /// # Errors
    /// When the directive does not parse; the old filter stays.
    pub fn set_log_filter(&self, directive: &str) -> Result<(), FilterError> {
        (self.set_filter)(directive)
    }

    /// A handle on the log filter for the configuration reloader.
    pub fn log_filter_handle(&self) -> FilterSetter {
        self.set_filter.clone()
    }

    /// Flushes queued spans.
    pub fn shutdown(self) {
        if let Some(traces) = self.traces {
            traces.shutdown();
        }
    }
}

fn env_filter(directive: &str) -> EnvFilter {
    EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(directive))
        .unwrap_or_else(|_| EnvFilter::new("info"))
}

/// Log lines: JSON lists the spans a line was written in (so the request's
/// ids appear), pretty is for people.
fn log_layer(format: LogFormat) -> Box<dyn Layer<tracing_subscriber::Registry> + Send + Sync> {
    match format {
        LogFormat::Json => fmt::layer()
            .json()
            .with_current_span(false)
            .with_span_list(true)
            .boxed(),
        LogFormat::Pretty => fmt::layer().boxed(),
    }
}

/// Installs logging and, when configured, trace export.
///
/// # Errors
/// When the OTLP exporter cannot be built.
pub fn init(settings: &Settings) -> anyhow::Result<Telemetry> {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let traces = traces::init(settings)?;
    if let Some(t) = &traces {
        let _ = SPAN_COUNTERS.set(t.counters.clone());
    }
    let (filter, handle) = reload::Layer::new(env_filter(&settings.log.filter));
    let set_filter: FilterSetter = std::sync::Arc::new(move |directive| {
        let parsed = EnvFilter::try_new(directive)?;
        Ok(handle.reload(parsed)?)
    });
    let logs = log_layer(settings.log.format);
    let otel = traces.as_ref().map(|t| {
        let spans = Targets::new()
            .with_target("troupe", tracing::Level::DEBUG)
            .with_default(tracing::Level::INFO);
        tracing_opentelemetry::layer()
            .with_tracer(traces::tracer(t))
            .with_tracked_inactivity(false)
            .with_threads(false)
            .with_filter(spans)
    });
    let _ = tracing_subscriber::registry()
        .with(logs.with_filter(filter))
        .with(otel)
        .try_init();
    Ok(Telemetry { traces, set_filter })
}

/// Logging alone, for tests and tools.
pub fn init_logging(settings: &LogSettings) {
    let logs = log_layer(settings.format);
    let _ = tracing_subscriber::registry()
        .with(logs.with_filter(env_filter(&settings.filter)))
        .try_init();
}
