// One language at a time: the server's notices are rendered from their fields
// in the page's language, and switching language renders the lines already on
// screen again (the same lines, not new ones).

import { before, after, test } from 'node:test';
import assert from 'node:assert/strict';
import {
  useServerAndBrowser, startServer, launchBrowser, openChat, say, waitForNotice, waitForMessage, identity, eventually, WAIT,
} from '../lib/harness.mjs';

const env = useServerAndBrowser({ before, after });

/** Every line of the conversation as text. */
const lines = (page) => page.evaluate(() => [...document.querySelectorAll('#messages li')].map((li) => li.textContent));

test('notices follow the language switch, both ways', { timeout: 60_000 }, async () => {
  const page = await openChat(env.browser, env.server, { transport: 'ws', lang: 'en' });
  const me = await identity(page);
  const other = await openChat(env.browser, env.server, { transport: 'longpoll', lang: 'zh' });
  const them = await identity(other);
  await waitForNotice(page, `${them.nickname} joined (Long poll)`);
  await say(other, '/nick 小明');
  await waitForNotice(page, `${them.nickname} is now 小明`);
  await say(other, 'hello, 你好');
  await waitForMessage(page, 'hello, 你好');
  await page.click('input[name=technique][value=sse]');
  await eventually(async () => (await page.textContent('#status-text')) === 'connected', { message: 'connected on SSE' });

  const english = await lines(page);
  assert.ok(english.includes(`You joined as ${me.nickname} (WebSocket)`), english.join(' | '));
  assert.ok(english.includes(`${them.nickname} joined (Long poll)`));
  assert.ok(english.includes(`${them.nickname} is now 小明`));
  assert.ok(english.includes('Switched to SSE + POST; same identity, same cursor'));
  assert.ok(!english.some((l) => /来了|改名为/.test(l)), `no Chinese notice on the English page: ${english.join(' | ')}`);
  // The other page, in Chinese, reads the same events in Chinese.
  await waitForNotice(other, `用户 ${them.nickname} 改名为: 小明`);
  await waitForNotice(other, `${them.nickname} 来了(长轮询)`);

  await page.click('#lang');
  const chinese = await lines(page);
  assert.equal(chinese.length, english.length, 'the same lines, rendered again');
  assert.ok(chinese.includes(`你以 ${me.nickname} 的身份加入 (WebSocket)`), chinese.join(' | '));
  assert.ok(chinese.includes(`${them.nickname} 来了(长轮询)`));
  assert.ok(chinese.includes(`用户 ${them.nickname} 改名为: 小明`));
  assert.ok(chinese.includes('已切换到 SSE + POST,身份和进度不变'));
  assert.ok(chinese.includes('小明hello, 你好'), 'chat text is never translated');
  assert.ok(!chinese.some((l) => /joined|is now|Switched/.test(l)), `no English notice left: ${chinese.join(' | ')}`);
  assert.equal(await page.textContent('#status-text'), '已连接');
  assert.match(await page.textContent('#online'), /\(你\)/);
  assert.equal(await page.getAttribute('#lang', 'lang'), 'en', 'the button names English in English');

  await page.click('#lang');
  assert.deepEqual(await lines(page), english, 'back to the English lines');
  for (const p of [page, other]) {
    assert.deepEqual(p.errors, []);
    await p.context().close();
  }
});

test('a crowd notice (joins counted, not named) reads in the page language', { timeout: 60_000 }, async () => {
  const server = await startServer({ args: ['--coalesce-above', '2'] });
  const browser = await launchBrowser();
  try {
    const page = await openChat(browser, server, { transport: 'ws', lang: 'en' });
    const others = [];
    for (let i = 0; i < 3; i++) others.push(await openChat(browser, server, { transport: 'ws' }));
    // Past two participants, arrivals are announced once a second, as a count.
    await page.waitForSelector('#messages li[data-notice="crowd"]', { timeout: WAIT });
    const crowd = await page.textContent('#messages li[data-notice="crowd"]');
    assert.match(crowd, /^\d+ joined$/);
    await page.click('#lang');
    assert.match(await page.textContent('#messages li[data-notice="crowd"]'), /^\d+ 人来了$/);
    // The count stays exact (the last arrival may be announced a second later).
    await page.waitForFunction(() => document.querySelector('#count').textContent === '4', null, { timeout: WAIT });
    assert.deepEqual(page.errors, []);
  } finally {
    await browser.close().catch(() => {});
    await server.stop();
  }
});
