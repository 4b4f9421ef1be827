//! `troupe`: flags -> settings -> telemetry -> Application::build -> run.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use troupe::settings::{describe, Settings, Sources};
use troupe::startup::{Application, Controls};

/// mimalloc instead of glibc's malloc: the request path allocates per
/// message, and glibc's allocator took a fifth of the HTTP worker's time
/// under load (docs/src/performance.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// An actor-based ledger service.
#[derive(Debug, Parser)]
#[command(version = concat!(env!("CARGO_PKG_VERSION"), " (", env!("TROUPE_COMMIT"), ")"), about)]
struct Cli {
    /// Address to listen on (server.bind).
    #[arg(long, global = true)]
    bind: Option<String>,
    /// Port to listen on (server.port); 0 picks a free one.
    #[arg(long, global = true)]
    port: Option<u16>,
    /// Directory of the embedded store (store.path).
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// Store backend: embedded or redis (store.backend).
    #[arg(long, global = true)]
    store: Option<String>,
    /// Log filter directive, e.g. info,troupe=debug (log.filter).
    #[arg(long, global = true)]
    log: Option<String>,
    /// Directory holding default.toml and the per-environment files.
    #[arg(long, env = "TROUPE_CONFIG_DIR", global = true)]
    config_dir: Option<PathBuf>,
    /// Environment: development, staging or production.
    #[arg(long, env = "TROUPE_ENV", global = true)]
    env: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the effective settings and the layer each came from.
    Config {
        #[command(subcommand)]
        command: Option<ConfigCommand>,
    },
    /// API keys (auth.keys_file).
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Actors of a running server, through its API.
    Actors {
        #[command(subcommand)]
        command: ActorsCommand,
    },
    /// The embedded store's data directory, with no server running.
    Store {
        #[command(subcommand)]
        command: StoreCommand,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Print every setting's default as TOML (config/default.toml).
    Defaults,
    /// Print the reference of every setting as a Markdown table.
    Reference,
}

#[derive(Debug, Subcommand)]
enum StoreCommand {
    /// Check a data directory as a start would, then read every key and
    /// value it holds; DIR is only read (the check runs on a copy). Exits
    /// 0 when intact, 1 when damaged, 2 when it could not check.
    Verify {
        /// The data directory (store.path), e.g. ./data.
        dir: PathBuf,
        /// Where the copy is made (it needs room for DIR's files).
        #[arg(long, env = "TMPDIR", default_value = "/tmp")]
        scratch: PathBuf,
    },
    /// Build a new data directory from what is intact in DIR: its history
    /// up to the first damaged batch of its journals. Acknowledged writes
    /// after that are lost, and it says how many. DIR is only read.
    Salvage {
        /// The damaged data directory.
        dir: PathBuf,
        /// The new data directory; it must not exist.
        #[arg(long)]
        to: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum ActorsCommand {
    /// Print every id of a kind, one per line, ascending.
    List {
        /// The kind: account or transfer.
        #[arg(long)]
        kind: String,
        /// Only ids starting with this.
        #[arg(long)]
        prefix: Option<String>,
        /// The server's base URL.
        #[arg(long, env = "TROUPE_URL", default_value = "http://127.0.0.1:8080")]
        url: String,
        /// A bearer token with actors:send, when auth is on (better from
        /// TROUPE_TOKEN: a flag shows in the process list).
        #[arg(long, env = "TROUPE_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// PEM of the authority that signed a private server certificate.
        #[arg(long)]
        ca_file: Option<PathBuf>,
        /// Seconds each request may take.
        #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
        timeout_s: u64,
        /// Ids per request.
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=1000))]
        page_size: u32,
    },
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Print a fresh random token once, and the [[key]] block holding its
    /// digest to add to the keys file.
    New {
        /// The key's name, in logs and metrics.
        #[arg(long)]
        name: String,
        /// Comma-separated: ledger:read, ledger:write, actors:send, ops:read.
        #[arg(long, value_delimiter = ',', required = true)]
        scopes: Vec<String>,
        /// Only ids starting with this prefix.
        #[arg(long)]
        ids: Option<String>,
    },
}

/// `troupe keys new`: the token on stdout's first line, then the block.
fn new_key(name: &str, scopes: &[String], ids: Option<&str>) -> anyhow::Result<()> {
    for scope in scopes {
        if troupe::auth::Scope::parse(scope).is_none() {
            anyhow::bail!(
                "unknown scope {scope:?}: use ledger:read, ledger:write, actors:send or ops:read"
            );
        }
    }
    let token = troupe::auth::new_token();
    let toml = |s: &str| toml::Value::String(s.to_owned()).to_string();
    let quoted: Vec<String> = scopes.iter().map(|s| toml(s)).collect();
    println!("token (shown once, keep it secret): {token}");
    println!();
    println!("[[key]]");
    println!("name = {}", toml(name));
    println!("sha256 = {}", toml(&troupe::auth::digest_hex(&token)));
    println!("scopes = [{}]", quoted.join(", "));
    if let Some(ids) = ids {
        println!("ids = {}", toml(ids));
    }
    Ok(())
}

impl Cli {
    fn sources(&self) -> Sources {
        let flags = [
            ("server.bind", self.bind.clone()),
            ("server.port", self.port.map(|p| p.to_string())),
            (
                "store.path",
                self.data_dir.as_ref().map(|d| d.display().to_string()),
            ),
            ("store.backend", self.store.clone()),
            ("log.filter", self.log.clone()),
        ];
        Sources {
            config_dir: self.config_dir.clone(),
            env: self.env.clone(),
            overrides: flags
                .into_iter()
                .filter_map(|(k, v)| v.map(|v| (k.to_owned(), v)))
                .collect(),
            remote: Vec::new(),
            environment: None,
        }
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Command::Config {
        command: Some(what),
    }) = &cli.command
    {
        print!(
            "{}",
            match what {
                ConfigCommand::Defaults => troupe::settings::table::defaults_toml(),
                ConfigCommand::Reference => troupe::settings::table::reference_markdown(),
            }
        );
        return Ok(());
    }
    if let Some(Command::Keys {
        command: KeysCommand::New { name, scopes, ids },
    }) = &cli.command
    {
        return new_key(name, scopes, ids.as_deref());
    }
    if let Some(Command::Actors {
        command:
            ActorsCommand::List {
                kind,
                prefix,
                url,
                token,
                ca_file,
                timeout_s,
                page_size,
            },
    }) = &cli.command
    {
        let target = troupe::client::Target {
            url: url.clone(),
            token: token.clone(),
            ca_file: ca_file.clone(),
            timeout: std::time::Duration::from_secs(*timeout_s),
            page_size: *page_size,
        };
        let mut out = std::io::stdout().lock();
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(target.list_actors(kind, prefix.as_deref(), &mut out))?;
        return Ok(());
    }
    if let Some(Command::Store { command }) = &cli.command {
        let code = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(store_command(command));
        std::process::exit(code);
    }
    // The remote layer is read before anything else: it may set any key,
    // the log filter and the listening port included.
    let (settings, sources, remote) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(troupe::remote::resolve(cli.sources()))?;
    if let Some(Command::Config { .. }) = cli.command {
        remote_note(&remote);
        for (key, value, layer) in describe(&sources)? {
            println!("{key} = {value}    # {layer}");
        }
        return Ok(());
    }
    // Invalid settings stopped above, before anything binds a port.
    // Before the actix system: the OTLP exporter gets its own small runtime.
    let telemetry = troupe::telemetry::init(&settings)?;
    remote.log();
    let result = actix_web::rt::System::new().block_on(serve(settings, sources, &telemetry));
    telemetry.shutdown();
    result
}

/// `troupe store ...`: prints what it found; returns the exit code (0
/// intact or salvaged, 1 damaged, 2 not checked).
async fn store_command(command: &StoreCommand) -> i32 {
    use troupe::store::StoreError;
    let result = match command {
        StoreCommand::Verify { dir, scratch } => troupe::store::verify(dir, scratch)
            .await
            .map(|v| print_verified(dir, &v)),
        StoreCommand::Salvage { dir, to } => troupe::store::salvage(dir, to)
            .await
            .map(|s| print_salvaged(dir, to, &s)),
    };
    match result {
        Ok(()) => 0,
        Err(StoreError::Corrupt(m)) => {
            eprintln!("damaged: {m}");
            1
        }
        Err(e) => {
            eprintln!("not checked: {e}");
            2
        }
    }
}

fn print_inventory(inventory: &troupe::store::Inventory) {
    let actors: Vec<String> = inventory
        .actors
        .iter()
        .map(|(kind, n)| format!("{n} {kind}"))
        .collect();
    println!(
        "  actors: {}",
        if actors.is_empty() {
            "none".into()
        } else {
            actors.join(", ")
        }
    );
    for (name, keys, bytes) in &inventory.spaces {
        println!("  keyspace {name}: {keys} keys, {bytes} bytes, every one read");
    }
}

fn print_verified(dir: &std::path::Path, v: &troupe::store::Verified) {
    println!("{}: intact", dir.display());
    if v.evidence {
        println!(
            "  an earlier start refused this directory and kept bytes aside in \
             troupe.evidence; with them put back it passes every check, so that refusal \
             came from something else (its log says what). A start still refuses while \
             troupe.evidence is there: once you have looked, move it out of the directory"
        );
    }
    println!(
        "  journals: {} files, {} batches, {} bytes, every batch's checksum recomputed",
        v.journals, v.journal_batches, v.journal_bytes
    );
    println!(
        "  batches: {} written, {} acknowledged (troupe.acked)",
        v.inventory.batches, v.acknowledged
    );
    print_inventory(&v.inventory);
}

fn print_salvaged(dir: &std::path::Path, to: &std::path::Path, s: &troupe::store::Salvaged) {
    if s.cuts.is_empty() {
        println!(
            "{}: its journals are intact; nothing was cut",
            dir.display()
        );
    }
    for (damage, dropped) in &s.cuts {
        println!("cut: {damage}; {dropped} bytes of journal dropped from there on");
    }
    match s.acknowledged {
        Some(acked) if acked > s.kept => println!(
            "lost: troupe's batches {} to {acked} were acknowledged and are gone \
             ({} batches; each holds the commits of one group commit)",
            s.kept + 1,
            acked - s.kept
        ),
        Some(_) => println!("lost: nothing acknowledged"),
        None => println!(
            "lost: unknown ({}/troupe.acked is missing or damaged); the journal kept \
             troupe's batches up to {}",
            dir.display(),
            s.kept
        ),
    }
    println!("{}: built, every key read back", to.display());
    print_inventory(&s.inventory);
    println!(
        "{} is unchanged; serve the new directory (--data-dir {}) once satisfied",
        dir.display(),
        to.display()
    );
}

/// `troupe config` has no logger: say on stderr why etcd is missing.
fn remote_note(remote: &troupe::remote::AtStart) {
    if let Some(note) = remote.note() {
        eprintln!("{note}");
    }
}

async fn serve(
    settings: Settings,
    sources: Sources,
    telemetry: &troupe::telemetry::Telemetry,
) -> anyhow::Result<()> {
    let controls = Controls {
        sources: Some(sources),
        log_filter: Some(telemetry.log_filter_handle()),
        store_layer: None,
    };
    let app = Application::build_with(settings, controls).await?;
    tracing::info!(
        port = app.port(),
        version = troupe::VERSION,
        commit = troupe::COMMIT,
        "troupe listening"
    );
    app.run_until_stopped().await
}
