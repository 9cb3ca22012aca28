// Two pages chat: texts, senders, notices, /nick, the empty-text hint, the
// online list. Takes docs/screenshots/chat.png (desktop) and chat-phone.png (390x844).

import { before, after, test } from 'node:test';
import assert from 'node:assert/strict';
import {
  useServerAndBrowser, openChat, say, waitForMessage, waitForNotice, identity, roomEvents,
  screenshotPath, eventually, sleep,
} from '../lib/harness.mjs';

const env = useServerAndBrowser({ before, after });

test('two pages chat, rename, see each other online', { timeout: 60_000 }, async () => {
  const alice = await openChat(env.browser, env.server, { transport: 'ws' });
  const bob = await openChat(env.browser, env.server, { transport: 'sse' });
  const a = await identity(alice);
  const b = await identity(bob);
  assert.notEqual(a.id, b.id);
  assert.match(a.nickname, /^游客\d+$/, 'a guest nickname as in the seed');

  // Alice sees Bob arrive, as a notice rather than a chat line, in her language, with his technique.
  await waitForNotice(alice, `${b.nickname} joined (SSE + POST)`);

  await say(alice, 'Hello Bob, are you on SSE?');
  await waitForMessage(bob, 'Hello Bob, are you on SSE?');
  const seenByBob = (await roomEvents(bob)).find((e) => e.text === 'Hello Bob, are you on SSE?');
  assert.equal(seenByBob.nickname, a.nickname, 'the sender is shown with the text');
  assert.equal(seenByBob.type, 'message');

  await say(bob, '/nick Bob');
  await waitForNotice(alice, `${b.nickname} is now Bob`);
  await eventually(async () => (await identity(bob)).nickname === 'Bob', { message: "Bob's own name" });
  assert.equal(await bob.textContent('#me'), 'Bob');

  await say(bob, 'Yes, and you get my POSTs over a WebSocket.');
  await waitForMessage(alice, 'Yes, and you get my POSTs over a WebSocket.');
  const line = (await roomEvents(alice)).find((e) => e.text === 'Yes, and you get my POSTs over a WebSocket.');
  assert.equal(line.nickname, 'Bob');
  // Each line says which technique its sender used.
  const via = await alice.evaluate(() => [...document.querySelectorAll('#messages li.msg')]
    .map((li) => [li.querySelector('.text').textContent, li.dataset.transport, li.title.split(' · ')[1]]));
  assert.deepEqual(via.find(([text]) => text === 'Yes, and you get my POSTs over a WebSocket.'), [
    'Yes, and you get my POSTs over a WebSocket.', 'sse', 'SSE + POST']);
  assert.equal(via.find(([text]) => text === 'Hello Bob, are you on SSE?')[1], 'ws');

  // Notices are visibly different from chat lines.
  const looks = await alice.evaluate(() => {
    const notice = document.querySelector('#messages li.notice[data-type="notification"]');
    const message = document.querySelector('#messages li.msg');
    return [getComputedStyle(notice).fontStyle, getComputedStyle(message).fontStyle, !!message.querySelector('.nick')];
  });
  assert.deepEqual(looks, ['italic', 'normal', true]);

  // An empty or blank text is refused, with a visible hint, and nothing is sent.
  const before = (await roomEvents(bob)).length;
  await say(alice, '   ');
  await alice.waitForSelector('#hint:not([hidden])');
  assert.match(await alice.textContent('#hint'), /empty/i);
  await alice.click('#send'); // the button refuses too
  await sleep(500);
  assert.equal((await roomEvents(bob)).length, before, 'nothing was broadcast');

  // The online list shows both, each with its technique, and the count.
  await alice.waitForFunction(() => document.querySelectorAll('#online li').length >= 2);
  const online = await alice.evaluate(() =>
    Object.fromEntries([...document.querySelectorAll('#online li')].map((li) => [li.dataset.id, li.dataset.transport])),
  );
  assert.equal(online[a.id], 'ws');
  assert.equal(online[b.id], 'sse');
  assert.ok(Number(await alice.textContent('#count')) >= 2);
  // The current technique and the connection state are on screen.
  assert.equal(await alice.textContent('#status-technique'), 'WebSocket');
  assert.equal(await bob.textContent('#status-technique'), 'SSE + POST');
  assert.equal(await alice.textContent('#status-text'), 'connected');

  // The labels switch between English and Chinese.
  await alice.click('#lang');
  assert.equal(await alice.textContent('#send'), '发送!');
  assert.equal(await alice.textContent('#status-text'), '已连接');
  await alice.click('#lang');
  assert.equal(await alice.textContent('#send'), 'Send');

  await say(alice, '/nick Alice');
  await say(alice, 'Switch technique on the right and watch nothing get lost.');
  await waitForMessage(bob, 'Switch technique on the right and watch nothing get lost.');
  await alice.waitForFunction(() => document.querySelectorAll('#online li').length >= 2);
  await sleep(300); // let the online list refresh after the rename
  await alice.fill('#message', '');
  await alice.evaluate(() => { document.querySelector('#hint').hidden = true; });
  await alice.screenshot({ path: screenshotPath('chat.png') });

  // The same conversation on a phone.
  const phone = await openChat(env.browser, env.server, { transport: 'longpoll', viewport: { width: 390, height: 844 } });
  await say(phone, '/nick Carol');
  await say(phone, 'On a phone: technique first, then the chat.');
  await waitForMessage(phone, 'On a phone: technique first, then the chat.');
  await say(alice, 'Hi Carol!');
  await waitForMessage(phone, 'Hi Carol!');
  await phone.waitForFunction(() => document.querySelectorAll('#online li').length >= 3);
  await phone.fill('#message', '');
  await phone.evaluate(() => document.activeElement.blur());
  await phone.screenshot({ path: screenshotPath('chat-phone.png') });
  assert.deepEqual(phone.errors, []);
  await phone.context().close();

  for (const page of [alice, bob]) assert.deepEqual(page.errors, [], 'no script errors');
  await alice.context().close();
  await bob.context().close();
});
