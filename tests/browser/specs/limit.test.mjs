// Over HTTP/1.1 a browser opens at most six connections to one site, and every
// open SSE stream or held long poll keeps one. Here another page of the same
// browser holds them with SSE streams: the chat page's POST (or its stream)
// then waits for a connection, the page says why, and the hint goes once a
// connection frees and the send (or the stream) goes through.
//
// Over HTTPS (`CHATLAB_TLS=1`) Chromium speaks HTTP/2 to chatlab: every request
// of the browser's pages is a stream of one shared connection, so the same held
// streams hold up nothing, and the page never shows the hint.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  startServer, launchBrowser, newPage, openChat, say, waitForMessage, waitConnected, eventually, WAIT,
} from '../lib/harness.mjs';

/** Opens `n` SSE streams (each its own participant) in `page`; resolves once all are open. */
async function holdConnections(page, n) {
  await page.evaluate(async (count) => {
    window.held = [];
    for (let i = 0; i < count; i++) {
      const joined = await (await fetch('/api/sessions', { method: 'POST', body: '{"transport":"sse"}' })).json();
      const stream = new EventSource(`/api/sse?session=${joined.session}`);
      await new Promise((resolve, reject) => {
        stream.onopen = resolve;
        setTimeout(() => reject(new Error(`stream ${i} did not open`)), 5000);
      });
      window.held.push(stream);
    }
  }, n);
}

const releaseConnections = (page) => page.evaluate(() => window.held.forEach((stream) => stream.close()));

const hintShown = (page) => page.evaluate(() => {
  const hint = document.querySelector('#hint');
  return hint.hidden ? null : hint.textContent;
});

/** From now on, records every text the page's hint shows (`page.hints()` reads them). */
async function recordHints(page) {
  await page.evaluate(() => {
    const hint = document.querySelector('#hint');
    window.hintsShown = [];
    const note = () => { if (!hint.hidden) window.hintsShown.push(hint.textContent); };
    new MutationObserver(note).observe(hint, { attributes: true, childList: true, characterData: true, subtree: true });
  });
  page.hints = () => page.evaluate(() => window.hintsShown);
}

/** The HTTP versions the page's requests to `path` went over (resource timing, once answered), e.g. ['h2']. */
async function versions(page, path) {
  const read = () => page.evaluate((p) => performance.getEntriesByType('resource')
    .filter((e) => new URL(e.name).pathname === p).map((e) => e.nextHopProtocol), path);
  // A POST's entry is added once its answer is read, which may be after its line came back on the stream.
  await eventually(async () => (await read()).length > 0, { message: `a request to ${path} answered` });
  return read();
}

test('a send that waits for a connection says why, then goes through', { timeout: 90_000 }, async () => {
  const server = await startServer();
  const browser = await launchBrowser();
  try {
    // Five streams here, the chat page's own stream the sixth: nothing is left for its POST.
    const holder = await newPage(browser);
    await holder.goto(`${server.url}/healthz`);
    await holdConnections(holder, 5);
    const page = await holder.context().newPage();
    await page.addInitScript(() => localStorage.setItem('chatlab.lang', 'en'));
    await page.goto(`${server.url}/?transport=sse`);
    await waitConnected(page);

    if (server.url.startsWith('https:')) {
      // HTTP/2: the POST is one more stream on the connection the five streams share, and goes at once.
      await recordHints(page);
      await say(page, 'no wait over HTTP/2');
      await waitForMessage(page, 'no wait over HTTP/2');
      assert.deepEqual(await versions(page, '/api/messages'), ['h2']);
      assert.deepEqual(await page.hints(), [], 'no hint while sending');
      return;
    }

    await say(page, 'waiting for a connection');
    await page.waitForFunction(() => !document.querySelector('#hint').hidden, null, { timeout: WAIT });
    const shown = await hintShown(page);
    assert.match(shown, /^Still sending… A browser opens at most 6 HTTP\/1\.1 connections/);
    assert.equal(await page.locator('#messages li[data-type="message"]').count(), 0, 'nothing was sent yet');
    // In the other language the hint is said again, not left in English.
    await page.click('#lang');
    assert.match(await hintShown(page), /^仍在发送…/);
    await page.click('#lang');

    await releaseConnections(holder);
    await waitForMessage(page, 'waiting for a connection');
    await page.waitForFunction(() => document.querySelector('#hint').hidden, null, { timeout: WAIT });
  } finally {
    await browser.close().catch(() => {});
    await server.stop();
  }
});

test('a stream that waits for a connection says why, and stops saying it once open', { timeout: 90_000 }, async () => {
  const server = await startServer();
  const browser = await launchBrowser();
  try {
    // The page is on WebSocket, which does not count against the six; then all six are taken.
    const page = await openChat(browser, server, { transport: 'ws' });
    const holder = await page.context().newPage();
    await holder.goto(`${server.url}/healthz`);
    await holdConnections(holder, 6);

    if (server.url.startsWith('https:')) {
      // HTTP/2: the stream is one more on the connection the six share, and opens at once.
      await recordHints(page);
      await page.check('input[name=technique][value=sse]');
      await page.waitForFunction(() => {
        const status = document.querySelector('#status').dataset;
        return status.technique === 'sse' && status.state === 'open';
      }, null, { timeout: WAIT });
      await say(page, 'on sse over HTTP/2');
      await waitForMessage(page, 'on sse over HTTP/2');
      assert.deepEqual(await versions(page, '/api/messages'), ['h2']);
      const sse = (await page.evaluate(async () => (await fetch('/api/stats')).json())).transports.sse;
      assert.ok(sse.http2_requests > 0 && sse.http2_requests === sse.requests, `${sse.http2_requests} of ${sse.requests} over HTTP/2`);
      assert.deepEqual(await page.hints(), [], 'no hint while connecting');
      assert.deepEqual(page.errors, []);
      return;
    }

    await page.check('input[name=technique][value=sse]');
    await page.waitForFunction(() => !document.querySelector('#hint').hidden, null, { timeout: WAIT });
    assert.equal(await page.evaluate(() => document.querySelector('#status').dataset.state), 'connecting');
    assert.match(await hintShown(page), /^Still connecting… A browser opens at most 6/);
    // In the other language the same hint is said again, not left in English.
    await page.click('#lang');
    assert.match(await hintShown(page), /^仍在连接…/);
    await page.click('#lang');

    await releaseConnections(holder);
    await waitConnected(page);
    await page.waitForFunction(() => document.querySelector('#hint').hidden, null, { timeout: WAIT });
    await say(page, 'on sse now');
    await waitForMessage(page, 'on sse now');
    assert.deepEqual(page.errors, []);
  } finally {
    await browser.close().catch(() => {});
    await server.stop();
  }
});
