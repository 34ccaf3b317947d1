//! The `sluice` command line: `serve`.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use sluice::config::Config;
use sluice::server::Gateway;
use sluice::store::StoreKind;

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
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG")
                .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    match cli.command {
        Command::Serve { config } => runtime.block_on(serve(config)),
    }
}

async fn serve(file: Option<PathBuf>) -> anyhow::Result<()> {
    let config = Config::load(file.as_deref())?;
    let store_url = config.store.clone();
    let gateway = Gateway::bind(config).await?;
    let addr = gateway.local_addr()?;
    let kind = gateway.app.log.store().kind;
    tracing::info!(%addr, store = %store_url, durability = durability(kind), "sluice listening");
    tracing::warn!("AUTH IS OFF: anyone who can reach {addr} can write to every stream");
    // Scripts and the load harness wait for this line.
    println!("listening on {addr}");
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
