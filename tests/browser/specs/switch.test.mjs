// Switching technique mid-conversation keeps identity and cursor: while another
// page keeps talking, the switching page goes through every technique and ends
// up with every event exactly once, in seq order without holes, and nobody is
// told that it left or joined again.

import { before, after, test } from 'node:test';
import assert from 'node:assert/strict';
import {
  useServerAndBrowser, openChat, say, waitForMessage, waitConnected, identity, roomEvents, getJson, eventually, sleep,
} from '../lib/harness.mjs';

const env = useServerAndBrowser({ before, after });
const LABELS = { ws: 'WebSocket', sse: 'SSE + POST', longpoll: 'Long poll', poll: 'Short poll' };

test('switching technique loses nothing, repeats nothing, announces nothing', { timeout: 120_000 }, async () => {
  const switcher = await openChat(env.browser, env.server, { transport: 'ws', interval: 0.5 });
  const talker = await openChat(env.browser, env.server, { transport: 'ws' });
  const me = await identity(switcher);

  // The talker sends a numbered text every 120 ms for the whole test.
  let talking = true;
  let sent = 0;
  const talk = (async () => {
    while (talking && sent < 200) {
      sent += 1;
      await say(talker, `talker ${sent}`);
      await sleep(120);
    }
  })();

  const route = ['sse', 'longpoll', 'poll', 'ws', 'poll', 'sse', 'ws', 'longpoll'];
  for (const technique of route) {
    await sleep(400);
    await switcher.check(`input[name=technique][value="${technique}"]`);
    await waitConnected(switcher);
    assert.equal(await switcher.textContent('#status-technique'), LABELS[technique], 'the technique in use is shown');
    await say(switcher, `switcher on ${technique}`);
  }
  await sleep(400);
  talking = false;
  await talk;

  // Everything arrives on the switching page ...
  await waitForMessage(switcher, `talker ${sent}`, 15_000);
  for (const technique of route) await waitForMessage(talker, `switcher on ${technique}`);
  await waitForMessage(switcher, `switcher on ${route.at(-1)}`);

  const events = await roomEvents(switcher);
  const seqs = events.map((e) => e.seq);
  for (let i = 1; i < seqs.length; i++) {
    assert.equal(seqs[i], seqs[i - 1] + 1, `seq ${seqs[i - 1]} is followed by ${seqs[i]}: nothing lost or repeated`);
  }
  const texts = events.filter((e) => e.type === 'message').map((e) => e.text);
  for (let n = 1; n <= sent; n++) {
    assert.equal(texts.filter((t) => t === `talker ${n}`).length, 1, `"talker ${n}" shown exactly once`);
  }
  for (const technique of route) {
    assert.equal(texts.filter((t) => t === `switcher on ${technique}`).length, route.filter((r) => r === technique).length);
  }
  assert.equal(await switcher.evaluate(() => window.chatlab.client.stats.holes), 0);
  assert.equal(await switcher.evaluate(() => document.querySelectorAll('#messages li.gap').length), 0, 'no gap');

  // ... same participant all along, and nobody was told it left or came back.
  const after = await identity(switcher);
  assert.equal(after.id, me.id);
  assert.equal(after.session, me.session);
  for (const page of [switcher, talker]) {
    const notices = (await roomEvents(page)).filter((e) => e.type === 'notification' && e.text.includes(me.nickname));
    assert.ok(notices.every((e) => e.notice !== 'leave'), `no leave notice for ${me.nickname}: ${JSON.stringify(notices)}`);
    const joins = notices.filter((e) => e.notice === 'join').length;
    if (page === switcher) assert.equal(joins, 1, 'its own join, once');
    else assert.ok(joins <= 1, 'no second join notice');
  }
  await eventually(async () => {
    const presence = await getJson(env.server, '/api/presence');
    const entries = presence.participants.filter((p) => p.id === me.id);
    return entries.length === 1 && entries[0].transport === route.at(-1);
  }, { message: 'presence: the switcher once, on its last technique' });

  for (const page of [switcher, talker]) {
    assert.deepEqual(page.errors, []);
    await page.context().close();
  }
});
