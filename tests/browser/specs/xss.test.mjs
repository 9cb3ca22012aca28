// User text is rendered as text, never as HTML.

import { before, after, test } from 'node:test';
import assert from 'node:assert/strict';
import { useServerAndBrowser, openChat, say, waitForMessage, roomEvents, sleep } from '../lib/harness.mjs';

const env = useServerAndBrowser({ before, after });

test('<img src=x onerror=alert(1)> shows as text on every page', { timeout: 60_000 }, async () => {
  const sender = await openChat(env.browser, env.server, { transport: 'ws' });
  const reader = await openChat(env.browser, env.server, { transport: 'longpoll' });
  const payload = '<img src=x onerror=alert(1)>';
  await say(sender, payload);
  for (const page of [sender, reader]) {
    await waitForMessage(page, payload);
    const line = (await roomEvents(page)).find((e) => e.type === 'message');
    assert.equal(line.text, payload, 'the text is shown literally');
    assert.equal(await page.locator('#messages img').count(), 0, 'no element was created from it');
  }
  await sleep(500); // an onerror would have fired by now
  for (const page of [sender, reader]) {
    assert.deepEqual(page.dialogs, [], 'no alert() ran');
    assert.deepEqual(page.errors, []);
    await page.context().close();
  }
});
