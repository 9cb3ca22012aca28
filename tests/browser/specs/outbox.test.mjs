// The outbox: a line typed while the connection is down stays "sending…" and is
// delivered exactly once when the page is connected again; a line whose answer
// was lost (the socket cut before the ack, a POST's answer dropped) is sent again
// with the same ref and still reaches the room once.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  startServer, launchBrowser, openChat, say, waitForMessage, waitConnected, freePort, sleep, eventually,
} from '../lib/harness.mjs';

/** The lines on the page with this text: [{type, state}]. */
const linesWith = (page, text) => page.evaluate((t) =>
  [...document.querySelectorAll('#messages li')]
    .filter((li) => li.querySelector('.text')?.textContent === t)
    .map((li) => ({ type: li.dataset.type, state: li.querySelector('.state')?.textContent ?? null })),
text);

/** How many times the room holds a message with this text: read by a new poller from the start of history. */
async function inRoom(server, text) {
  const joined = await (await fetch(`${server.url}/api/sessions`, { method: 'POST', body: '{"transport":"poll"}' })).json();
  const body = await (await fetch(`${server.url}/api/poll?session=${joined.session}&since=0`)).json();
  await fetch(`${server.url}/api/sessions/${joined.session}`, { method: 'DELETE' });
  return body.events.filter((e) => e.type === 'message' && e.message === text).length;
}

/** Asserts the page shows the line once, delivered, with nothing left pending. */
async function shownOnce(page, text) {
  await waitForMessage(page, text, 20_000);
  await sleep(500);
  const lines = await linesWith(page, text);
  assert.deepEqual(lines.map((l) => l.type), ['message'], `one delivered line: ${JSON.stringify(lines)}`);
  assert.equal(await page.locator('#messages li.pending').count(), 0, 'nothing left pending');
  // The line may be back on the channel before its (re)send is answered: the outbox empties once it is.
  await eventually(() => page.evaluate(() => window.chatlab.client.outbox.length === 0), { message: 'an empty outbox' });
}

test('ws: a line typed while the server is down stays "sending…", then is delivered exactly once', { timeout: 90_000 }, async () => {
  const port = await freePort();
  let server = await startServer({ port });
  const browser = await launchBrowser();
  try {
    const page = await openChat(browser, server, { transport: 'ws' });
    await server.stop();
    await page.waitForFunction(() => document.querySelector('#status').dataset.state !== 'open');
    await say(page, 'typed while the server was down');
    assert.equal(await page.inputValue('#message'), '', 'the input is free for the next line');
    await sleep(1500);
    assert.deepEqual(await linesWith(page, 'typed while the server was down'), [{ type: 'pending', state: 'sending…' }],
      'still sending while there is no server');

    server = await startServer({ port });
    await waitConnected(page, 30_000);
    await shownOnce(page, 'typed while the server was down');
    assert.equal(await inRoom(server, 'typed while the server was down'), 1, 'the room holds it once');
    assert.deepEqual(page.errors, []);
  } finally {
    await browser.close().catch(() => {});
    await server.stop();
  }
});

test('ws: a line whose ack was lost with its socket is sent again and is in the room once', { timeout: 60_000 }, async () => {
  const server = await startServer();
  const browser = await launchBrowser();
  try {
    const page = await openChat(browser, server, { transport: 'ws' });
    // The next frame the page sends is followed at once by a close of its socket: the server gets the line, the
    // page never reads the ack (a socket closing drops what arrives).
    await page.evaluate(() => {
      const socket = window.chatlab.client.transport.socket;
      const send = socket.send.bind(socket);
      socket.send = (data) => { send(data); socket.close(); };
    });
    await say(page, 'the ack of this line is lost');
    await shownOnce(page, 'the ack of this line is lost');
    assert.equal(await inRoom(server, 'the ack of this line is lost'), 1, 'sent twice, published once');
    assert.deepEqual(page.errors, []);
  } finally {
    await browser.close().catch(() => {});
    await server.stop();
  }
});

test('poll: a POST whose answer was lost is sent again with the same Idempotency-Key and is in the room once', { timeout: 60_000 }, async () => {
  const server = await startServer();
  const browser = await launchBrowser();
  try {
    const page = await openChat(browser, server, { transport: 'poll', interval: 0.5 });
    const keys = [];
    let dropped = 0;
    await page.route('**/api/messages*', async (route) => {
      keys.push(route.request().headers()['idempotency-key']);
      const response = await route.fetch(); // the server has it ...
      if (dropped === 0) {
        dropped += 1;
        await route.abort('connectionreset'); // ... but the page never hears so
      } else {
        await route.fulfill({ response });
      }
    });
    await say(page, 'the answer to this post is lost');
    await shownOnce(page, 'the answer to this post is lost');
    await eventually(() => keys.length >= 2, { message: 'the POST sent again' });
    assert.ok(keys[0] && keys[0] === keys[1], `the same key both times: ${JSON.stringify(keys)}`);
    assert.equal(await inRoom(server, 'the answer to this post is lost'), 1, 'sent twice, published once');
    assert.deepEqual(page.errors, []);
  } finally {
    await browser.close().catch(() => {});
    await server.stop();
  }
});
