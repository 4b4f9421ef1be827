//! The composition root: the only place that names a concrete store.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use actix::Actor as _;
use actix_web::dev::Server;
use actix_web::{middleware, web, App, HttpServer};
use anyhow::Context as _;
use arc_swap::ArcSwap;

use crate::auth::{Auth, Jwt, KeyRing};
use crate::background::Background;
use crate::http::{self, context, HttpLimits};
use crate::reload::Reloader;
use crate::runtime::Runtime;
use crate::settings::{Settings, Sources, StoreBackend};
use crate::store::{EmbeddedStore, RedisStore, ServerSettings, Store};
use crate::telemetry::{http_metrics, FilterSetter, Metrics, MetricsActor};
use tracing_actix_web::TracingLogger;

pub struct Application {
    port: u16,
    /// The operations listener's port (`server.ops_bind`).
    ops_port: Option<u16>,
    server: Server,
    runtime: Runtime,
    settings: Settings,
    background: Background,
    /// Keeps the config directory watched while the server runs.
    _watcher: Option<notify::RecommendedWatcher>,
    /// Keep the keys file, the JWT key and the TLS files watched.
    _watchers: Vec<notify::RecommendedWatcher>,
}

/// Wraps the store the application opened (a test's fault injector).
pub type StoreLayer = Box<dyn FnOnce(Arc<dyn Store>) -> Arc<dyn Store> + Send>;

/// What the binary hands the application for live reload.
#[derive(Default)]
pub struct Controls {
    /// Wraps the store before anything uses it.
    pub store_layer: Option<StoreLayer>,
    /// The layers to re-read on a change; `None` turns reload off.
    pub sources: Option<Sources>,
    /// The installed subscriber's log filter.
    pub log_filter: Option<FilterSetter>,
}

impl Application {
    /// Opens the store, starts the runtime, binds the listener and resumes
    /// unfinished transfers. Port 0 picks a free port ([`Self::port`]).
    ///
    /// # Errors
    /// When the store cannot be opened or the address cannot be bound.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        Self::build_with(settings, Controls::default()).await
    }

    /// As [`Application::build`], with live reload from `controls.sources`:
    /// the config directory is watched, and etcd when configured.
    ///
    /// # Errors
    /// When the store cannot be opened or the address cannot be bound.
    pub async fn build_with(settings: Settings, mut controls: Controls) -> anyhow::Result<Self> {
        let credentials = Credentials::load(&settings)?;
        let certificates = load_certificates(&settings)?;
        let metrics = Metrics::new();
        let background = Background::new();
        let (store, lease) = open_store(&settings, &metrics, controls.store_layer.take()).await?;
        let (auth, mut watchers) = start_auth(&settings, credentials, &metrics, &background);
        let runtime = start_runtime(&settings, store, &metrics, &background);
        let listeners = Listeners::bind(&settings)?;
        let tls = match &certificates {
            Some(certificates) => {
                watchers.extend(watch_certificates(certificates, &metrics, &background));
                Some(certificates.server_config()?)
            }
            None => None,
        };
        let current = Arc::new(ArcSwap::from_pointee(settings.clone()));
        let data = AppData {
            runtime: web::Data::new(runtime.clone()),
            metrics: web::Data::new(metrics.clone()),
            limits: web::Data::new(HttpLimits {
                max_body_bytes: settings.server.max_body_bytes,
                retry_after_s: settings.server.retry_after_s,
            }),
            settings: web::Data::from(current.clone()),
            auth: web::Data::from(auth),
            ops: web::Data::new(http::ops::OpsAddress(listeners.ops_address()?)),
        };
        let (port, ops_port) = (listeners.port()?, listeners.ops_port()?);
        let server = serve(&settings, data, listeners, tls)?;
        // Renewed only once nothing can fail start-up any more: a failed
        // start leaves no task renewing a lease nobody serves.
        if let Some((redis, now)) = lease {
            redis.keep_lease(&background, now);
        }
        spawn_resume(&background, runtime.clone());
        spawn_reindex(&background, runtime.store().clone());
        let watcher = controls.sources.and_then(|sources| {
            watch_settings(
                &settings,
                sources,
                current,
                &runtime,
                controls.log_filter,
                &metrics,
                &background,
            )
        });
        Ok(Self {
            port,
            ops_port,
            server,
            runtime,
            settings,
            background,
            _watcher: watcher,
            _watchers: watchers,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn ops_port(&self) -> Option<u16> {
        self.ops_port
    }

    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// The background tasks, for tests that check shutdown stops them.
    pub fn background(&self) -> &Background {
        &self.background
    }

    /// Stops the server as a signal would (graceful when `graceful`).
    pub fn server_handle(&self) -> actix_web::dev::ServerHandle {
        self.server.handle()
    }

    /// Serves until SIGTERM or SIGINT, then drains: `/readyz` turns 503 for
    /// `drain_delay_ms`, the listener closes, in-flight requests finish
    /// within the grace period, every background task is cancelled and
    /// awaited, and the store flushes what is queued.
    ///
    /// # Errors
    /// When the server fails.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let Self {
            server,
            runtime,
            settings,
            background,
            ..
        } = self;
        let handle = server.handle();
        let drain_delay = Duration::from_millis(settings.server.drain_delay_ms);
        let rt = runtime.clone();
        actix_rt::spawn(async move {
            shutdown_signal().await;
            tracing::info!("shutdown requested: draining");
            rt.set_draining();
            tokio::time::sleep(drain_delay).await;
            handle.stop(true).await;
        });
        server.await?;
        // Shutdown, in order: the listener and in-flight requests are done;
        // now every background task stops and is awaited, and only then
        // does the store flush what is queued and close.
        runtime.set_draining();
        background.shutdown().await;
        runtime.store().close().await;
        tracing::info!("stopped");
        Ok(())
    }
}

/// What every HTTP worker's application shares: the handlers' data.
#[derive(Clone)]
struct AppData {
    runtime: web::Data<Runtime>,
    metrics: web::Data<Metrics>,
    limits: web::Data<HttpLimits>,
    /// The running settings, replaced on reload.
    settings: web::Data<ArcSwap<Settings>>,
    auth: web::Data<Auth>,
    ops: web::Data<http::ops::OpsAddress>,
}

impl AppData {
    fn register(&self, config: &mut web::ServiceConfig) {
        config
            .app_data(self.runtime.clone())
            .app_data(self.metrics.clone())
            .app_data(self.limits.clone())
            .app_data(self.settings.clone())
            .app_data(self.auth.clone())
            .app_data(self.ops.clone());
    }
}

/// The API keys and the JWT verifier in force at start.
struct Credentials {
    keys: KeyRing,
    jwt: Option<Jwt>,
}

impl Credentials {
    /// A keys file or a JWT key that cannot be read stops start-up, and so
    /// does authentication turned on with neither a key nor a JWT key.
    fn load(settings: &Settings) -> anyhow::Result<Self> {
        let none = Self {
            keys: KeyRing::default(),
            jwt: None,
        };
        if !settings.auth.enabled {
            if settings.environment == "production" {
                tracing::warn!("auth.enabled is false in production: every route is open to anyone who can reach the port");
            } else if !settings.auth.keys_file.trim().is_empty()
                || settings.auth.jwt.is_configured()
            {
                tracing::warn!("auth.keys_file or auth.jwt is set but auth.enabled is false: no credentials are checked");
            }
            return Ok(none);
        }
        let keys = match settings.auth.keys_file.trim() {
            "" => KeyRing::default(),
            path => KeyRing::load(Path::new(path)).context("reading auth.keys_file")?,
        };
        let jwt = Jwt::from_settings(&settings.auth.jwt).context("configuring auth.jwt")?;
        if keys.is_empty() && jwt.is_none() {
            anyhow::bail!(
                "auth.enabled is true but no API key is configured: run `troupe keys new --name NAME \
                 --scopes ledger:read,ledger:write`, put the [[key]] block it prints in a file, and \
                 point auth.keys_file (TROUPE__AUTH__KEYS_FILE) at it (or configure auth.jwt for an \
                 identity provider's tokens)"
            );
        }
        tracing::info!(keys = keys.len(), jwt = jwt.is_some(), "credentials loaded");
        Ok(Self { keys, jwt })
    }
}

/// The TLS certificate and key, when configured; files that do not load
/// stop start-up.
fn load_certificates(settings: &Settings) -> anyhow::Result<Option<Arc<crate::tls::Certificates>>> {
    if !settings.server.tls.is_enabled() {
        return Ok(None);
    }
    let certificates = crate::tls::Certificates::load(&settings.server.tls)
        .context("loading the TLS certificate")?;
    Ok(Some(Arc::new(certificates)))
}

/// Opens the configured store, checks the data of earlier versions, and
/// wraps it in the caller's layer (a test's fault injector) and in
/// metrics. The only place that names a concrete store.
/// The Redis store whose lease is to be kept, and what its first attempt found.
type LeaseKeeper = (Arc<RedisStore>, Option<crate::store::LeaseState>);

async fn open_store(
    settings: &Settings,
    metrics: &Metrics,
    layer: Option<StoreLayer>,
) -> anyhow::Result<(Arc<dyn Store>, Option<LeaseKeeper>)> {
    let mut keeper = None;
    let store: Arc<dyn Store> = match settings.store.backend {
        StoreBackend::Redis => {
            let redis = RedisStore::new(&settings.redis_options(), &settings.store_options())
                .context("configuring the Redis store")?;
            let redis = Arc::new(redis);
            if let Some(server) = check_redis(&redis).await? {
                metrics.redis_settings(&server);
            }
            // One instance per prefix: serve only while holding its lease.
            let lease = Duration::from_millis(settings.store.redis.lease_ms);
            let now = match redis.hold_lease(lease).await {
                Ok(state) => {
                    crate::store::log_lease(&state, &settings.store.redis.prefix);
                    Some(state)
                }
                Err(e) => {
                    tracing::warn!(
                        error.message = %e,
                        "cannot take the Redis lease at start (Redis is unavailable); not ready until it is taken"
                    );
                    None
                }
            };
            keeper = Some((redis.clone(), now));
            redis
        }
        StoreBackend::Embedded => {
            let store = EmbeddedStore::open(settings.data_dir(), settings.store_options())
                .with_context(|| {
                    format!("opening the store in {}", settings.data_dir().display())
                })?;
            Arc::new(store)
        }
    };
    // A store that cannot answer yet (Redis down at start) is checked
    // by nobody: legacy transfers are then merely never resumed.
    match crate::upgrade::check(&*store).await {
        Err(crate::upgrade::UpgradeError::Store(e)) => {
            tracing::warn!(error.message = %e, "cannot check the store for transfers of an earlier version");
        }
        other => other.context("checking the data of earlier versions")?,
    }
    let store = match layer {
        Some(layer) => layer(store),
        None => store,
    };
    Ok((metrics.instrument(store), keeper))
}

/// Who may call the API, and the watchers that reload its keys.
fn start_auth(
    settings: &Settings,
    credentials: Credentials,
    metrics: &Metrics,
    background: &Background,
) -> (Arc<Auth>, Vec<notify::RecommendedWatcher>) {
    let auth = Arc::new(Auth::new(
        settings.auth.enabled,
        credentials.keys,
        credentials.jwt,
        crate::auth::AuthMetrics {
            denied: metrics.auth_denied.clone(),
            keys: metrics.auth_keys.clone(),
            reloads: metrics.auth_reloads.clone(),
        },
    ));
    let mut watchers = Vec::new();
    if !settings.auth.enabled {
        return (auth, watchers);
    }
    let path = settings.auth.keys_file.trim();
    if !path.is_empty() {
        match auth.watch_keys(background, PathBuf::from(path)) {
            Ok(w) => watchers.push(w),
            Err(e) => {
                tracing::warn!(file = path, error.message = %e, "cannot watch the keys file; keys are not reloaded");
            }
        }
    }
    match auth.watch_jwt_key(background) {
        Some(Ok(w)) => watchers.push(w),
        Some(Err(e)) => {
            tracing::warn!(error.message = %e, "cannot watch the JWT public key file; it is not reloaded");
        }
        None => {}
    }
    (auth, watchers)
}

/// The actor runtime over `store`, its metrics actor, and the sweeper of
/// expired idempotency records.
fn start_runtime(
    settings: &Settings,
    store: Arc<dyn Store>,
    metrics: &Metrics,
    background: &Background,
) -> Runtime {
    spawn_sweeper(
        background,
        store.clone(),
        Duration::from_secs(settings.store.sweep_interval_s.max(1)),
    );
    let workers = Settings::threads(settings.server.workers);
    let runtime = Runtime::new(store, settings.runtime_options(), workers);
    // The metrics actor lives on the system thread, off the workers.
    let sink = MetricsActor::new(metrics.clone()).start();
    runtime.set_metrics_sink(sink.recipient());
    runtime
}

/// The main listener and the operations one (`server.ops_bind`), bound
/// before anything is served so port 0 is known at once.
struct Listeners {
    main: TcpListener,
    ops: Option<TcpListener>,
}

impl Listeners {
    fn bind(settings: &Settings) -> anyhow::Result<Self> {
        let server = &settings.server;
        let main = TcpListener::bind((server.bind.as_str(), server.port))
            .with_context(|| format!("binding {}:{}", server.bind, server.port))?;
        let ops = match server.ops_bind.trim() {
            "" => None,
            address => Some(
                TcpListener::bind(address)
                    .with_context(|| format!("binding server.ops_bind {address}"))?,
            ),
        };
        Ok(Self { main, ops })
    }

    fn port(&self) -> std::io::Result<u16> {
        Ok(self.main.local_addr()?.port())
    }

    fn ops_address(&self) -> std::io::Result<Option<std::net::SocketAddr>> {
        self.ops.as_ref().map(TcpListener::local_addr).transpose()
    }

    fn ops_port(&self) -> std::io::Result<Option<u16>> {
        Ok(self.ops_address()?.map(|a| a.port()))
    }
}

/// Reloads the TLS files when they change.
fn watch_certificates(
    certificates: &Arc<crate::tls::Certificates>,
    metrics: &Metrics,
    background: &Background,
) -> Option<notify::RecommendedWatcher> {
    let tls_metrics = crate::tls::TlsMetrics {
        reloads: metrics.tls_reloads.clone(),
        expiry: metrics.tls_expiry.clone(),
    };
    match certificates.watch(background, tls_metrics) {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(error.message = %e, "cannot watch the TLS files; the certificate is not reloaded");
            None
        }
    }
}

/// The HTTP server on both listeners, TLS on each when configured; every
/// worker hosts a shard of the actors.
fn serve(
    settings: &Settings,
    data: AppData,
    listeners: Listeners,
    tls: Option<rustls::ServerConfig>,
) -> anyhow::Result<Server> {
    let http_metrics_on = settings.telemetry.http_metrics;
    let server = HttpServer::new(move || {
        // Runs once on each worker thread: the worker hosts a shard.
        data.runtime.host_shard_here();
        let data = data.clone();
        App::new()
            .configure(move |config| data.register(config))
            .wrap(middleware::from_fn(crate::auth::check))
            .wrap(middleware::from_fn(http::ops::split))
            .wrap(middleware::from_fn(context::request_ids))
            .wrap(middleware::Condition::new(
                http_metrics_on,
                middleware::from_fn(http_metrics::record),
            ))
            .wrap(TracingLogger::<context::RootSpan>::new())
            .configure(http::routes)
            .default_service(web::to(http::not_found))
    })
    .workers(Settings::threads(settings.server.workers))
    .max_connections(settings.server.max_connections)
    // A client that closes its side has gone: its request's future is
    // dropped, and with it the work still queued for it.
    .h1_allow_half_closed(false)
    .disable_signals()
    .shutdown_timeout(settings.server.shutdown_grace_ms.div_ceil(1000));
    // TLS on every listener: the operations one carries keys too.
    let mut server = match &tls {
        Some(config) => server.listen_rustls_0_23(listeners.main, config.clone())?,
        None => server.listen(listeners.main)?,
    };
    if let Some(ops) = listeners.ops {
        let port = ops.local_addr()?.port();
        server = match &tls {
            Some(config) => server.listen_rustls_0_23(ops, config.clone())?,
            None => server.listen(ops)?,
        };
        tracing::info!(port, "operations listener: /metrics, /config and health");
    }
    Ok(server.run())
}

/// Live reload: the config directory watched, and etcd when configured.
fn watch_settings(
    settings: &Settings,
    sources: Sources,
    current: Arc<ArcSwap<Settings>>,
    runtime: &Runtime,
    log_filter: Option<FilterSetter>,
    metrics: &Metrics,
    background: &Background,
) -> Option<notify::RecommendedWatcher> {
    let dir = sources
        .config_dir
        .clone()
        .unwrap_or_else(|| "config".into());
    let reloader = Reloader::new(
        sources,
        current,
        runtime.clone(),
        log_filter,
        metrics.config_reloads.clone(),
    );
    crate::remote::spawn(background, settings, reloader.clone());
    match reloader.watch(background, dir.clone()) {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error.message = %e, "cannot watch the configuration; live reload from files is off");
            None
        }
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {},
                    _ = tokio::signal::ctrl_c() => {},
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Wakes every actor with unfinished work; while the store cannot list
/// them (Redis down at start-up), keeps trying with backoff.
fn spawn_resume(background: &Background, runtime: Runtime) {
    use backon::{ExponentialBuilder, Retryable};
    let tasks = background.clone();
    background.spawn(async move {
        let backoff = ExponentialBuilder::default()
            .with_max_delay(Duration::from_secs(5))
            .without_max_times();
        let check = || async { crate::upgrade::check(&**runtime.store()).await };
        let retry = ExponentialBuilder::default()
            .with_max_delay(Duration::from_secs(5))
            .without_max_times();
        let checked = check
            .retry(retry)
            .when(|e| matches!(e, crate::upgrade::UpgradeError::Store(_)))
            .await;
        if let Err(e) = checked {
            tracing::error!(error.message = %e, "not resuming anything; the service stays not ready");
            runtime.set_draining();
            return;
        }
        let resume = || async { runtime.resume_pending(&tasks).await };
        let notify = |e: &crate::store::StoreError, wait: Duration| {
            tracing::warn!(error.message = %e, ?wait, "cannot list unfinished actors yet; retrying");
        };
        if let Ok(resumed) = resume.retry(backoff).notify(notify).await {
            if resumed > 0 {
                tracing::info!(resumed, "resumed unfinished actors");
            }
        }
    });
}

/// Indexes for listing the actors an earlier version stored (Redis; a
/// no-op on the embedded store and once done), beside serving and never
/// in the way of resuming unfinished work; retried until it is done (it
/// is idempotent, and a retry scans from the start).
fn spawn_reindex(background: &Background, store: Arc<dyn Store>) {
    use backon::{ExponentialBuilder, Retryable};
    background.spawn(async move {
        let retry = ExponentialBuilder::default()
            .with_max_delay(Duration::from_secs(30))
            .without_max_times();
        let reindex = || async { store.reindex().await };
        let notify = |e: &crate::store::StoreError, wait: Duration| {
            tracing::warn!(error.message = %e, ?wait, "cannot index earlier actors for listing yet; retrying");
        };
        if let Ok(indexed) = reindex.retry(retry).notify(notify).await {
            if indexed > 0 {
                tracing::info!(indexed, "indexed the actors of an earlier version for listing");
            }
        }
    });
}

/// Deletes expired idempotency keys now and then.
fn spawn_sweeper(background: &Background, store: Arc<dyn Store>, every: Duration) {
    background.spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            store.sweep().await;
        }
    });
}

/// Refuses a Redis that would delete acknowledged data on its own, and
/// logs what its persistence settings promise. A Redis down at start, or
/// one that refuses `CONFIG GET`, cannot be checked: that is logged, and
/// the operator's to see to (docs/src/operations/storage.md, The Redis store).
async fn check_redis(redis: &RedisStore) -> anyhow::Result<Option<ServerSettings>> {
    match redis.server_settings().await {
        Ok(Some(server)) => {
            if let Some(refusal) = server.refusal() {
                anyhow::bail!(refusal);
            }
            tracing::info!(
                redis.maxmemory_policy = %server.maxmemory_policy,
                redis.appendonly = %server.appendonly,
                redis.appendfsync = %server.appendfsync,
                redis.save = %server.save,
                "Redis's persistence settings"
            );
            return Ok(Some(server));
        }
        Ok(None) => tracing::warn!(
            "Redis refuses CONFIG GET: cannot check that maxmemory-policy is noeviction \
             (any other policy can evict acknowledged data); make sure it is"
        ),
        Err(e) => tracing::warn!(
            error.message = %e,
            "cannot check Redis's settings at start (Redis is unavailable); \
             maxmemory-policy must be noeviction"
        ),
    }
    Ok(None)
}
