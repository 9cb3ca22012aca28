// Arrow keys move the technique choice without reconnecting at every key: the
// switch happens after a short pause on one choice, or at once on Enter/Space
// (and at once on a click).

import { before, after, test } from 'node:test';
import assert from 'node:assert/strict';
import { useServerAndBrowser, openChat, waitConnected, say, waitForMessage, sleep } from '../lib/harness.mjs';

const env = useServerAndBrowser({ before, after });
const technique = (page) => page.evaluate(() => window.chatlab.client.technique);
const switches = (page) => page.locator('#messages li[data-type="local"]').count();

test('arrow keys choose, a pause or Enter/Space switches', { timeout: 60_000 }, async () => {
  const page = await openChat(env.browser, env.server, { transport: 'ws' });
  await page.focus('input[name=technique][value=ws]');

  // Two arrows in a row: the choice moves twice, nothing reconnects yet.
  await page.keyboard.press('ArrowDown');
  await page.keyboard.press('ArrowDown');
  assert.equal(await page.evaluate(() => document.querySelector('input[name=technique]:checked').value), 'stream');
  assert.equal(await technique(page), 'ws', 'no switch on an arrow key');
  assert.match(await page.textContent('#about'), /Switching to HTTP stream \+ POST after a short pause/);
  await sleep(400);
  assert.equal(await technique(page), 'ws', 'still no switch 400 ms later');
  // After the pause: one switch, straight to the last choice.
  await page.waitForFunction(() => window.chatlab.client.technique === 'stream', null, { timeout: 3000 });
  await waitConnected(page);
  assert.equal(await switches(page), 1, 'one switch for two arrow keys');
  assert.equal(await page.textContent('#status-technique'), 'HTTP stream + POST');

  // An arrow then Enter: at once.
  await page.keyboard.press('ArrowDown');
  await page.keyboard.press('Enter');
  assert.equal(await technique(page), 'iframe', 'Enter switches at once');
  await waitConnected(page);

  // An arrow then Space: at once.
  await page.keyboard.press('ArrowDown');
  await page.keyboard.press(' ');
  assert.equal(await technique(page), 'longpoll', 'Space switches at once');
  await waitConnected(page);
  assert.equal(await switches(page), 3);

  // A click switches at once.
  await page.click('label.choice[data-technique="sse"]');
  assert.equal(await technique(page), 'sse');
  await waitConnected(page);
  await say(page, 'still here');
  await waitForMessage(page, 'still here');
  assert.equal(await switches(page), 4);
  assert.deepEqual(page.errors, []);
  await page.context().close();
});
