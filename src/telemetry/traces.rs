//! OpenTelemetry traces exported over OTLP (gRPC by default, HTTP/protobuf
//! as an option), which Jaeger ingests natively.
//!
//! Export never slows a request: spans go to the SDK's batch processor,
//! whose queue is bounded (`telemetry.otlp.queue_size`); when it is full the
//! span is dropped. The counters in [`SpanCounters`] make drops visible:
//! spans ended minus spans exported or failed is what was dropped or is
//! still queued. Shutdown flushes what is queued.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::KeyValue;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider, SpanData, SpanExporter,
    SpanProcessor,
};
use opentelemetry_sdk::Resource;

use crate::settings::Settings;

/// Spans seen by the exporter pipeline, for `/metrics`.
#[derive(Debug, Default)]
pub struct SpanCounters {
    pub ended: AtomicU64,
    pub exported: AtomicU64,
    pub failed: AtomicU64,
}

/// The export pipeline while it runs.
pub struct Traces {
    pub provider: SdkTracerProvider,
    pub counters: Arc<SpanCounters>,
    /// Runs the gRPC client's connection; kept alive with the provider.
    _runtime: tokio::runtime::Runtime,
}

impl Traces {
    /// Flushes queued spans and stops the exporter.
    pub fn shutdown(self) {
        if let Err(e) = self.provider.shutdown() {
            eprintln!("flushing traces failed: {e}");
        }
    }
}

/// The OTLP endpoint from settings, else from the standard variables.
pub fn endpoint(settings: &Settings) -> Option<String> {
    let configured = settings.telemetry.otlp.endpoint.trim();
    if !configured.is_empty() {
        return Some(configured.to_owned());
    }
    [
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ]
    .into_iter()
    .find_map(|var| std::env::var(var).ok().filter(|v| !v.trim().is_empty()))
}

/// Builds the tracer provider when an endpoint is configured.
///
/// # Errors
/// When the exporter cannot be built (a malformed endpoint).
pub fn init(settings: &Settings) -> anyhow::Result<Option<Traces>> {
    let Some(endpoint) = endpoint(settings) else {
        return Ok(None);
    };
    let otlp = &settings.telemetry.otlp;
    let protocol = match otlp.protocol.as_str() {
        "" => std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL").unwrap_or_else(|_| "grpc".into()),
        p => p.to_owned(),
    };
    let timeout = Duration::from_millis(otlp.export_timeout_ms);
    // The tonic client needs a Tokio runtime for its connection; this one is
    // small and separate from the actix workers.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("troupe-otlp")
        .enable_all()
        .build()
        .context("starting the OTLP export runtime")?;
    let exporter = runtime.block_on(async {
        match protocol.as_str() {
            "http/protobuf" => opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(Protocol::HttpBinary)
                .with_endpoint(http_traces_url(&endpoint))
                .with_timeout(timeout)
                .build(),
            _ => opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint.clone())
                .with_timeout(timeout)
                .build(),
        }
    });
    let exporter =
        exporter.with_context(|| format!("building the OTLP exporter for {endpoint}"))?;
    let counters = Arc::new(SpanCounters::default());
    let batch = BatchSpanProcessor::builder(CountingExporter {
        inner: exporter,
        counters: counters.clone(),
    })
    .with_batch_config(
        BatchConfigBuilder::default()
            .with_max_queue_size(otlp.queue_size.max(1))
            .build(),
    )
    .build();
    let resource = Resource::builder()
        .with_service_name(settings.telemetry.service_name.clone())
        .with_attributes([
            KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
            KeyValue::new("deployment.environment", settings.environment.clone()),
        ])
        .build();
    let mut builder = SdkTracerProvider::builder()
        .with_span_processor(CountingProcessor {
            inner: batch,
            counters: counters.clone(),
        })
        .with_resource(resource);
    // OTEL_TRACES_SAMPLER, when set, is read by the SDK itself.
    if std::env::var_os("OTEL_TRACES_SAMPLER").is_none() {
        set_sampling_ratio(otlp.sampling_ratio);
        builder = builder.with_sampler(Sampler::ParentBased(Box::new(LiveRatio)));
    }
    let provider = builder.build();
    tracing::info!(%endpoint, %protocol, "exporting traces over OTLP");
    Ok(Some(Traces {
        provider,
        counters,
        _runtime: runtime,
    }))
}

/// OTLP/HTTP takes the signal's path on the base endpoint.
fn http_traces_url(endpoint: &str) -> String {
    if endpoint.ends_with("/v1/traces") {
        endpoint.to_owned()
    } else {
        format!("{}/v1/traces", endpoint.trim_end_matches('/'))
    }
}

/// Returns the tracer the tracing layer uses.
pub fn tracer(traces: &Traces) -> opentelemetry_sdk::trace::Tracer {
    traces.provider.tracer("troupe")
}

#[derive(Debug)]
struct CountingExporter<E> {
    inner: E,
    counters: Arc<SpanCounters>,
}

impl<E: SpanExporter> SpanExporter for CountingExporter<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let n = batch.len() as u64;
        let result = self.inner.export(batch).await;
        let counter = if result.is_ok() {
            &self.counters.exported
        } else {
            &self.counters.failed
        };
        counter.fetch_add(n, Ordering::Relaxed);
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

#[derive(Debug)]
struct CountingProcessor<P> {
    inner: P,
    counters: Arc<SpanCounters>,
}

impl<P: SpanProcessor> SpanProcessor for CountingProcessor<P> {
    fn on_start(&self, span: &mut opentelemetry_sdk::trace::Span, cx: &opentelemetry::Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        self.counters.ended.fetch_add(1, Ordering::Relaxed);
        self.inner.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// The ratio of new traces sampled, as `f64` bits; changed by a reload.
static SAMPLING_RATIO: AtomicU64 = AtomicU64::new(0x3FF0_0000_0000_0000); // 1.0

/// Changes the sampling ratio of new traces while running.
pub fn set_sampling_ratio(ratio: f64) {
    SAMPLING_RATIO.store(ratio.clamp(0.0, 1.0).to_bits(), Ordering::Relaxed);
}

/// Trace-id ratio sampling whose ratio can change at run time.
#[derive(Debug, Clone)]
struct LiveRatio;

impl opentelemetry_sdk::trace::ShouldSample for LiveRatio {
    fn should_sample(
        &self,
        parent_context: Option<&opentelemetry::Context>,
        trace_id: opentelemetry::trace::TraceId,
        name: &str,
        span_kind: &opentelemetry::trace::SpanKind,
        attributes: &[KeyValue],
        links: &[opentelemetry::trace::Link],
    ) -> opentelemetry_sdk::trace::SamplingResult {
        let ratio = f64::from_bits(SAMPLING_RATIO.load(Ordering::Relaxed));
        Sampler::TraceIdRatioBased(ratio).should_sample(
            parent_context,
            trace_id,
            name,
            span_kind,
            attributes,
            links,
        )
    }
}
