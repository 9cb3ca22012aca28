//! The counters of `/api/stats` in the Prometheus (OpenMetrics) text format, for `GET /metrics`.
//!
//! Why `prometheus-client`: it is the Prometheus project's own Rust client, and its registries are plain values.
//! A [`Collector`] reads the very atomics `/api/stats` reads at each scrape, so the two endpoints can never
//! disagree, and two servers in one process (as in the tests) never share counters. The `metrics` facade with
//! `metrics-exporter-prometheus` would have us install a process-global recorder and copy every counter into
//! it; hand-formatted text would have us re-implement escaping and the exposition format.
//!
//! Names: `chatlab_<what>_total` counters and `chatlab_<what>` gauges, each labelled `transport="ws"|"sse"|
//! "longpoll"|"poll"`; byte counters end in `_bytes_total` and say in their help whether they count wire or
//! payload bytes. Latency is the histogram `chatlab_delivery_latency_seconds`, its buckets at powers of two of
//! microseconds (8 µs to 33.5 s), which are edges of the server's own histogram, so its counts are exact.

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use super::{Counters, Metering};
use crate::model::Transport;

/// The OpenMetrics text content type, as Prometheus asks for it.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The whole exposition, as text.
pub fn render(metering: &Metering) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(MeteringCollector(metering.clone())));
    let mut out = String::new();
    // Writing into a String cannot fail; the collector's own encoding errors are formatting errors only.
    if let Err(error) = prometheus_client::encoding::text::encode(&mut out, &registry) {
        tracing::error!(%error, "could not encode /metrics");
    }
    out
}

/// Reads a [`Metering`] at scrape time.
#[derive(Debug)]
struct MeteringCollector(Metering);

/// A per-technique counter: name (without `_total` and unit), help, unit, and how to read it.
type CounterSpec = (&'static str, &'static str, Option<Unit>, fn(&Counters) -> &AtomicU64);

const COUNTERS: [CounterSpec; 12] = [
    (
        "chatlab_connections",
        "Receiving channels ever opened (WebSockets, SSE, NDJSON and iframe streams, held long polls).",
        None,
        |c| &c.connections_total,
    ),
    ("chatlab_requests", "HTTP requests (POSTs included; a WebSocket counts its upgrade).", None, |c| &c.requests),
    (
        "chatlab_wire_in",
        "Wire bytes read from sockets: request heads and bodies, WebSocket frames with their headers.",
        Some(Unit::Bytes),
        |c| &c.wire_bytes_in,
    ),
    (
        "chatlab_wire_out",
        "Wire bytes written to sockets: status lines, headers, chunk framing, SSE fields, WebSocket frame headers.",
        Some(Unit::Bytes),
        |c| &c.wire_bytes_out,
    ),
    ("chatlab_http2_requests", "Of chatlab_requests, those that came over HTTP/2.", None, |c| &c.http2_requests),
    (
        "chatlab_http2_wire_in",
        "Of chatlab_wire_in, the bytes of HTTP/2 streams (frames, HPACK headers, bodies; inside TLS).",
        Some(Unit::Bytes),
        |c| &c.http2_wire_bytes_in,
    ),
    ("chatlab_http2_wire_out", "Of chatlab_wire_out, the bytes of HTTP/2 streams.", Some(Unit::Bytes), |c| {
        &c.http2_wire_bytes_out
    }),
    (
        "chatlab_payload_out",
        "Payload bytes: the JSON texts of delivered room events only, no headers or framing.",
        Some(Unit::Bytes),
        |c| &c.payload_bytes_out,
    ),
    ("chatlab_events_delivered", "Room events delivered (one per event per receiver).", None, |c| &c.events_delivered),
    ("chatlab_empty_responses", "Poll responses that carried no event.", None, |c| &c.empty_responses),
    ("chatlab_slow_consumers", "Receivers closed for falling more than --send-queue events behind.", None, |c| {
        &c.slow_consumers
    }),
    (
        "chatlab_write_timeouts",
        "Connections closed because a write waited --write-timeout on a peer that does not read.",
        None,
        |c| &c.write_timeouts,
    ),
];

fn label(transport: Transport) -> [(&'static str, &'static str); 1] {
    [("transport", transport.as_str())]
}

impl Collector for MeteringCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let metering = &self.0;
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);

        let mut family = encoder.encode_descriptor(
            "chatlab_connections_open",
            "Live receiving channels now (WebSockets, SSE, NDJSON and iframe streams, held long polls).",
            None,
            MetricType::Gauge,
        )?;
        for transport in Transport::ALL {
            let gauge = ConstGauge::new(get(&metering.of(transport).connections_open) as i64);
            gauge.encode(family.encode_family(&label(transport))?)?;
        }

        for (name, help, unit, read) in COUNTERS {
            let mut family = encoder.encode_descriptor(name, help, unit.as_ref(), MetricType::Counter)?;
            for transport in Transport::ALL {
                ConstCounter::new(get(read(metering.of(transport))))
                    .encode(family.encode_family(&label(transport))?)?;
            }
        }

        let mut family = encoder.encode_descriptor(
            "chatlab_delivery_latency",
            "Publish (the event entering this process) to socket write, per delivered room event.",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        for transport in Transport::ALL {
            let histogram = &metering.of(transport).latency;
            let buckets = histogram.octaves();
            let count = buckets.iter().map(|(_, n)| n).sum();
            family.encode_family(&label(transport))?.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                histogram.sum_secs(),
                count,
                &buckets,
                None,
            )?;
        }

        let others = metering.others();
        let tcp_open = ConstGauge::new(get(&others.tcp_connections_open) as i64);
        tcp_open.encode(encoder.encode_descriptor(
            "chatlab_tcp_connections_open",
            "TCP connections open now, all techniques and none.",
            None,
            MetricType::Gauge,
        )?)?;
        ConstCounter::new(get(&others.tcp_connections_total)).encode(encoder.encode_descriptor(
            "chatlab_tcp_connections",
            "TCP connections ever accepted.",
            None,
            MetricType::Counter,
        )?)?;
        ConstCounter::new(get(&others.wire_bytes_in)).encode(encoder.encode_descriptor(
            "chatlab_untracked_wire_in",
            "Wire bytes read for requests of none of the techniques (stats, metrics, health, static files).",
            Some(&Unit::Bytes),
            MetricType::Counter,
        )?)?;
        ConstCounter::new(get(&others.wire_bytes_out)).encode(encoder.encode_descriptor(
            "chatlab_untracked_wire_out",
            "Wire bytes written for requests of none of the techniques.",
            Some(&Unit::Bytes),
            MetricType::Counter,
        )?)?;
        ConstCounter::new(get(&others.write_timeouts)).encode(encoder.encode_descriptor(
            "chatlab_untracked_write_timeouts",
            "Connections of none of the techniques closed because a write waited --write-timeout.",
            None,
            MetricType::Counter,
        )?)?;
        ConstCounter::new(get(&others.header_timeouts)).encode(encoder.encode_descriptor(
            "chatlab_header_timeouts",
            "Connections closed because no complete request head arrived within --header-timeout.",
            None,
            MetricType::Counter,
        )?)?;
        ConstCounter::new(get(&others.idle_evictions)).encode(encoder.encode_descriptor(
            "chatlab_idle_evictions",
            "Idle sockets closed, oldest idle first, to make room for a new one at --max-sockets.",
            None,
            MetricType::Counter,
        )?)?;
        ConstCounter::new(get(&others.bad_heads)).encode(encoder.encode_descriptor(
            "chatlab_bad_heads",
            "Request heads refused before any handler (400, 414 or 431 with a JSON body), then closed.",
            None,
            MetricType::Counter,
        )?)?;
        for (name, help, unit, value) in [
            (
                "chatlab_tls_handshakes",
                "HTTPS connections whose TLS handshake completed.",
                None,
                &others.tls_handshakes,
            ),
            (
                "chatlab_tls_handshake_failures",
                "TLS handshakes that failed (not those that timed out).",
                None,
                &others.tls_handshake_failures,
            ),
            (
                "chatlab_tls_in",
                "TLS record bytes read from HTTPS sockets, handshakes included.",
                Some(Unit::Bytes),
                &others.tls_bytes_in,
            ),
            (
                "chatlab_tls_out",
                "TLS record bytes written to HTTPS sockets, handshakes included.",
                Some(Unit::Bytes),
                &others.tls_bytes_out,
            ),
            (
                "chatlab_plain_http_refused",
                "Plain-HTTP requests to the HTTPS port, refused 400 with a JSON body.",
                None,
                &others.plain_http_refused,
            ),
            ("chatlab_http2_connections", "Connections that spoke HTTP/2.", None, &others.http2_connections_total),
            (
                "chatlab_http2_connection_in",
                "HTTP/2 connections' own bytes read: the preface and stream 0's frames.",
                Some(Unit::Bytes),
                &others.http2_connection_bytes_in,
            ),
            (
                "chatlab_http2_connection_out",
                "HTTP/2 connections' own frames written (stream 0).",
                Some(Unit::Bytes),
                &others.http2_connection_bytes_out,
            ),
        ] {
            ConstCounter::new(get(value)).encode(encoder.encode_descriptor(
                name,
                help,
                unit.as_ref(),
                MetricType::Counter,
            )?)?;
        }

        ConstCounter::new(get(&others.client_sessions_refused)).encode(encoder.encode_descriptor(
            "chatlab_client_sessions_refused",
            "Joins refused because their client held --max-sessions-per-client sessions.",
            None,
            MetricType::Counter,
        )?)?;
        ConstCounter::new(get(&others.client_texts_refused)).encode(encoder.encode_descriptor(
            "chatlab_client_texts_refused",
            "Texts refused because their client was over --client-rate-limit across its sessions.",
            None,
            MetricType::Counter,
        )?)?;
        ConstGauge::new(get(&others.clients_tracked) as i64).encode(encoder.encode_descriptor(
            "chatlab_clients_tracked",
            "Clients (IP addresses) the per-client limits remember now.",
            None,
            MetricType::Gauge,
        )?)?;

        let view = &metering.sessions().wire_view;
        let open = ConstGauge::new(get(&view.connections_open) as i64);
        open.encode(encoder.encode_descriptor(
            "chatlab_wire_view_connections_open",
            "Wire views (GET /api/wire) open now.",
            None,
            MetricType::Gauge,
        )?)?;
        let view_counters: [(&str, &str, Option<Unit>, &AtomicU64); 6] = [
            (
                "chatlab_wire_view_requests",
                "Requests of the wire view (its log and session counters).",
                None,
                &view.requests,
            ),
            ("chatlab_wire_view_connections", "Wire views ever opened.", None, &view.connections_total),
            (
                "chatlab_wire_view_wire_in",
                "Wire bytes read for the wire view: counted under no technique and no session.",
                Some(Unit::Bytes),
                &view.wire_bytes_in,
            ),
            (
                "chatlab_wire_view_wire_out",
                "Wire bytes written for the wire view: counted under no technique and no session.",
                Some(Unit::Bytes),
                &view.wire_bytes_out,
            ),
            ("chatlab_wire_view_records", "Records queued for wire views.", None, &view.records),
            (
                "chatlab_wire_view_records_dropped",
                "Records dropped because a wire view's queue was full (--wire-view-queue).",
                None,
                &view.dropped,
            ),
        ];
        for (name, help, unit, counter) in view_counters {
            ConstCounter::new(get(counter)).encode(encoder.encode_descriptor(
                name,
                help,
                unit.as_ref(),
                MetricType::Counter,
            )?)?;
        }
        Ok(())
    }
}
