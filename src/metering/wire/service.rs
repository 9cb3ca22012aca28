//! [`Metered`]: the service of one connection, which runs each request and then tells the connection whose
//! bytes the request and its response are.
//!
//! The choice travels from the handler to the service through a task-local slot (`chosen`): the handler
//! future runs inside the service's scope, so no transport needs to carry a handle. The service is made per
//! connection ([`Metered::new`]) and holds the connection's cell, so a request carries nothing extra.

use std::cell::Cell;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use axum::http::{header, StatusCode};
use axum::response::Response;
use axum::routing::future::RouteFuture;
use axum::Router;
use tokio::task::futures::TaskLocalFuture;
use tower::Service;
use tower_http::timeout::TimeoutBody;

use super::connection::{Connection, Owner};
use super::Counted;
use crate::metering::capture::{H2Head, H2Request, Kind};
use crate::metering::session::SessionWire;
use crate::model::Transport;

/// One connection's service: runs each request with a fresh choice slot, then tells the connection whose bytes
/// the request and its response are.
#[derive(Debug, Clone)]
pub struct Metered {
    router: Router,
    connection: Arc<Connection>,
    /// The peer's address, given to each request as axum's `ConnectInfo` (the per-client limits read it).
    peer: SocketAddr,
}

impl Metered {
    /// The service of one accepted socket: runs `router` for each of its requests, attributing their bytes.
    /// `peer` is given to each request as axum's `ConnectInfo`.
    pub fn new<S>(router: Router, stream: &Counted<S, Arc<Connection>>, peer: SocketAddr) -> Self {
        Metered { router, connection: stream.tally().clone(), peer }
    }
}

impl Service<Request> for Metered {
    type Response = Response;
    type Error = Infallible;
    type Future = TaskLocalFuture<Choice, Answered>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: Request) -> Self::Future {
        self.connection.head_complete();
        let stream = self.connection.claim_stream();
        // An HTTP/2 request is kept for a wire view as it was decoded (before `host` is added below).
        let kept = (stream.is_some() && self.connection.metering.sessions().capturing())
            .then(|| Box::new(H2Request::new(request.method(), request.uri(), request.headers())));
        request.extensions_mut().insert(ConnectInfo(self.peer));
        // HTTP/2 names the host in `:authority` (the URI's), not in `Host`: give it as `Host` too, so that every
        // check of the host (the origin check of POSTs, the DNS-rebinding guard) reads the same name over both
        // versions.
        if stream.is_some() && !request.headers().contains_key(header::HOST) {
            if let Some(host) = request.uri().authority().and_then(|a| header::HeaderValue::from_str(a.as_str()).ok()) {
                request.headers_mut().insert(header::HOST, host);
            }
        }
        // A body that stops arriving is given up after `--header-timeout` between its pieces; a request without
        // one (every GET) is not wrapped.
        let request = match self.connection.deadlines.header {
            Some(limit)
                if request.headers().contains_key(header::CONTENT_LENGTH)
                    || request.headers().contains_key(header::TRANSFER_ENCODING) =>
            {
                request.map(|body| Body::new(TimeoutBody::new(limit, body)))
            }
            _ => request,
        };
        // The router is always ready. Its future is named (no box, no copy of the router per request): the
        // empty poll, the commonest request, is a few microseconds all told.
        let routed = self.router.call(request);
        let choice = Choice { technique: Cell::new(NONE), session: Cell::new(None), http2: stream.is_some() };
        CHOSEN.scope(choice, Answered { routed, connection: self.connection.clone(), stream, kept })
    }
}

/// The service as hyper calls it, for HTTP/2: hyper calls it for each request as it accepts the request's stream,
/// in the order the client opened them, and that is when the request claims its stream (the oldest unclaimed
/// one). Through tower's adapter the call would wait for the request's task to first run, and tasks run in any
/// order on a multi-threaded runtime: requests would claim each other's streams.
impl hyper::service::Service<axum::http::Request<hyper::body::Incoming>> for Metered {
    type Response = Response;
    type Error = Infallible;
    type Future = TaskLocalFuture<Choice, Answered>;

    fn call(&self, request: axum::http::Request<hyper::body::Incoming>) -> Self::Future {
        Service::call(&mut self.clone(), request.map(Body::new))
    }
}

/// A request being answered by the router, inside its choice slot's scope; when the response is ready, it tells
/// the connection whose bytes the request and the response are.
pub struct Answered {
    routed: RouteFuture<Infallible>,
    connection: Arc<Connection>,
    /// The HTTP/2 stream of the request; `None` on HTTP/1.1.
    stream: Option<u32>,
    /// The HTTP/2 request, kept while some wire view is open.
    kept: Option<Box<H2Request>>,
}

impl Future for Answered {
    type Output = Result<Response, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Ok(response) = ready!(Pin::new(&mut self.routed).poll(cx));
        let (chosen, session) = CHOSEN.with(|choice| (choice.technique.get(), choice.session.take()));
        let owner = match Transport::ALL.into_iter().find(|t| *t as u8 == chosen) {
            Some(technique) => Owner::Technique(technique),
            None if chosen == WIRE_VIEW => Owner::WireView,
            None => Owner::Nobody,
        };
        let upgrade = response.status() == StatusCode::SWITCHING_PROTOCOLS;
        let sse = response
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|value| value.as_bytes().starts_with(b"text/event-stream"));
        let streamed = match response.extensions().get::<Streaming>() {
            Some(Streaming::Ndjson) => Some(Kind::Ndjson),
            Some(Streaming::Script) => Some(Kind::Script),
            None if sse => Some(Kind::Sse),
            None => None,
        };
        let stream = streamed.is_some();
        let kind = match streamed {
            _ if upgrade => Kind::Upgrade,
            Some(kind) if session.is_some() => kind,
            _ => Kind::Plain,
        };
        if let Some(id) = self.stream {
            let watched = session.as_ref().is_some_and(|s| s.watched());
            let exchange = match self.kept.take() {
                Some(kept) if watched => {
                    let technique = if let Owner::Technique(t) = owner { Some(t) } else { None };
                    let length = hyper::body::Body::size_hint(response.body()).exact();
                    let head = H2Head::response(response.status(), response.headers(), length);
                    Some(Box::new(kept.answered(technique, head)))
                }
                _ => None,
            };
            self.connection.answer_stream(id, owner, session, kind, exchange);
            return Poll::Ready(Ok(response));
        }
        self.connection.answer(owner, session, kind, !upgrade && !stream);
        Poll::Ready(Ok(response))
    }
}

/// Marks a response (in its extensions) whose body is a long stream of events other than SSE, which is known
/// by its type: the connection reads its body back as events for a wire view, and sets no request-head
/// deadline while it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Streaming {
    /// HTTP streaming's NDJSON lines.
    Ndjson,
    /// The forever iframe's `<script>` chunks.
    Script,
}

/// No technique chosen (yet).
const NONE: u8 = u8::MAX;
/// The request is a wire view's.
const WIRE_VIEW: u8 = u8::MAX - 1;

/// What the handler of the current request named.
pub struct Choice {
    /// The technique, as `Transport as u8`, or [`NONE`], or [`WIRE_VIEW`].
    technique: Cell<u8>,
    /// The session, once the handler knows it exists.
    session: Cell<Option<Arc<SessionWire>>>,
    /// The request came over HTTP/2.
    http2: bool,
}

tokio::task_local! {
    /// The current request's [`Choice`].
    static CHOSEN: Choice;
}

/// Records that the current request belongs to `transport`; true if it came over HTTP/2. Called by
/// [`crate::metering::Metering::request`]; outside a metered request (tests, the bench) it does nothing.
pub(crate) fn chosen(transport: Transport) -> bool {
    CHOSEN
        .try_with(|choice| {
            choice.technique.set(transport as u8);
            choice.http2
        })
        .unwrap_or(false)
}

/// Records that the current request is a wire view's: its bytes count under `other.wire_view`.
pub(crate) fn chosen_wire_view() {
    let _ = CHOSEN.try_with(|choice| choice.technique.set(WIRE_VIEW));
}

/// Records that the current request (and, if it upgrades, its connection) is `session`'s.
pub(crate) fn chosen_session(session: Arc<SessionWire>) {
    let _ = CHOSEN.try_with(|choice| choice.session.set(Some(session)));
}
