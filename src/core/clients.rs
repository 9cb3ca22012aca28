//! Per-client limits: how many sessions one client holds, and how fast it sends texts across all of them.
//!
//! A client is the peer's IP address (an IPv6 client is its /64, what one host is usually given), or, behind a
//! proxy named by `--trust-proxy`, the address that proxy forwarded ([`client_of`]). Each session counts against
//! the client that joined it from its join until it leaves or its lease runs out
//! (`--max-sessions-per-client`); every text counts against the client that sends it, whichever session it
//! speaks for (`--client-rate-limit`, `--client-rate-burst`), so fresh sessions buy a flooder nothing.
//!
//! The table is this process's own (a cluster counts per process) and bounded by `--max-clients`: a client is
//! forgotten once it holds no session and its text budget is full again, which is what a new client starts with.
//! A session that ends through another process of a cluster is found gone by the room's reaper
//! ([`crate::core::Broker::alive`]), which gives its seat back.

use std::collections::hash_map::Entry;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::Ordering;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use foldhash::HashMap;

use crate::config::Config;
use crate::error::AppError;
use crate::metering::Metering;

/// The per-client limits of one process, and the clients it tracks.
pub(crate) struct Clients {
    max_sessions: usize,
    rate: f64,
    burst: f64,
    max_clients: usize,
    /// A `std` mutex: every section is a map operation or two and never awaits.
    table: Mutex<Table>,
    metering: Metering,
}

#[derive(Default)]
struct Table {
    clients: HashMap<IpAddr, Client>,
    /// Which client each counted session belongs to, so that its leave or expiry gives the seat back, and when
    /// the session was last known to exist.
    sessions: HashMap<String, Held>,
}

/// A seat a session holds.
struct Held {
    client: IpAddr,
    /// When the session was last known to exist (its join, or [`Clients::due`]).
    checked: Instant,
}

/// What is known of one client.
struct Client {
    /// Sessions joined from it and still online (plus joins under way).
    sessions: usize,
    /// Its text budget (a token bucket of `--client-rate-burst`, refilled at `--client-rate-limit` a second).
    tokens: f64,
    last: Instant,
}

impl Client {
    /// The budget as it is at `now`.
    fn refill(&mut self, now: Instant, rate: f64, burst: f64) {
        self.tokens = (self.tokens + now.saturating_duration_since(self.last).as_secs_f64() * rate).min(burst);
        self.last = now;
    }

    /// Whether nothing would be lost by forgetting it: no session, and a budget that would be full by now.
    fn idle(&self, now: Instant, rate: f64, burst: f64) -> bool {
        self.sessions == 0
            && (rate <= 0.0 || self.tokens + now.saturating_duration_since(self.last).as_secs_f64() * rate >= burst)
    }
}

/// A join under way, holding one of its client's seats: the seat is given back when this drops, unless
/// [`Seat::bind`] gave it to the session that joined.
pub(crate) struct Seat<'a> {
    clients: &'a Clients,
    client: Option<IpAddr>,
}

impl Seat<'_> {
    /// The join succeeded: the seat is the session's until it leaves or expires ([`Clients::release`]).
    pub(crate) fn bind(mut self, token: &str) {
        if let Some(client) = self.client.take() {
            let held = Held { client, checked: Instant::now() };
            self.clients.table().sessions.insert(token.to_owned(), held);
        }
    }
}

impl Drop for Seat<'_> {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            self.clients.give_back(client);
        }
    }
}

impl Clients {
    pub(crate) fn new(config: &Config, metering: Metering) -> Self {
        Clients {
            max_sessions: config.max_sessions_per_client,
            rate: config.client_rate_limit,
            burst: config.client_rate_burst.max(1.0),
            max_clients: usize::try_from(config.max_clients).unwrap_or(usize::MAX),
            table: Mutex::new(Table::default()),
            metering,
        }
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The client's entry, made if it is new; `None` when the table is full of clients holding sessions.
    fn entry<'t>(&self, table: &'t mut Table, client: IpAddr, now: Instant) -> Option<&'t mut Client> {
        if !table.clients.contains_key(&client) && table.clients.len() >= self.max_clients {
            let (rate, burst) = (self.rate, self.burst);
            table.clients.retain(|_, known| !known.idle(now, rate, burst));
            if table.clients.len() >= self.max_clients {
                // Still full: clients with no session lose their text budget's state before anyone is refused.
                table.clients.retain(|_, known| known.sessions > 0);
            }
            if table.clients.len() >= self.max_clients {
                return None;
            }
        }
        let made = table.clients.entry(client).or_insert(Client { sessions: 0, tokens: self.burst, last: now });
        Some(made)
    }

    /// Takes a seat for a join from `client` (none is needed from an unknown client, or without a limit).
    ///
    /// # Errors
    /// [`AppError::TooManySessions`] when the client holds `--max-sessions-per-client` sessions;
    /// [`AppError::RoomFull`] when `--max-clients` clients hold sessions.
    pub(crate) fn seat(&self, client: Option<IpAddr>) -> Result<Seat<'_>, AppError> {
        let Some(client) = client.filter(|_| self.max_sessions > 0) else {
            return Ok(Seat { clients: self, client: None });
        };
        let mut table = self.table();
        let refused = match self.entry(&mut table, client, Instant::now()) {
            None => Some(AppError::RoomFull),
            Some(known) if known.sessions >= self.max_sessions => Some(AppError::TooManySessions(self.max_sessions)),
            Some(known) => {
                known.sessions += 1;
                None
            }
        };
        let tracked = table.clients.len();
        drop(table);
        self.metering.others().clients_tracked.store(tracked as u64, Ordering::Relaxed);
        match refused {
            Some(error) => {
                self.metering.others().client_sessions_refused.fetch_add(1, Ordering::Relaxed);
                Err(error)
            }
            None => Ok(Seat { clients: self, client: Some(client) }),
        }
    }

    fn give_back(&self, client: IpAddr) {
        let mut table = self.table();
        if let Entry::Occupied(mut known) = table.clients.entry(client) {
            let entry = known.get_mut();
            entry.sessions = entry.sessions.saturating_sub(1);
            if entry.idle(Instant::now(), self.rate, self.burst) {
                known.remove();
            }
        }
        let tracked = table.clients.len();
        drop(table);
        self.metering.others().clients_tracked.store(tracked as u64, Ordering::Relaxed);
    }

    /// A session left or expired: its client's seat is free again. Nothing for a session not counted here.
    pub(crate) fn release(&self, token: &str) {
        let held = self.table().sessions.remove(token);
        if let Some(held) = held {
            self.give_back(held.client);
        }
    }

    /// At most `max` sessions holding seats here that were last known to exist more than `age` ago, marked as
    /// checked now. In a cluster a session can leave or expire through another process, which cannot tell this
    /// one: the room's reaper asks the broker about these and releases the gone ones.
    pub(crate) fn due(&self, max: usize, age: Duration) -> Vec<String> {
        let now = Instant::now();
        let Some(before) = now.checked_sub(age) else { return Vec::new() };
        let mut table = self.table();
        let mut due = Vec::new();
        for (token, held) in table.sessions.iter_mut() {
            if due.len() >= max {
                break;
            }
            if held.checked <= before {
                held.checked = now;
                due.push(token.clone());
            }
        }
        due
    }

    /// Takes one text from the client's budget.
    ///
    /// # Errors
    /// [`AppError::ClientRateLimited`] with the wait until the next text would pass.
    pub(crate) fn text(&self, client: Option<IpAddr>) -> Result<(), AppError> {
        let Some(client) = client.filter(|_| self.rate > 0.0) else { return Ok(()) };
        let now = Instant::now();
        let mut table = self.table();
        let wait_ms = match self.entry(&mut table, client, now) {
            // Every tracked client holds a session: this one, unseen, has a full budget by definition.
            None => None,
            Some(known) => {
                known.refill(now, self.rate, self.burst);
                if known.tokens >= 1.0 {
                    known.tokens -= 1.0;
                    None
                } else {
                    Some(((1.0 - known.tokens) / self.rate * 1000.0).ceil() as u64)
                }
            }
        };
        let tracked = table.clients.len();
        drop(table);
        self.metering.others().clients_tracked.store(tracked as u64, Ordering::Relaxed);
        match wait_ms {
            None => Ok(()),
            Some(ms) => {
                self.metering.others().client_texts_refused.fetch_add(1, Ordering::Relaxed);
                Err(AppError::ClientRateLimited(ms))
            }
        }
    }

    /// Forgets the clients that hold no session and whose budget is full again (the room's reaper calls it).
    pub(crate) fn sweep(&self) {
        let now = Instant::now();
        let mut table = self.table();
        let (rate, burst) = (self.rate, self.burst);
        table.clients.retain(|_, known| !known.idle(now, rate, burst));
        let tracked = table.clients.len();
        drop(table);
        self.metering.others().clients_tracked.store(tracked as u64, Ordering::Relaxed);
    }
}

/// The client a request comes from: the peer's address, or, when the peer is one of the `trusted` proxies, the
/// right-most address of `forwarded` (the `X-Forwarded-For` values, in order) that is not itself a trusted
/// proxy. Each proxy appends the address it got the request from, so entries right of the first untrusted one
/// were written by trusted proxies, and those left of it by whoever sent the request: only the former are
/// believed. A header that cannot be read (an entry that is not an address) is not believed at all: the peer is
/// the client. IPv6 clients are keyed by their /64, and an IPv4-mapped address is the IPv4 one.
pub fn client_of<'a>(peer: IpAddr, forwarded: impl Iterator<Item = &'a str>, trusted: &[IpAddr]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|t| t.to_canonical() == ip.to_canonical());
    if !is_trusted(&peer) {
        return key(peer);
    }
    let mut entries = Vec::new();
    for value in forwarded {
        for entry in value.split(',') {
            match parse_forwarded(entry.trim()) {
                Some(ip) => entries.push(ip),
                None => return key(peer),
            }
        }
    }
    // Right to left, past the trusted proxies; a chain of nothing but trusted proxies names its first one.
    let client = entries.iter().rev().find(|ip| !is_trusted(ip)).or(entries.first()).copied().unwrap_or(peer);
    key(client)
}

/// One `X-Forwarded-For` entry: an address, with or without a port (`1.2.3.4:5678`, `[2001:db8::1]:443`).
fn parse_forwarded(entry: &str) -> Option<IpAddr> {
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(ip);
    }
    entry.parse::<std::net::SocketAddr>().ok().map(|addr| addr.ip())
}

/// The key a client is counted under: an IPv4 address as it is, an IPv6 address by its /64.
fn key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !u128::from(u64::MAX))),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    /// `X-Forwarded-For` is believed only from a trusted peer, right-most untrusted entry first, and a header
    /// that cannot be read is not believed.
    #[test]
    fn the_client_behind_a_trusted_proxy() {
        let proxy = ip("10.0.0.1");
        let trusted = [proxy, ip("10.0.0.2")];
        let xff = |values: &'static [&'static str]| values.iter().copied();
        assert_eq!(client_of(ip("192.0.2.9"), xff(&["198.51.100.7"]), &trusted), ip("192.0.2.9"), "untrusted peer");
        assert_eq!(client_of(proxy, xff(&["198.51.100.7"]), &trusted), ip("198.51.100.7"));
        assert_eq!(client_of(proxy, xff(&[]), &trusted), proxy, "no header: the proxy itself");
        assert_eq!(
            client_of(proxy, xff(&["6.6.6.6, 198.51.100.7, 10.0.0.2"]), &trusted),
            ip("198.51.100.7"),
            "a forged left part is skipped"
        );
        assert_eq!(client_of(proxy, xff(&["6.6.6.6", "198.51.100.7"]), &trusted), ip("198.51.100.7"), "two headers");
        assert_eq!(client_of(proxy, xff(&["198.51.100.7:4321"]), &trusted), ip("198.51.100.7"), "with a port");
        assert_eq!(client_of(proxy, xff(&["junk, 198.51.100.7"]), &trusted), proxy, "unreadable: not believed");
        assert_eq!(client_of(proxy, xff(&["10.0.0.2"]), &trusted), ip("10.0.0.2"), "only proxies: the first");
        assert_eq!(client_of(ip("::ffff:10.0.0.1"), xff(&["198.51.100.7"]), &trusted), ip("198.51.100.7"));
        assert_eq!(
            client_of(ip("2001:db8:1:2:3:4:5:6"), xff(&[]), &trusted),
            ip("2001:db8:1:2::"),
            "an IPv6 client is its /64"
        );
    }
}
