//! Short (interval) polling: `GET /api/poll` every `--poll-interval`, answered at once, news or not; texts go
//! up as `POST /api/messages` on a second connection. Clients start at spread-out moments, as real ones do.

use hyper::{Method, StatusCode};
use tokio::time::MissedTickBehavior;

use super::{join_http, spread, Context, HttpClient};
use crate::http::count_poll;

/// Joins and polls once per interval until the phase stops.
pub(super) async fn join(authority: &str, context: Context) -> anyhow::Result<HttpClient> {
    let (mut down, session, mut since) = join_http(authority, "poll", &context).await?;
    let token = session.clone();
    let interval = context.poll_interval;
    let sending = context.clone();
    let receiver = tokio::spawn(async move {
        // Like `setInterval`: one poll per interval, from a random phase.
        let first = tokio::time::Instant::now() + interval.mul_f64(spread(context.index, 7));
        let mut tick = tokio::time::interval_at(first, interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let stop = context.stop.cancelled();
        tokio::pin!(stop);
        loop {
            tokio::select! {
                () = &mut stop => return,
                _ = tick.tick() => {}
            }
            let path = format!("/api/poll?session={token}&since={since}");
            let Ok((StatusCode::OK, body)) = down.call(Method::GET, &path, None).await else { return };
            since = count_poll(&context.probe, &body).unwrap_or(since);
        }
    });
    Ok(HttpClient::new(authority, session, sending, receiver))
}
