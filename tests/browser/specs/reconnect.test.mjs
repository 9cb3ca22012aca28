// After a dropped connection the page reconnects by itself, with backoff, and
// says so: here the server is stopped and a new one started on the same port.
// A durable room (the default, restarted on the same --data-dir) still knows
// the session: the page resumes it, same identity, no rejoin notice. An
// in-memory room (--broker memory) does not, so the page joins again under the
// same nickname and says so plainly; while it is away, its online list greys.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  startServer, launchBrowser, openChat, say, waitForMessage, waitForNotice, waitConnected, freePort, identity, eventually,
  getJson, tempDataDir, roomEvents,
} from '../lib/harness.mjs';
import fs from 'node:fs';

for (const technique of ['ws', 'sse', 'stream', 'iframe', 'longpoll', 'poll']) {
  test(`${technique}: rejoins after an in-memory server restarts`, { timeout: 90_000 }, async () => {
    const port = await freePort();
    let server = await startServer({ port, args: ['--broker', 'memory'] });
    const browser = await launchBrowser();
    try {
      const page = await openChat(browser, server, { transport: technique, interval: 0.5 });
      // A chosen name (a new server would hand out the same guest name anyway).
      await say(page, `/nick keeper-${technique}`);
      await eventually(async () => (await identity(page)).nickname === `keeper-${technique}`, { message: 'the rename' });
      const before = await identity(page);
      if (technique !== 'poll') {
        // The channel is open at the server, so the goodbye has somewhere to go: a long poller's first answer
        // (its own join notice) comes at once, and its next request may still be on its way.
        await eventually(async () => (await getJson(server, '/api/stats')).transports[technique].connections_open >= 1,
          { message: `a ${technique} channel open at the server` });
      }

      await server.stop(); // SIGTERM: the server says goodbye, then closes every channel
      // A short poller has no request open at that moment: it only sees the failure.
      if (technique !== 'poll') await waitForNotice(page, 'Server has disconnected');
      // The state on screen changes from "connected" to reconnecting.
      await page.waitForFunction(() => document.querySelector('#status').dataset.state === 'reconnecting');
      assert.match(await page.textContent('#status-text'), /reconnecting in [\d.]+ s \(attempt \d+\)/);
      assert.equal(await page.isVisible('#online-stale'), true, 'the online list says it may be stale');

      server = await startServer({ port, args: ['--broker', 'memory'] });
      await eventually(async () => (await identity(page)).id !== before.id, { timeout: 30_000, message: 'a new identity' });
      await waitConnected(page);
      await waitForNotice(page, `The server restarted; you rejoined as ${before.nickname}`);
      assert.equal((await identity(page)).nickname, before.nickname, 'the same nickname');
      assert.equal(await page.isVisible('#online-stale'), false);
      assert.equal(await page.evaluate(() => window.chatlab.client.technique), technique);
      await say(page, `back on ${technique}`);
      await waitForMessage(page, `back on ${technique}`);
      assert.deepEqual(page.errors, []);
    } finally {
      await browser.close().catch(() => {});
      await server.stop();
    }
  });
}

for (const [technique, how] of ['ws', 'sse', 'longpoll', 'poll'].flatMap((t) => [[t, 'SIGTERM'], [t, 'kill -9']])) {
  test(`${technique}: resumes its session after a durable server restarts (${how})`, { timeout: 90_000 }, async () => {
    const port = await freePort();
    const dataDir = tempDataDir();
    let server = await startServer({ port, dataDir });
    const browser = await launchBrowser();
    try {
      const page = await openChat(browser, server, { transport: technique, interval: 0.5 });
      await say(page, `/nick keeper-${technique}`);
      await eventually(async () => (await identity(page)).nickname === `keeper-${technique}`, { message: 'the rename' });
      await say(page, `before on ${technique}`);
      await waitForMessage(page, `before on ${technique}`);
      const before = await identity(page);

      if (how === 'SIGTERM') await server.stop();
      else await server.kill();
      await page.waitForFunction(() => document.querySelector('#status').dataset.state === 'reconnecting');
      server = await startServer({ port, dataDir });
      await waitConnected(page, 30_000);
      await say(page, `back on ${technique}`);
      await waitForMessage(page, `back on ${technique}`);
      const after = await identity(page);
      assert.deepEqual([after.id, after.nickname], [before.id, before.nickname], 'the same participant');
      const rejoins = await page.evaluate(() => document.querySelectorAll('#messages li.rejoin').length);
      assert.equal(rejoins, 0, 'no rejoin notice');
      // A participant that joined again would be announced under its kept name: none is.
      const joins = (await roomEvents(page)).filter((e) => e.notice === 'join' && e.text.includes(before.nickname));
      assert.deepEqual(joins, [], 'no join notice after the restart');
      const { duplicates, holes } = await page.evaluate(() => window.chatlab.client.stats);
      assert.deepEqual({ duplicates, holes }, { duplicates: 0, holes: 0 }, 'the cursor went on: no repeat, no hole');
      assert.deepEqual(page.errors, []);
    } finally {
      await browser.close().catch(() => {});
      await server.stop();
      fs.rmSync(dataDir, { recursive: true, force: true });
    }
  });
}
