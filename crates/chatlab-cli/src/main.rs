//! The `chatlab` binary: parse flags, set up logging, bind, serve until SIGINT or SIGTERM.

use clap::Parser;
use tracing_subscriber::EnvFilter;

use chatlab_cli::{Cli, Command};

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .init();
    let cli = Cli::parse();
    // `--threads 1`: the whole server on this thread. Otherwise tokio's work-stealing pool, one worker per core
    // unless `--threads` says how many. The bench's bare yardstick takes the same shape as the chatlab it is
    // compared with; the bench's clients always use the pool.
    let server = matches!(cli.command, None | Some(Command::BenchBare(_)));
    let runtime = match (server, cli.serve.threads) {
        (true, Some(1)) => tokio::runtime::Builder::new_current_thread().enable_all().build()?,
        (true, Some(threads)) => {
            tokio::runtime::Builder::new_multi_thread().worker_threads(threads as usize).enable_all().build()?
        }
        _ => tokio::runtime::Builder::new_multi_thread().enable_all().build()?,
    };
    runtime.block_on(async {
        match cli.command {
            Some(Command::Bench(args)) => chatlab_bench::run(args).await,
            Some(Command::BenchBare(args)) => chatlab_bench::bare::serve(args).await,
            None => serve(cli.serve).await,
        }
    })
}

/// Binds, builds the room and serves until SIGINT or SIGTERM.
async fn serve(config: chatlab::config::Config) -> anyhow::Result<()> {
    // A certificate or key that cannot be used ends the process here, before anything is bound.
    chatlab::tls::server_config(&config)?;
    let scheme = if config.tls() { "https" } else { "http" };
    let listener = bind(config.bind, config.listen_backlog)?;
    // The room first: a store that cannot be used ends the process here, before it says it serves.
    let room = chatlab::build_room(config.clone()).await?;
    match config.broker.as_str() {
        "durable" => tracing::info!(
            "chatlab serving {scheme}://{} (broker: durable, --data-dir {})",
            listener.local_addr()?,
            config.data_dir.display()
        ),
        broker => tracing::info!("chatlab serving {scheme}://{} (broker: {broker})", listener.local_addr()?),
    }
    chatlab::run(listener, room, shutdown_signal()).await?;
    Ok(())
}

/// Listens on `addr` with a backlog of `backlog` connections (tokio's own `bind` uses 1,024).
fn bind(addr: std::net::SocketAddr, backlog: u32) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    // As std's and tokio's `bind` do on Unix: a restarted server can bind while old connections are in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
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
