// HTTPS with HTTP/2, served by chatlab itself (`--tls-self-signed`, no proxy):
// the comparison view (every technique side by side in one page) delivers a
// burst to every pane, and every request of the page went over h2; and the
// six-connection limit of HTTP/1.1 is gone: with ten SSE streams held by
// another page of the same browser, the chat page still connects and sends at
// once (tests/browser/specs/limit.test.mjs shows the same over HTTP/1.1
// waiting after six). And the wire view over https shows what each technique
// costs on HTTP/2: its requests as h2 streams (HPACK-compressed HEADERS beside
// the same heads as HTTP/1.1 text) and a streaming response's DATA frames, at
// phone width too.

import { before, after, test } from 'node:test';
import assert from 'node:assert/strict';
import {
  useServerAndBrowser, newPage, say, waitForMessage, waitConnected, horizontalOverflow, seriousViolations, screenshotPath,
} from '../lib/harness.mjs';

const env = useServerAndBrowser({ before, after }, { tls: true });
const TECHNIQUES = ['ws', 'sse', 'stream', 'iframe', 'longpoll', 'poll'];

/** The protocols the page's requests to `/api/` went over, by path (resource timing). */
const protocols = (page) => page.evaluate(() => performance.getEntriesByType('resource')
  .filter((e) => new URL(e.name).pathname.startsWith('/api/'))
  .map((e) => [new URL(e.name).pathname, e.nextHopProtocol]));

test('the comparison view over https: every pane delivers, every request over h2', { timeout: 120_000 }, async () => {
  const page = await newPage(env.browser, { viewport: { width: 1440, height: 900 } });
  try {
    await page.addInitScript(() => localStorage.setItem('chatlab.lang', 'en'));
    await page.goto(`${env.server.url}/compare.html`);
    assert.ok(env.server.url.startsWith('https://'));
    await page.waitForFunction(
      (names) => names.every((n) => window.compare.panels[n].client.id
        && document.querySelector(`.tpanel[data-technique="${n}"] .status`).dataset.state === 'open')
        && window.compare.settled(),
      TECHNIQUES,
      { timeout: 20_000 },
    );
    const navigation = await page.evaluate(() => performance.getEntriesByType('navigation')[0].nextHopProtocol);
    assert.equal(navigation, 'h2', 'the page itself came over HTTP/2');

    const BURST = 10;
    for (const sender of ['ws', 'poll']) {
      await page.fill('#burst-size', String(BURST));
      await page.selectOption('#sender', sender);
      await page.click('#burst');
      await page.waitForFunction((s) => document.querySelector('#burst-status').textContent === `${s}/${s}`, BURST, { timeout: 20_000 });
    }
    await page.waitForFunction(
      ([names, size]) => names.every((n) => window.compare.panels[n].received.filter((r) => r.message.startsWith('burst ')).length >= size),
      [TECHNIQUES, 2 * BURST],
      { timeout: 20_000 },
    );
    const orders = await page.evaluate((names) => names.map((n) => window.compare.panels[n].received
      .filter((r) => r.message.startsWith('burst ')).map((r) => r.seq).join(',')), TECHNIQUES);
    assert.equal(new Set(orders).size, 1, 'every pane got the same events in the same order');

    const used = await protocols(page);
    const paths = new Set(used.map(([path]) => path));
    for (const path of ['/api/sessions', '/api/messages', '/api/poll']) assert.ok(paths.has(path), `${path} was requested: ${[...paths]}`);
    const notH2 = used.filter(([, protocol]) => protocol !== 'h2');
    assert.deepEqual(notH2, [], 'every request of the page went over HTTP/2');

    // The server saw them over HTTP/2 too, for every HTTP technique.
    const stats = await page.evaluate(async () => (await fetch('/api/stats')).json());
    for (const name of ['sse', 'stream', 'iframe', 'longpoll', 'poll']) {
      const t = stats.transports[name];
      assert.ok(t.http2_requests > 0 && t.http2_requests === t.requests, `${name}: ${t.http2_requests} of ${t.requests} over HTTP/2`);
    }
    assert.equal(stats.transports.ws.http2_requests, 0, 'WebSocket stays on HTTP/1.1');
    assert.deepEqual(page.errors, []);
  } finally {
    await page.context().close().catch(() => {});
  }
});

test('over HTTP/2 ten held streams do not hold up the chat page', { timeout: 90_000 }, async () => {
  const holder = await newPage(env.browser);
  try {
    await holder.goto(`${env.server.url}/healthz`);
    // Ten SSE streams, each its own participant: over HTTP/1.1 the seventh would wait for a connection.
    const opened = await holder.evaluate(async () => {
      window.held = [];
      for (let i = 0; i < 10; i++) {
        const joined = await (await fetch('/api/sessions', { method: 'POST', body: '{"transport":"sse"}' })).json();
        const stream = new EventSource(`/api/sse?session=${joined.session}`);
        await new Promise((resolve, reject) => {
          stream.onopen = resolve;
          setTimeout(() => reject(new Error(`stream ${i} did not open`)), 5000);
        });
        window.held.push(stream);
      }
      return window.held.length;
    });
    assert.equal(opened, 10);

    const page = await holder.context().newPage();
    await page.addInitScript(() => localStorage.setItem('chatlab.lang', 'en'));
    await page.goto(`${env.server.url}/?transport=sse`);
    await waitConnected(page);
    const started = Date.now();
    await say(page, 'beside ten streams');
    await waitForMessage(page, 'beside ten streams');
    assert.ok(Date.now() - started < 5000, 'the send went at once');
    assert.equal(await page.evaluate(() => document.querySelector('#hint').hidden), true, 'no waiting hint');

    // All of it on few connections: one per page at most, not one per stream.
    const stats = await page.evaluate(async () => (await fetch('/api/stats')).json());
    assert.ok(stats.other.http2_connections_total <= 6, `${stats.other.http2_connections_total} HTTP/2 connections`);
    assert.ok(stats.transports.sse.connections_open >= 11);
    await holder.evaluate(() => window.held.forEach((stream) => stream.close()));
  } finally {
    await holder.context().close().catch(() => {});
  }
});

test('the wire view over https: every HTTP technique\'s requests as h2 streams, at phone width', { timeout: 180_000 }, async () => {
  // technique, the record type of its streaming body (if any), the request line of its own GETs
  const cases = [
    ['poll', null, 'GET /api/poll?'],
    ['longpoll', null, 'GET /api/longpoll?'],
    ['sse', 'sse', null],
    ['stream', 'ndjson', null],
    ['iframe', 'script', null],
  ];
  for (const [transport, kind, requestLine] of cases) {
    const page = await newPage(env.browser, { viewport: { width: 390, height: 844 } });
    try {
      await page.addInitScript(() => localStorage.setItem('chatlab.lang', 'en'));
      await page.goto(`${env.server.url}/?transport=${transport}&interval=1&wire=1`);
      await waitConnected(page);
      await page.waitForSelector('#wire .wire-view[data-state="live"]');
      // Two texts: a long poll held since before the wire view opened is not shown (a request is kept only if a
      // wire view was open when it came); the one that follows the first answer is, and the second text answers it.
      for (const n of [1, 2]) {
        const text = `on the wire over h2 (${transport}) #${n}`;
        await say(page, text);
        await waitForMessage(page, text);
      }

      // The POST that said it (and a poll's GETs): an h2 stream with its HEADERS smaller than HTTP/1.1 text.
      const rows = page.locator(`#wire .rec-http[data-version="h2"][data-technique="${transport}"]`);
      const row = requestLine ? rows.filter({ has: page.locator(`.rec-what:text-matches("^${requestLine.replace('?', '\\?')}")`) }).last()
        : rows.filter({ has: page.locator('.rec-what:text-matches("^POST /api/messages")') }).last();
      await row.waitFor({ timeout: 10_000 });
      assert.equal(await row.locator('.rec-badge').textContent(), 'HTTP/2');
      assert.match(await row.getAttribute('data-stream'), /^[1-9]\d*$/, 'a client stream id');
      const heads = Number(await row.getAttribute('data-heads'));
      const asText = Number(await row.getAttribute('data-http1-heads'));
      assert.ok(heads > 0 && heads < asText, `${transport}: ${heads} B of HEADERS against ${asText} B as HTTP/1.1 text`);
      assert.match(await row.locator('.rec-sizes').textContent(),
        /^stream \d+ · ↑ \d[\d,]* B \(HEADERS \d[\d,]* B \+ DATA \d[\d,]* B\) · ↓ \d[\d,]* B \(HEADERS \d[\d,]* B \+ DATA \d[\d,]* B\)/);
      assert.match(await row.locator('.rec-hpack').textContent(), /^heads: \d[\d,]* B on the wire \(HPACK\), \d[\d,]* B as HTTP\/1\.1 text: \d+% saved$/);
      await row.locator('summary').click();
      const shown = await row.locator('pre.rec-head').allTextContents();
      assert.match(shown[0], /^:method: (GET|POST)\n:path: \/api\/[^\n]+\n:authority: [^\n]+\n:scheme: https\n/);
      assert.match(shown[1], /^:status: 20[02]\n/);
      assert.match(await row.locator('.rec-at').last().textContent(),
        /^Connection #\d+: [1-9][\d,]* streams on it so far; its own frames \(SETTINGS, PING, WINDOW_UPDATE\) \d[\d,]* B up, \d[\d,]* B down$/);

      if (kind) {
        // The stream's DATA frames, each a record whose framing is its 9-byte frame header.
        const frame = page.locator(`#wire .rec-${kind}[data-version="h2"]`).last();
        await frame.waitFor({ timeout: 10_000 });
        assert.match(await frame.locator('.rec-sizes').textContent(), /^stream \d+ · \d[\d,]* B on the wire: .*DATA frame header 9 B$/);
      }
      assert.equal(await horizontalOverflow(page), 0, `${transport}: nothing scrolls sideways at 390 px`);
      if (transport === 'poll') {
        assert.deepEqual(await seriousViolations(page), []);
        await page.screenshot({ path: screenshotPath('wire-h2-phone.png') });
      }
      assert.deepEqual(page.errors, []);
    } finally {
      await page.context().close().catch(() => {});
    }
  }
});

test('the wire view\'s HTTP/2 rows in Chinese fit a phone too', { timeout: 60_000 }, async () => {
  const page = await newPage(env.browser, { viewport: { width: 390, height: 844 } });
  try {
    await page.addInitScript(() => localStorage.setItem('chatlab.lang', 'zh'));
    await page.goto(`${env.server.url}/?transport=poll&interval=1&wire=1`);
    await waitConnected(page);
    const row = page.locator('#wire .rec-http[data-version="h2"][data-technique="poll"]').last();
    await row.waitFor({ timeout: 10_000 });
    const sizes = await row.locator('.rec-sizes').textContent();
    assert.ok(/^流 \d+ · ↑ /.test(sizes) && sizes.includes('HEADERS') && sizes.includes('DATA'), sizes);
    const saving = await row.locator('.rec-hpack').textContent();
    assert.ok(saving.startsWith('头部线上 ') && saving.includes('HPACK') && /省了 \d+%$/.test(saving), saving);
    await row.locator('summary').click();
    const connection = await row.locator('.rec-at').last().textContent();
    assert.ok(/^连接 #\d+/.test(connection), connection);
    assert.equal(await horizontalOverflow(page), 0, 'nothing scrolls sideways at 390 px');
    assert.deepEqual(page.errors, []);
  } finally {
    await page.context().close().catch(() => {});
  }
});
