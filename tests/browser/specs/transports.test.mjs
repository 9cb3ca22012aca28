// Each technique sends and receives: a page on technique T and an observer on
// WebSocket exchange texts both ways, and the server lists T as the page's technique.

import { before, after, test } from 'node:test';
import assert from 'node:assert/strict';
import { useServerAndBrowser, openChat, say, waitForMessage, identity, getJson, eventually } from '../lib/harness.mjs';

const env = useServerAndBrowser({ before, after });

for (const technique of ['ws', 'sse', 'stream', 'iframe', 'longpoll', 'poll']) {
  test(`${technique}: sends and receives`, { timeout: 60_000 }, async () => {
    const page = await openChat(env.browser, env.server, { transport: technique, interval: 0.5 });
    const observer = await openChat(env.browser, env.server, { transport: 'ws' });
    const me = await identity(page);
    assert.equal(me.technique, technique);

    await say(page, `sent over ${technique}`);
    await waitForMessage(observer, `sent over ${technique}`);
    await waitForMessage(page, `sent over ${technique}`); // the sender gets its own text back too

    await say(observer, `received over ${technique}`);
    await waitForMessage(page, `received over ${technique}`);

    await eventually(async () => {
      const presence = await getJson(env.server, '/api/presence');
      return presence.participants.some((p) => p.id === me.id && p.transport === technique);
    }, { message: `presence listing ${technique}` });
    await page.waitForSelector(`#online li[data-id="${me.id}"][data-transport="${technique}"]`);

    for (const p of [page, observer]) {
      assert.deepEqual(p.errors, []);
      await p.context().close();
    }
  });
}
