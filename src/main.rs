//! The `sluice` command line: `serve`, `check-config`, `keygen`, `tail`, `replay`, `consume`, `compact`, `gc`.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use sluice::config::Config;
use sluice::server::Gateway;
use sluice::store::StoreKind;
use sluice::tail::{Source, Start, Stopped, TailOptions};

#[derive(Parser)]
#[command(name = "sluice", version, about = "Stateless edge ingestion gateway")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (no configuration needed: local store, auth off).
    Serve {
        /// TOML configuration file (also SLUICE_CONFIG).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Check a configuration (file and SLUICE_* overrides) without serving:
    /// exits 0 when it is valid, else prints what is wrong and exits 1.
    CheckConfig {
        /// TOML configuration file (also SLUICE_CONFIG; none: defaults).
        file: Option<PathBuf>,
    },
    /// Print a new API key and the `[[keys]]` entry (with only its hash) to
    /// paste into the config. The key itself is shown once, here.
    Keygen {
        /// The key's id (for logs); default: a random one.
        #[arg(long)]
        id: Option<String>,
        /// Tenant the key belongs to.
        #[arg(long, default_value = "default")]
        tenant: String,
        /// Scopes, comma-separated: write, read, metrics.
        #[arg(long, default_value = "write")]
        scopes: String,
        /// Stream patterns, comma-separated (`*` wildcards).
        #[arg(long, default_value = "*")]
        streams: String,
        /// Browser origins allowed to use the key, comma-separated.
        #[arg(long)]
        origins: Option<String>,
    },
    /// Re-post dead letters (`STREAM.dlq`) through validation into their
    /// stream. Exit 0 when every one was accepted, 3 when some still fail
    /// (they stay in the DLQ; their offsets are printed), 1 on errors.
    Replay {
        /// The dead-letter stream, e.g. clicks.dlq.
        dlq: String,
        /// The stream to re-post into, e.g. clicks.
        #[arg(long)]
        into: String,
        /// First DLQ offset to replay.
        #[arg(long, default_value_t = 0)]
        from_offset: u64,
        /// Offset after the last one to replay (default: the DLQ's head now).
        #[arg(long)]
        to_offset: Option<u64>,
        /// Gateway to read from and post to.
        #[arg(long, env = "SLUICE_URL", default_value = "http://127.0.0.1:8080")]
        url: String,
        /// API key with read scope on the DLQ and write scope on the stream.
        #[arg(long, env = "SLUICE_KEY", hide_env_values = true)]
        key: Option<String>,
    },
    /// Print a stream's events as NDJSON as they are committed (Ctrl-C stops).
    Tail {
        /// Stream to follow.
        stream: String,
        /// Gateway to read from.
        #[arg(long, env = "SLUICE_URL", default_value = "http://127.0.0.1:8080")]
        url: String,
        /// API key with read scope, when the gateway has auth on.
        #[arg(long, env = "SLUICE_KEY", hide_env_values = true)]
        key: Option<String>,
        /// Where to start: earliest, latest (only new events) or
        /// PARTITION:OFFSET,… (partitions not named start at latest).
        #[arg(long, default_value = "latest")]
        from: Start,
        /// Read the bucket directly instead of a gateway: file://PATH,
        /// s3://BUCKET/PREFIX (same form as SLUICE_STORE). Overrides --url.
        #[arg(long)]
        store: Option<String>,
        /// Tenant whose stream is read (with --store).
        #[arg(long, default_value = "default")]
        tenant: String,
        /// Partitions when they cannot be learned: the stream has no events
        /// yet (gateway), or fewer exist in the bucket (with --store).
        #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=9999))]
        partitions: u32,
    },
    // --- consume (consumer groups) ---
    /// Read a consumer group's batch: from its checkpoints to the head of
    /// every partition, write it out, then advance the checkpoints (at least
    /// once). Exit 0 on success, 4 when another consumer of the group
    /// advanced a partition first (run again), 5 when a checkpoint is below
    /// what retention kept (see --skip-expired), 2 for an unknown format, 1 on errors.
    Consume {
        /// The consumer group.
        #[arg(long)]
        group: String,
        /// Stream to read.
        #[arg(long)]
        stream: String,
        /// The bucket: file://PATH, s3://BUCKET/PREFIX, memory://.
        #[arg(long, env = "SLUICE_STORE", default_value = "file://./sluice-data")]
        store: String,
        /// Tenant whose stream is read.
        #[arg(long, default_value = "default")]
        tenant: String,
        /// `-` for stdout, or a directory for a new `{stream}-{group}-{ulid}.{ndjson|parquet}`.
        #[arg(long, default_value = "-")]
        out: String,
        /// ndjson (stored envelope lines, bytes unchanged) or parquet (one
        /// zstd file; columns inferred as `sluice compact` does).
        #[arg(long, default_value = "ndjson")]
        format: String,
        /// Most events this run, over all partitions: bounds the run's memory
        /// (the events are held until the output is written); run again for the rest.
        #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
        max_events: u64,
        /// About the most bytes of events this run holds (at least one event
        /// still comes through): the memory bound whatever the event sizes.
        #[arg(long, default_value_t = 256 * 1024 * 1024, value_parser = clap::value_parser!(u64).range(1..))]
        max_bytes: u64,
        /// Partitions read at least (more when the bucket holds a higher one).
        #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=9999))]
        partitions: u32,
        /// A checkpoint below the first retained offset (retention deleted
        /// events the group never read) moves on to it instead of failing:
        /// the group never gets those events; stderr says how many.
        #[arg(long)]
        skip_expired: bool,
    },
    // --- end consume ---
    /// Write closed hours of streams as Parquet under `tables/dt=…/hr=…/`
    /// (zstd; columns from the stream's schema, else inferred). Idempotent,
    /// and safe to run on several machines at once. Prints a JSON report;
    /// exit 0, 1 on errors (including an hour that is not closed yet).
    Compact {
        /// Stream to compact (default: every stream in the bucket).
        #[arg(long)]
        stream: Option<String>,
        /// One hour, YYYY-MM-DDTHH in UTC (default: every closed hour with data).
        #[arg(long)]
        hour: Option<sluice::compact::Hour>,
        /// Tenant (default: every tenant in the bucket).
        #[arg(long)]
        tenant: Option<String>,
        /// The bucket (default: the config's `store`).
        #[arg(long)]
        store: Option<String>,
        /// TOML configuration (also SLUICE_CONFIG): schemas, partitions, `[compaction]`.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    // --- gc ---
    /// Garbage collection: delete the records and segments older than each
    /// stream's retention (the low watermark keeps offsets monotonic) and
    /// orphan segments older than gc.orphan_grace. Safe to run anywhere,
    /// any number at once. Prints what it did; exit 0 when every stream
    /// was collected, 1 otherwise.
    Gc {
        /// TOML configuration file with the retentions and [gc] (also SLUICE_CONFIG).
        #[arg(long)]
        config: Option<PathBuf>,
        /// The bucket (default: the configuration's `store`, SLUICE_STORE).
        #[arg(long)]
        store: Option<String>,
        /// Only this tenant (default: every tenant of the configuration).
        #[arg(long)]
        tenant: Option<String>,
        /// Only this stream (of --tenant, or of the default tenant).
        #[arg(long)]
        stream: Option<String>,
    },
    // --- end gc ---
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // `tail` owns stdout and keeps stderr for warnings and errors.
    let default_level = match cli.command {
        Command::Serve { .. } => "info",
        Command::Tail { .. }
        | Command::CheckConfig { .. }
        | Command::Keygen { .. }
        | Command::Replay { .. }
        | Command::Consume { .. }
        | Command::Compact { .. }
        | Command::Gc { .. } => "warn",
    };
    init_logs(default_level)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    match cli.command {
        Command::Serve { config } => runtime.block_on(serve(config)),
        Command::CheckConfig { file } => {
            let config = Config::load(file.as_deref())?;
            if let Some(tls) = &config.tls {
                sluice::server::tls::Tls::load(tls)?;
            }
            println!(
                "config ok: listen {}, store {}, {} partitions per stream",
                config.listen, config.store, config.streams.partitions
            );
            Ok(())
        }
        Command::Keygen {
            id,
            tenant,
            scopes,
            streams,
            origins,
        } => keygen(id, &tenant, &scopes, &streams, origins.as_deref()),
        Command::Replay {
            dlq,
            into,
            from_offset,
            to_offset,
            url,
            key,
        } => {
            let opts = sluice::replay::ReplayOptions {
                from_stream: dlq,
                into,
                url,
                key,
                from_offset,
                to_offset,
            };
            runtime.block_on(replay(opts))
        }
        Command::Tail {
            stream,
            url,
            key,
            from,
            store,
            tenant,
            partitions,
        } => {
            let source = match store {
                Some(url) => Source::Store { url, tenant },
                None => Source::Gateway { url, key },
            };
            let opts = TailOptions {
                stream,
                source,
                start: from,
                partitions,
            };
            runtime.block_on(tail(opts))
        }
        Command::Consume {
            group,
            stream,
            store,
            tenant,
            out,
            format,
            max_events,
            max_bytes,
            partitions,
            skip_expired,
        } => {
            let output = match out.as_str() {
                "-" => sluice::consume::Output::Stdout,
                dir => sluice::consume::Output::Dir(PathBuf::from(dir)),
            };
            let opts = sluice::consume::ConsumeOptions {
                store,
                tenant,
                stream,
                group,
                output,
                format: format.parse().unwrap_or_else(|e| consume_exit(&e)),
                max_events: Some(max_events),
                max_bytes,
                partitions,
                skip_expired,
            };
            runtime.block_on(consume(opts))
        }
        Command::Compact {
            stream,
            hour,
            tenant,
            store,
            config,
        } => {
            let scope = sluice::compact::run::Scope {
                tenant,
                stream,
                hour,
                since: None,
            };
            runtime.block_on(compact(config, store, scope))
        }
        Command::Gc {
            config,
            store,
            tenant,
            stream,
        } => runtime.block_on(gc(config, store, tenant, stream)),
    }
}

// --- gc ---
async fn gc(
    file: Option<PathBuf>,
    store: Option<String>,
    tenant: Option<String>,
    stream: Option<String>,
) -> anyhow::Result<()> {
    use sluice::gc::{Gc, Scope};
    let mut config = Config::load(file.as_deref())?;
    if let Some(url) = store {
        config.store = url;
    }
    config
        .gc
        .check_grace(&config.batch)
        .map_err(|(key, message)| anyhow::anyhow!("configuration key {key}: {message}"))?;
    let opened = sluice::consume::open_store(&config.store).await?;
    let policy = sluice::log::retry::RetryPolicy {
        deadline: config.batch.store_retry(),
        ..Default::default()
    };
    let log = std::sync::Arc::new(sluice::log::Log::new(opened, "gc", policy));
    let scope = Scope {
        tenant: tenant.or_else(|| stream.as_ref().map(|_| config.tenant.clone())),
        stream,
    };
    let report = Gc::new(log, &config)
        .run(&scope, chrono::Utc::now())
        .await?;
    for s in &report.streams {
        if let Some(why) = &s.skipped {
            println!("{}/{}: left alone: {why}", s.tenant, s.stream);
            continue;
        }
        let keep = s
            .retention
            .map_or("forever".to_string(), |d| format!("{}s", d.as_secs()));
        println!(
            "{}/{}: retention {keep}; {} orphan segments deleted ({} hours checked, {} late segments kept)",
            s.tenant, s.stream, s.orphans_deleted, s.hours_checked, s.late_kept
        );
        for p in &s.partitions {
            println!(
                "  partition {}: first retained offset {} -> {} (seq {} -> {}); {} records, {} segments deleted",
                p.partition, p.from.1, p.to.1, p.from.0, p.to.0, p.records_deleted, p.segments_deleted
            );
        }
        if let Some(e) = &s.error {
            eprintln!("sluice gc: {}/{}: {e}", s.tenant, s.stream);
        }
    }
    if report.failed() {
        std::process::exit(1);
    }
    Ok(())
}
// --- end gc ---

/// Logs to stderr: level from `SLUICE_LOG` (else `RUST_LOG`, else
/// `default_level`), one JSON object a line with `SLUICE_LOG_FORMAT=json`.
fn init_logs(default_level: &str) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match std::env::var("SLUICE_LOG_FORMAT").as_deref() {
        Ok("json") => logs.json().init(),
        Ok("text") | Err(_) => logs.init(),
        Ok(other) => anyhow::bail!("SLUICE_LOG_FORMAT={other:?}: use json or text"),
    }
    Ok(())
}

async fn compact(
    file: Option<PathBuf>,
    store: Option<String>,
    scope: sluice::compact::run::Scope,
) -> anyhow::Result<()> {
    let mut config = Config::load(file.as_deref())?;
    if let Some(url) = store {
        config.store = url;
    }
    let store = sluice::store::Store::open(&config.store)?;
    store.check(&config.store).await?;
    let policy = sluice::log::retry::RetryPolicy {
        deadline: config.batch.store_retry(),
        ..Default::default()
    };
    let writer = format!(
        "compact-{}",
        ulid::Ulid::new().to_string().to_ascii_lowercase()
    );
    let log = std::sync::Arc::new(sluice::log::Log::new(store, writer, policy));
    let now = chrono::Utc::now().timestamp_millis();
    let report = sluice::compact::run::run(log, &config, &scope, now).await?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

// --- consume (consumer groups) ---
async fn consume(opts: sluice::consume::ConsumeOptions) -> anyhow::Result<()> {
    let report = sluice::consume::consume(&opts, &mut std::io::stdout().lock())
        .await
        .unwrap_or_else(|e| consume_exit(&e));
    for p in &report.partitions {
        eprintln!(
            "partition {}: {} events, offset {} -> {}{}",
            p.partition,
            p.events,
            p.from_offset,
            p.next_offset,
            p.checkpoint_seq
                .map_or(String::new(), |s| format!(" (checkpoint seq {s})"))
        );
    }
    let to = report
        .file
        .as_ref()
        .map_or("stdout".to_string(), |f| f.display().to_string());
    eprintln!(
        "sluice consume: group {} stream {}: {} events to {to}",
        opts.group,
        opts.stream,
        report.events()
    );
    for (partition, error) in &report.failures {
        eprintln!("sluice consume: partition {partition}: checkpoint not confirmed: {error}");
    }
    for p in report.partitions.iter().filter(|p| p.skipped > 0) {
        eprintln!(
            "sluice consume: partition {}: skipped {} events deleted by retention (offsets {}..{})",
            p.partition,
            p.skipped,
            p.from_offset,
            p.from_offset + p.skipped
        );
    }
    for c in &report.conflicts {
        eprintln!("sluice consume: {c}");
    }
    if !report.conflicts.is_empty() || !report.failures.is_empty() {
        // Other partitions may have advanced: their events exist only in
        // this output now.
        eprintln!("sluice consume: keep the output: the partitions listed above as advanced have moved past it");
        std::process::exit(if report.conflicts.is_empty() { 1 } else { 4 });
    }
    Ok(())
}

/// Print a consume error and exit: 4 conflict, 5 expired checkpoint, 2
/// unknown format, 1 otherwise.
fn consume_exit(e: &sluice::consume::ConsumeError) -> ! {
    use sluice::consume::ConsumeError;
    eprintln!("sluice consume: {e}");
    let code = match e {
        ConsumeError::Conflict(_) => 4,
        ConsumeError::Expired { .. } => 5,
        ConsumeError::UnknownFormat(_) => 2,
        _ => 1,
    };
    std::process::exit(code)
}
// --- end consume ---

fn keygen(
    id: Option<String>,
    tenant: &str,
    scopes: &str,
    streams: &str,
    origins: Option<&str>,
) -> anyhow::Result<()> {
    let key = sluice::auth::keys::generate()
        .map_err(|_| anyhow::anyhow!("the system random number generator failed"))?;
    // The default id comes from the hash, never from the key itself: ids are
    // shown in errors, logs and dead letters.
    let hash = sluice::auth::keys::hash_text(&key);
    let id = id.unwrap_or_else(|| format!("key-{}", &hash[7..15]));
    let list = |text: &str| -> String {
        let items: Vec<String> = text
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| format!("{s:?}"))
            .collect();
        format!("[{}]", items.join(", "))
    };
    let mut text = format!(
        "key: {key}\n# Paste into the config; the key above is not stored anywhere.\n[[keys]]\n"
    );
    text.push_str(&format!("id = {id:?}\ntenant = {tenant:?}\n"));
    text.push_str(&format!("hash = {hash:?}\n"));
    text.push_str(&format!(
        "scopes = {}\nstreams = {}\n",
        list(scopes),
        list(streams)
    ));
    if let Some(origins) = origins {
        text.push_str(&format!("origins = {}\n", list(origins)));
    }
    // `sluice keygen | head -1` closes the pipe early: not an error.
    use std::io::Write;
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

async fn replay(opts: sluice::replay::ReplayOptions) -> anyhow::Result<()> {
    let report = sluice::replay::run(&opts).await?;
    for s in &report.still_invalid {
        eprintln!(
            "{} offset {}: still invalid: {}",
            opts.from_stream, s.offset, s.reason
        );
    }
    let total = report.replayed + report.still_invalid.len();
    println!(
        "replayed {} of {total} dead letters ({} offsets {}..{}) into {}; {} still invalid",
        report.replayed,
        opts.from_stream,
        report.from_offset,
        report.to_offset,
        opts.into,
        report.still_invalid.len()
    );
    if !report.still_invalid.is_empty() {
        std::process::exit(3);
    }
    Ok(())
}

async fn tail(opts: TailOptions) -> anyhow::Result<()> {
    let stopped = sluice::tail::run(opts, std::io::stdout(), shutdown_signal()).await?;
    if let Stopped::Signal { resume } = stopped {
        let resume = resume.to_string();
        if !resume.is_empty() {
            eprintln!("sluice tail: stopped; to continue: --from {resume}");
        }
    }
    Ok(())
}

async fn serve(file: Option<PathBuf>) -> anyhow::Result<()> {
    let config = Config::load(file.as_deref())?;
    let store_url = config.store.clone();
    let gateway = Gateway::bind(config).await?;
    let addr = gateway.local_addr()?;
    let kind = gateway.app.log.store().kind;
    tracing::info!(%addr, store = %store_url, durability = durability(kind), "sluice listening");
    if !gateway.app.access.enabled() {
        tracing::warn!("AUTH IS OFF: anyone who can reach {addr} can read and write every stream; declare [[keys]] (sluice keygen) to turn it on");
    }
    // Scripts and the load harness wait for these lines.
    println!("listening on {addr}");
    if let Some(metrics) = gateway.metrics_addr() {
        println!("metrics on {metrics}");
    }
    gateway.run(shutdown_signal()).await;
    Ok(())
}

fn durability(kind: StoreKind) -> &'static str {
    match kind {
        StoreKind::File => "file store: fsynced before every ack",
        StoreKind::S3 => "S3: durable when the PUT returns",
        StoreKind::Memory => "memory store: everything is lost on exit",
    }
}

/// SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
    tracing::info!("shutdown signal received");
}
