// A `gap` event is shown to the user, not swallowed: with a server that keeps
// only 5 events, a short poller (10 s interval) misses more than that and is
// told which events it can no longer get.

import { before, after, test } from 'node:test';
import assert from 'node:assert/strict';
import { useServerAndBrowser, openChat, say, waitForMessage, roomEvents, sleep } from '../lib/harness.mjs';

const env = useServerAndBrowser({ before, after }, { args: ['--history', '5'] });

test('a cursor older than the history shows a gap, then what is left', { timeout: 60_000 }, async () => {
  const slow = await openChat(env.browser, env.server, { transport: 'poll', interval: 10 });
  const talker = await openChat(env.browser, env.server, { transport: 'ws' });
  await sleep(300);
  for (let n = 1; n <= 12; n++) await say(talker, `talk ${n}`);
  await waitForMessage(talker, 'talk 12');

  // The next poll (at most 10 s away) brings the gap notice, then the retained tail.
  await slow.waitForSelector('#messages li.gap', { timeout: 15_000 });
  await waitForMessage(slow, 'talk 12');
  const gap = await slow.textContent('#messages li.gap');
  assert.match(gap, /Events \d+–\d+ are no longer kept/);
  const texts = (await roomEvents(slow)).filter((e) => e.type === 'message').map((e) => e.text);
  assert.ok(!texts.includes('talk 1'), 'talk 1 is past the history');
  assert.deepEqual(texts.slice(-3), ['talk 10', 'talk 11', 'talk 12']);
  // The gap is above the events that follow it.
  const order = await slow.evaluate(() => [...document.querySelectorAll('#messages li')].map((li) => li.dataset.type));
  assert.ok(order.indexOf('gap') < order.lastIndexOf('message'));

  for (const page of [slow, talker]) {
    assert.deepEqual(page.errors, []);
    await page.context().close();
  }
});
