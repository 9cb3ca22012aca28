//! Long polling: `GET /api/longpoll` held by the server until there is news (or its timeout), asked again at
//! once with the returned cursor; texts go up as `POST /api/messages` on a second connection.

use hyper::{Method, StatusCode};

use super::{join_http, Context, HttpClient};
use crate::http::count_poll;

/// Joins and polls back to back until the phase stops.
pub(super) async fn join(authority: &str, context: Context) -> anyhow::Result<HttpClient> {
    let (mut down, session, mut since) = join_http(authority, "longpoll", &context).await?;
    let token = session.clone();
    let sending = context.clone();
    let receiver = tokio::spawn(async move {
        let stop = context.stop.cancelled();
        tokio::pin!(stop);
        loop {
            let path = format!("/api/longpoll?session={token}&since={since}");
            let answer = tokio::select! {
                () = &mut stop => return,
                answer = down.call(Method::GET, &path, None) => answer,
            };
            let Ok((StatusCode::OK, body)) = answer else { return };
            since = count_poll(&context.probe, &body).unwrap_or(since);
        }
    });
    Ok(HttpClient::new(authority, session, sending, receiver))
}
