// The wire view on the chat page (`?wire=1` opens it at load): on a short-poll
// page it lists `GET /api/poll` with its heads and byte counts, on a WebSocket
// page the frames with direction, opcode, header and payload bytes; and the
// totals it shows equal the server's own per-session counters
// (GET /api/sessions/{session}/wire), its own socket counted apart.

import { before, after, test } from 'node:test';
import assert from 'node:assert/strict';
import { useServerAndBrowser, newPage, waitConnected, getJson, eventually, say, identity } from '../lib/harness.mjs';

const env = useServerAndBrowser({ before, after });

async function openWithWire(transport, interval = 2) {
  const page = await newPage(env.browser, { viewport: { width: 390, height: 844 } });
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

test('short poll: GET /api/poll with its heads and byte counts; totals equal the server\'s', { timeout: 60_000 }, async () => {
  const page = await openWithWire('poll', 2);
  const row = page.locator('#wire .rec-http[data-request-line^="GET /api/poll?"]').first();
  await row.waitFor();
  const up = Number(await row.getAttribute('data-up'));
  const down = Number(await row.getAttribute('data-down'));
  // A poll is a few hundred bytes of heads around a small JSON body.
  assert.ok(up > 50, `request bytes ${up}`);
  assert.ok(down > 50, `response bytes ${down}`);
  const sizes = await row.locator('.rec-sizes').textContent();
  assert.match(sizes, /↑ \d[\d,]* B \(head \d[\d,]* B \+ body 0 B\) · ↓ \d[\d,]* B \(head \d[\d,]* B \+ body \d[\d,]* B\)/);

  // Expanded, it shows both heads as text.
  await row.locator('summary').click();
  const heads = await row.locator('pre.rec-head').allTextContents();
  assert.match(heads[0], /^GET \/api\/poll\?session=[^ ]+ HTTP\/1\.1\n/);
  assert.match(heads[1], /^HTTP\/1\.1 200 OK\n/i);

  const { session } = await identity(page);
  const server = await totalsMatchServer(page, session);
  assert.ok(server.requests >= 2, 'the join and at least one poll');
  assert.equal(server.frames_in + server.frames_out, 0, 'no frames on a short-poll channel');

  // The wire view's own socket is counted apart, never in the session's counters.
  const stats = await getJson(env.server, '/api/stats');
  assert.ok(stats.other.wire_view.wire_bytes_out > 0, 'other.wire_view counts the wire view');
  assert.ok(Number(await page.locator('#wire .wire-self').getAttribute('data-bytes')) > 0);
  assert.deepEqual(page.errors, []);
  await page.context().close();
});

test('WebSocket: each frame with direction, opcode, header and payload bytes; totals equal the server\'s', { timeout: 60_000 }, async () => {
  const page = await openWithWire('ws');
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

  // Hidden, the view closes its socket (and costs nothing); shown again, it reopens.
  await page.evaluate(() => { document.querySelector('#wire').hidden = true; });
  await page.waitForSelector('#wire .wire-view[data-state="idle"]', { state: 'attached' });
  await page.evaluate(() => { document.querySelector('#wire').hidden = false; });
  await page.waitForSelector('#wire .wire-view[data-state="live"]');
  assert.deepEqual(page.errors, []);
  await page.context().close();
});
