//! The `chatlab` binary: parse flags, set up logging, bind, serve until SIGINT or SIGTERM.

use clap::Parser;
use tracing_subscriber::EnvFilter;

use chatlab::config::{Cli, Command};

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .init();
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Bench(args)) => return chatlab::bench::run(args).await,
        Some(Command::BenchBare(args)) => return chatlab::bench::bare::serve(args).await,
        None => {}
    }
    let config = cli.serve;
    let listener = tokio::net::TcpListener::bind(config.bind).await?;
    tracing::info!("chatlab serving http://{} (broker: {})", listener.local_addr()?, config.broker);
    let room = chatlab::build_room(config).await?;
    chatlab::run(listener, room, shutdown_signal()).await?;
    Ok(())
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = terminate => {}
    }
}
