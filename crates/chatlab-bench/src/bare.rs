//! `chatlab bench-bare` (hidden): a bare axum server answering every `GET` with one fixed body, the yardstick
//! for `chatlab bench --wrk`. It is a subcommand of the same binary, not an example, so the bench can start it
//! as a child process (its own CPU, like chatlab's) with nothing else to build, on the same tokio runtime
//! (`#[tokio::main]`, one worker per core) and the same axum as chatlab: the difference wrk sees is chatlab's
//! own work per request (session lookup, cursor, metering, body), not a different stack.

use std::net::SocketAddr;

use axum::http::header;
use axum::response::IntoResponse;
use axum::Router;
use clap::Args;

/// `chatlab bench-bare`: serve one fixed body on every path.
#[derive(Debug, Clone, Args)]
pub struct BareArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8181")]
    pub bind: SocketAddr,

    /// The body of every answer, served as `application/json` with `Cache-Control: no-store` (chatlab's empty
    /// poll answer by default, its epoch as long as the in-memory room's, so both send the same number of bytes).
    #[arg(long, default_value = r#"{"events":[],"next":0,"epoch":"0000000000000000"}"#)]
    pub body: String,
}

/// Serves until the process is killed.
///
/// # Errors
/// When the address cannot be bound.
pub async fn serve(args: BareArgs) -> anyhow::Result<()> {
    let body: &'static str = Box::leak(args.body.into_boxed_str());
    let app = Router::new().fallback(move || async move {
        ([(header::CONTENT_TYPE, "application/json"), (header::CACHE_CONTROL, "no-store")], body).into_response()
    });
    let listener = tokio::net::TcpListener::bind(args.bind).await?;
    axum::serve(listener, app).await?;
    Ok(())
}
