// A line shows at once as "sending…" (greyed) until the server has it, then as
// the delivered line in its place, never twice; a send the server refuses says
// so and gives the text back (one that merely found no connection stays
// "sending…" and goes once the page is connected again: see outbox.test.mjs).

import { before, after, test } from 'node:test';
import assert from 'node:assert/strict';
import {
  useServerAndBrowser, startServer, launchBrowser, newPage, openChat, say, waitForMessage, waitConnected, sleep, eventually, WAIT,
} from '../lib/harness.mjs';

const env = useServerAndBrowser({ before, after });

/** The lines on the page with this text: [{type, state, classes}]. */
const linesWith = (page, text) => page.evaluate((t) =>
  [...document.querySelectorAll('#messages li')]
    .filter((li) => li.querySelector('.text')?.textContent === t)
    .map((li) => ({ type: li.dataset.type, state: li.querySelector('.state')?.textContent ?? null, classes: li.className })),
text);

test('a slow send shows "sending…" until the server has it, then one delivered line', { timeout: 60_000 }, async () => {
  // Five SSE streams of another tab and the page's own stream take the browser's six connections to the
  // site: the page's POST waits for one, as on a slow network. Over HTTP/2 (CHATLAB_TLS=1) every request is a
  // stream of one shared connection: a server that allows six open streams on it (`--h2-max-streams 6`,
  // announced in its SETTINGS) makes the POST wait the same way.
  const h2 = env.server.url.startsWith('https:');
  const server = h2 ? await startServer({ args: ['--h2-max-streams', '6'] }) : env.server;
  try {
    const holder = await newPage(env.browser);
    await holder.goto(`${server.url}/healthz`);
    await holder.evaluate(async () => {
      window.held = [];
      for (let i = 0; i < 5; i++) {
        const joined = await (await fetch('/api/sessions', { method: 'POST', body: '{"transport":"sse"}' })).json();
        const stream = new EventSource(`/api/sse?session=${joined.session}`);
        await new Promise((resolve, reject) => { stream.onopen = resolve; setTimeout(() => reject(new Error('no stream')), 5000); });
        window.held.push(stream);
      }
    });
    const page = await holder.context().newPage();
    const errors = [];
    page.on('pageerror', (err) => errors.push(String(err)));
    await page.addInitScript(() => localStorage.setItem('chatlab.lang', 'en'));
    await page.goto(`${server.url}/?transport=sse`);
    await waitConnected(page);

    await say(page, 'a slow line');
    assert.equal(await page.inputValue('#message'), '', 'the input is free for the next line');
    const waiting = await linesWith(page, 'a slow line');
    assert.equal(waiting.length, 1);
    assert.equal(waiting[0].type, 'pending');
    assert.equal(waiting[0].state, 'sending…');
    const grey = await page.evaluate(() => getComputedStyle(document.querySelector('li.pending .text')).color);
    assert.equal(grey, 'rgb(75, 85, 99)', 'the waiting line is greyed');
    await sleep(1000);
    assert.equal((await linesWith(page, 'a slow line'))[0].state, 'sending…', 'still sending while no connection is free');

    await holder.evaluate(() => window.held.forEach((stream) => stream.close()));
    await waitForMessage(page, 'a slow line');
    await sleep(300);
    const delivered = await linesWith(page, 'a slow line');
    assert.equal(delivered.length, 1, `one line, not two: ${JSON.stringify(delivered)}`);
    assert.equal(delivered[0].type, 'message');
    assert.equal(await page.locator('#messages li.pending').count(), 0);
    assert.deepEqual(errors, []);
    if (h2) {
      // The POST went as a stream of the shared HTTP/2 connection (its entry is added once its answer is read).
      const posts = () => page.evaluate(() => performance.getEntriesByType('resource')
        .filter((e) => new URL(e.name).pathname === '/api/messages').map((e) => e.nextHopProtocol));
      await eventually(async () => (await posts()).length > 0, { message: 'the POST answered' });
      assert.deepEqual(await posts(), ['h2']);
    }
    await holder.context().close();
  } finally {
    if (h2) await server.stop();
  }
});

for (const transport of ['ws', 'poll']) {
  test(`${transport}: an own line is shown once, delivered in place of its pending line`, { timeout: 60_000 }, async () => {
    const page = await openChat(env.browser, env.server, { transport, interval: 2 });
    const other = await openChat(env.browser, env.server, { transport: 'ws' });
    for (let n = 1; n <= 5; n++) await say(page, `line ${n}`);
    await say(other, 'from the other page');
    // Right away every line is on screen, in order, whatever the technique's delay.
    const now = await page.evaluate(() => [...document.querySelectorAll('#messages li.mine .text')].map((e) => e.textContent));
    assert.deepEqual(now, ['line 1', 'line 2', 'line 3', 'line 4', 'line 5']);
    await waitForMessage(page, 'line 5');
    await waitForMessage(page, 'from the other page');
    await sleep(300);
    for (let n = 1; n <= 5; n++) {
      const lines = await linesWith(page, `line ${n}`);
      assert.deepEqual(lines.map((l) => l.type), ['message'], `line ${n} once, delivered`);
    }
    assert.equal(await page.locator('#messages li.pending').count(), 0);
    for (const p of [page, other]) {
      assert.deepEqual(p.errors, []);
      await p.context().close();
    }
  });
}

for (const transport of ['longpoll', 'ws']) {
  test(`${transport}: a send the server refuses says so and gives the text back`, { timeout: 60_000 }, async () => {
    const server = await startServer({ args: ['--max-message-chars', '10'] });
    const browser = await launchBrowser();
    try {
      const page = await openChat(browser, server, { transport });
      await say(page, 'far too long for this room');
      await page.waitForSelector('#messages li.pending.failed', { timeout: WAIT });
      assert.equal(await page.textContent('#messages li.pending.failed .state'), 'Not sent: the text is too long');
      assert.equal(await page.inputValue('#message'), '');
      await page.click('#messages li.pending.failed button.put-back');
      assert.equal(await page.inputValue('#message'), 'far too long for this room', 'the text is back in the input');
      assert.equal(await page.locator('#messages li.pending').count(), 0);
      assert.equal(await page.evaluate(() => window.chatlab.client.outbox.length), 0, 'a refused line is not sent again');
      assert.deepEqual(page.errors, []);
    } finally {
      await browser.close().catch(() => {});
      await server.stop();
    }
  });
}
