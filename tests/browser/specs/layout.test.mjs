// The chat page on a phone and on a desktop, in English and in Chinese: nothing
// scrolls sideways, axe-core finds no serious or critical violation, the
// technique switcher is on the first screen above the conversation on a phone,
// and the controls are labelled by the HTML itself (before any script runs).

import { before, after, test } from 'node:test';
import assert from 'node:assert/strict';
import {
  useServerAndBrowser, openChat, newPage, say, waitForMessage, waitConnected, seriousViolations, horizontalOverflow, WAIT,
} from '../lib/harness.mjs';

const env = useServerAndBrowser({ before, after });
const SIZES = { phone: { width: 390, height: 844 }, desktop: { width: 1440, height: 900 } };

for (const lang of ['en', 'zh']) {
  for (const [name, viewport] of Object.entries(SIZES)) {
    test(`${lang}, ${name} ${viewport.width}x${viewport.height}: no sideways scroll, no serious axe violation`, { timeout: 60_000 }, async () => {
      const page = await openChat(env.browser, env.server, { transport: 'ws', lang, viewport });
      const other = await openChat(env.browser, env.server, { transport: 'sse' });
      await say(other, 'a line long enough to wrap on a phone: the quick brown fox jumps over the lazy dog, twice over');
      await say(page, '/nick AVeryLongNicknameIndeed');
      await waitForMessage(page, 'a line long enough to wrap on a phone: the quick brown fox jumps over the lazy dog, twice over');
      await page.click('#wire-toggle'); // the wire panel is part of the layout too
      await page.waitForSelector('#wire:not([hidden])');

      assert.equal(await horizontalOverflow(page), 0, 'nothing scrolls sideways');
      assert.deepEqual(await seriousViolations(page), []);
      assert.equal(await page.getAttribute('html', 'lang'), lang === 'zh' ? 'zh-CN' : 'en');

      // The header keeps every control inside the screen.
      for (const selector of ['#lang', '.links a', '#status']) {
        const box = await page.locator(selector).boundingBox();
        assert.ok(box.x >= 0 && box.x + box.width <= viewport.width, `${selector} inside the screen: ${JSON.stringify(box)}`);
      }
      if (name === 'phone') {
        // The switcher comes before the conversation and is on the first screen.
        const switcher = await page.locator('#switcher').boundingBox();
        const messages = await page.locator('#messages').boundingBox();
        assert.ok(switcher.y + switcher.height <= messages.y, 'the switcher is above the conversation');
        assert.ok(switcher.y + switcher.height <= viewport.height, 'the switcher is on the first screen');
        const composer = await page.locator('#chat-form').boundingBox();
        assert.ok(composer.y + composer.height <= viewport.height, 'the message input is on the first screen too');
      } else {
        // The sidebar sits beside the conversation.
        const switcher = await page.locator('#switcher').boundingBox();
        const messages = await page.locator('#messages').boundingBox();
        assert.ok(switcher.x >= messages.x + messages.width, 'the switcher is beside the conversation');
      }
      for (const p of [page, other]) {
        assert.deepEqual(p.errors, []);
        await p.context().close();
      }
    });
  }
}

test('the controls are labelled before any script runs', { timeout: 30_000 }, async () => {
  const context = await env.browser.newContext({ javaScriptEnabled: false, viewport: SIZES.phone });
  try {
    const bare = await context.newPage();
    await bare.goto(`${env.server.url}/`);
    const labels = await bare.evaluate(() => ({
      send: document.querySelector('#send').textContent.trim(),
      lang: document.querySelector('#lang').textContent.trim(),
      legend: document.querySelector('#switcher legend').textContent.trim(),
      radios: [...document.querySelectorAll('input[name=technique]')].map((r) => r.labels[0].textContent.trim()),
      input: document.querySelector('#message').labels[0].textContent.trim(),
      placeholder: document.querySelector('#message').placeholder,
      compare: document.querySelector('.links a').textContent.trim(),
      wire: document.querySelector('#wire-toggle').textContent.trim(),
      status: document.querySelector('#status-text').textContent.trim(),
    }));
    assert.deepEqual(labels, {
      send: 'Send',
      lang: '中文',
      legend: 'Technique',
      radios: ['WebSocket', 'SSE + POST', 'HTTP stream + POST', 'Forever iframe + POST', 'Long poll', 'Short poll'],
      input: 'Message',
      placeholder: 'Type a message (/nick NAME renames you)',
      compare: 'Compare the six techniques →',
      wire: 'Show the wire',
      status: 'connecting…',
    });
  } finally {
    await context.close();
  }
});

test('?wire=1 opens the wire panel on load; the toggle closes it and keeps the address in step', { timeout: 30_000 }, async () => {
  const page = await newPage(env.browser, { viewport: SIZES.phone });
  await page.addInitScript(() => localStorage.setItem('chatlab.lang', 'en'));
  await page.goto(`${env.server.url}/?transport=ws&wire=1`);
  await waitConnected(page);
  await page.waitForSelector('#wire:not([hidden]) > *', { timeout: WAIT }); // js/wire.js rendered into it
  assert.equal(await page.getAttribute('#wire-toggle', 'aria-expanded'), 'true');
  assert.equal(await page.textContent('#wire-toggle'), 'Hide the wire');
  // On a phone the panel comes below the conversation.
  const messages = await page.locator('#messages').boundingBox();
  const wire = await page.locator('#wire').boundingBox();
  assert.ok(wire.y >= messages.y + messages.height, 'the wire panel is below the conversation');
  assert.match(page.url(), /[?&]wire=1/);

  await page.click('#wire-toggle');
  assert.equal(await page.isVisible('#wire'), false);
  assert.equal(await page.getAttribute('#wire-toggle', 'aria-expanded'), 'false');
  assert.equal(await page.textContent('#wire-toggle'), 'Show the wire');
  assert.doesNotMatch(page.url(), /wire=1/);
  await page.click('#lang');
  assert.equal(await page.textContent('#wire-toggle'), '查看线上数据');
  assert.deepEqual(page.errors, []);
  await page.context().close();
});
