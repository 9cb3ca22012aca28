// The wire view on the chat page (`?wire=1` opens it at load): on a short-poll
// page it lists `GET /api/poll` with its heads and byte counts, on a WebSocket
// page the frames with direction, opcode, header and payload bytes; and the
// totals it shows equal the server's own per-session counters
// (GET /api/sessions/{session}/wire), its own socket counted apart.
//
// Over HTTPS (`CHATLAB_TLS=1`) Chromium speaks HTTP/2 to chatlab, and the same
// poll is an HTTP/2 row: a stream id, the heads as decoded (pseudo-headers
// first) and their HPACK-compressed HEADERS bytes beside the same heads as
// HTTP/1.1 text. A WebSocket still opens with an HTTP/1.1 upgrade (`101`) on a
// TLS connection of its own (chatlab offers no extended CONNECT), so its frames
// are the same.

import { before, after, test } from 'node:test';
import assert from 'node:assert/strict';
import { useServerAndBrowser, newPage, waitConnected, getJson, eventually, say, identity } from '../lib/harness.mjs';

const env = useServerAndBrowser({ before, after });

async function openWithWire(transport, interval = 2, { prepare = async () => {} } = {}) {
  const page = await newPage(env.browser, { viewport: { width: 390, height: 844 } });
  await prepare(page);
  await page.addInitScript(() => localStorage.setItem('chatlab.lang', 'en'));
  await page.goto(`${env.server.url}/?transport=${transport}&interval=${interval}&wire=1`);
  await waitConnected(page);
  await page.waitForSelector('#wire .wire-view[data-state="live"]');
  return page;
}

/** The totals the page shows (data-* of the totals line), as numbers. */
function shownTotals(page) {
  return page.evaluate(() => {
    const d = document.querySelector('#wire .wire-totals').dataset;
    return {
      requests: Number(d.requests),
      wire_bytes_in: Number(d.wireBytesIn),
      wire_bytes_out: Number(d.wireBytesOut),
      frames_in: Number(d.framesIn),
      frames_out: Number(d.framesOut),
      events_delivered: Number(d.eventsDelivered),
    };
  });
}

/** Waits until the page's totals equal the server's counters for the session at the same moment (both quiet). */
async function totalsMatchServer(page, session) {
  let last;
  await eventually(async () => {
    const server = (await getJson(env.server, `/api/sessions/${session}/wire`)).session_wire;
    const shown = await shownTotals(page);
    last = { server, shown };
    return Object.keys(shown).every((key) => shown[key] === server[key]);
  }, { timeout: 15_000, interval: 150, message: 'the wire view totals to equal the server counters' });
  return last.server;
}

/** The server under test speaks HTTPS, so Chromium speaks HTTP/2 to it (CHATLAB_TLS=1). */
const overH2 = () => env.server.url.startsWith('https:');

/** The numbers of a sizes line, in order (`1,234 B` is 1234). */
const numbers = (text) => [...text.matchAll(/\d[\d,]*/g)].map((m) => Number(m[0].replaceAll(',', '')));

test('short poll: GET /api/poll with its heads and byte counts; totals equal the server\'s', { timeout: 60_000 }, async () => {
  const page = await openWithWire('poll', 2);
  const row = page.locator('#wire .rec-http[data-request-line^="GET /api/poll?"]').first();
  await row.waitFor();
  const up = Number(await row.getAttribute('data-up'));
  const down = Number(await row.getAttribute('data-down'));
  const sizes = await row.locator('.rec-sizes').textContent();
  await row.locator('summary').click();
  const heads = await row.locator('pre.rec-head').allTextContents();

  if (overH2()) {
    // One stream of the page's HTTP/2 connection: its HEADERS (HPACK) and DATA frames both ways.
    assert.equal(await row.getAttribute('data-version'), 'h2');
    assert.equal(await row.locator('.rec-badge').textContent(), 'HTTP/2');
    const stream = await row.getAttribute('data-stream');
    assert.match(stream, /^[1-9]\d*$/, 'a client stream id');
    assert.equal(Number(stream) % 2, 1, 'client streams are odd');
    assert.match(sizes, /^stream \d+ · ↑ \d[\d,]* B \(HEADERS \d[\d,]* B \+ DATA 0 B\) · ↓ \d[\d,]* B \(HEADERS \d[\d,]* B \+ DATA \d[\d,]* B\)$/);
    const [n, shownUp, upHead, , shownDown, downHead, downData] = numbers(sizes);
    assert.equal(n, Number(stream));
    assert.deepEqual([shownUp, shownDown], [up, down]);
    // A GET is one HEADERS frame (9 bytes of frame header and the compressed head); the answer HEADERS and DATA.
    assert.ok(upHead > 9 && up >= upHead, `request: ${up} B, HEADERS ${upHead} B`);
    assert.ok(downHead > 9 && downData > 9 && down >= downHead + downData, `response: ${down} B, HEADERS ${downHead} B, DATA ${downData} B`);
    const hpack = Number(await row.getAttribute('data-heads'));
    const asText = Number(await row.getAttribute('data-http1-heads'));
    assert.equal(hpack, upHead + downHead);
    assert.ok(hpack < asText, `heads: ${hpack} B as HEADERS, ${asText} B as HTTP/1.1 text`);
    assert.match(await row.locator('.rec-hpack').textContent(),
      new RegExp(`^heads: ${hpack.toLocaleString('en-US')} B on the wire \\(HPACK\\), ${asText.toLocaleString('en-US')} B as HTTP/1\\.1 text: \\d+% saved$`));
    // Expanded: the heads as decoded, pseudo-headers first; the frames each way.
    assert.match(heads[0], /^:method: GET\n:path: \/api\/poll\?session=[^\n]+\n:authority: 127\.0\.0\.1:\d+\n:scheme: https\n/);
    assert.doesNotMatch(heads[0], /HTTP\/1\.1/);
    assert.match(heads[1], /^:status: 200\n/);
    const frames = (await row.locator('.rec-at').first().textContent()).match(/^Frames: (\d+) up, (\d+) down;/);
    assert.ok(frames, 'the frame counts are shown');
    assert.ok(Number(frames[1]) >= 1 && Number(frames[2]) >= 2, `frames: ${frames[1]} up, ${frames[2]} down`);
    assert.match(await row.locator('.rec-at').last().textContent(), /^Connection #\d+: [1-9][\d,]* streams on it so far;/);
  } else {
    assert.equal(await row.getAttribute('data-version'), 'http/1.1');
    // A poll is a few hundred bytes of heads around a small JSON body.
    assert.ok(up > 50, `request bytes ${up}`);
    assert.ok(down > 50, `response bytes ${down}`);
    assert.match(sizes, /↑ \d[\d,]* B \(head \d[\d,]* B \+ body 0 B\) · ↓ \d[\d,]* B \(head \d[\d,]* B \+ body \d[\d,]* B\)/);
    // Expanded, it shows both heads as text.
    assert.match(heads[0], /^GET \/api\/poll\?session=[^ ]+ HTTP\/1\.1\n/);
    assert.match(heads[1], /^HTTP\/1\.1 200 OK\n/i);
  }

  const { session } = await identity(page);
  const server = await totalsMatchServer(page, session);
  assert.ok(server.requests >= 2, 'the join and at least one poll');
  assert.equal(server.frames_in + server.frames_out, 0, 'no frames on a short-poll channel');

  // The wire view's own socket is counted apart, never in the session's counters.
  const stats = await getJson(env.server, '/api/stats');
  assert.ok(stats.other.wire_view.wire_bytes_out > 0, 'other.wire_view counts the wire view');
  assert.ok(Number(await page.locator('#wire .wire-self').getAttribute('data-bytes')) > 0);
  // The server says which HTTP version carried the polls.
  const poll = stats.transports.poll;
  if (overH2()) assert.ok(poll.http2_requests > 0 && poll.http2_requests === poll.requests, `${poll.http2_requests} of ${poll.requests} over HTTP/2`);
  else assert.equal(poll.http2_requests, 0);
  assert.deepEqual(page.errors, []);
  await page.context().close();
});

/**
 * Records the handshake answer of every WebSocket the page opens, as Chromium saw it (DevTools protocol):
 * [{url, status, head}], `head` the response head as text when the browser has it.
 */
async function watchHandshakes(page) {
  const sockets = new Map();
  const cdp = await page.context().newCDPSession(page);
  cdp.on('Network.webSocketCreated', ({ requestId, url }) => sockets.set(requestId, { url, status: null, head: null }));
  cdp.on('Network.webSocketHandshakeResponseReceived', ({ requestId, response }) => {
    const socket = sockets.get(requestId);
    if (socket) Object.assign(socket, { status: response.status, head: response.headersText || null });
  });
  await cdp.send('Network.enable');
  page.handshakes = () => [...sockets.values()];
}

test('WebSocket: each frame with direction, opcode, header and payload bytes; totals equal the server\'s', { timeout: 60_000 }, async () => {
  const page = await openWithWire('ws', 2, { prepare: watchHandshakes });

  // Over HTTPS too, Chromium opens its WebSockets (the chat's and the wire view's) with an HTTP/1.1 upgrade,
  // each on a connection of its own: chatlab does not offer HTTP/2's extended CONNECT (RFC 8441), whose answer
  // would be a 200 on a stream of the page's HTTP/2 connection.
  const scheme = overH2() ? 'wss:' : 'ws:';
  await eventually(() => page.handshakes().filter((h) => h.status !== null).length >= 2, { message: 'both handshakes answered' });
  for (const path of ['/ws', '/api/wire']) {
    const handshake = page.handshakes().find((h) => new URL(h.url).pathname === path);
    assert.ok(handshake, `a WebSocket to ${path}: ${JSON.stringify(page.handshakes())}`);
    assert.equal(new URL(handshake.url).protocol, scheme);
    assert.equal(handshake.status, 101, `${path}: 101 Switching Protocols`);
    if (handshake.head !== null) assert.match(handshake.head, /^HTTP\/1\.1 101 /);
  }
  await say(page, 'hello, wire');

  // The page's frame (masked: 2 header bytes + 4 mask bytes for a short payload) ...
  const sent = page.locator('#wire .rec-frame[data-dir="up"]').filter({ hasText: 'hello, wire' }).first();
  await sent.waitFor();
  assert.equal(await sent.getAttribute('data-opcode'), 'text');
  const sentPayload = Number(await sent.getAttribute('data-payload'));
  assert.ok(sentPayload >= 'hello, wire'.length);
  assert.equal(Number(await sent.getAttribute('data-header')), sentPayload < 126 ? 6 : 8);

  // ... and the server's frame carrying the line back (unmasked: 2 or 4 header bytes).
  const back = page.locator('#wire .rec-frame[data-dir="down"]').filter({ hasText: 'hello, wire' }).first();
  await back.waitFor();
  const payload = Number(await back.getAttribute('data-payload'));
  assert.equal(Number(await back.getAttribute('data-header')), payload < 126 ? 2 : 4);
  assert.match(await back.locator('.rec-sizes').textContent(), /^header [24] B \+ payload \d[\d,]* B = \d[\d,]* B$/);

  const { session } = await identity(page);
  const server = await totalsMatchServer(page, session);
  assert.equal(server.requests, 1, 'a WebSocket page: its upgrade is its only HTTP request');
  assert.ok(server.frames_in >= 1 && server.frames_out >= 2, 'the welcome and the line back, the line up');
  const ws = (await getJson(env.server, '/api/stats')).transports.ws;
  assert.ok(ws.requests >= 1);
  assert.equal(ws.http2_requests, 0, 'the upgrade came over HTTP/1.1');

  // Hidden, the view closes its socket (and costs nothing); shown again, it reopens.
  await page.evaluate(() => { document.querySelector('#wire').hidden = true; });
  await page.waitForSelector('#wire .wire-view[data-state="idle"]', { state: 'attached' });
  await page.evaluate(() => { document.querySelector('#wire').hidden = false; });
  await page.waitForSelector('#wire .wire-view[data-state="live"]');
  assert.deepEqual(page.errors, []);
  await page.context().close();
});
