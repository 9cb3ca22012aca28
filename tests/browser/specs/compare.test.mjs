// The comparison view: four participants (one per technique) receive the same
// burst in the same order, and every panel shows non-zero server counters.
// Takes docs/screenshots/compare.png.

import { before, after, test } from 'node:test';
import assert from 'node:assert/strict';
import { useServerAndBrowser, newPage, getJson, eventually, screenshotPath, sleep } from '../lib/harness.mjs';

const env = useServerAndBrowser({ before, after });
const TECHNIQUES = ['ws', 'sse', 'longpoll', 'poll'];
const BURST = 15;

test('four panels get the same burst in the same order, with counters', { timeout: 90_000 }, async () => {
  const page = await newPage(env.browser, { viewport: { width: 1400, height: 1000 } });
  await page.addInitScript(() => localStorage.setItem('chatlab.lang', 'en'));
  await page.goto(`${env.server.url}/compare.html`);

  // All four connected, each as its own participant on its own technique.
  await page.waitForFunction(
    (names) => names.every((n) => window.compare.panels[n].client.id
      && document.querySelector(`.tpanel[data-technique="${n}"] .status`).dataset.state === 'open'),
    TECHNIQUES,
  );
  const ids = await page.evaluate((names) => names.map((n) => window.compare.panels[n].client.id), TECHNIQUES);
  assert.equal(new Set(ids).size, 4);
  await eventually(async () => {
    const presence = await getJson(env.server, '/api/presence');
    return TECHNIQUES.every((t, i) => presence.participants.some((p) => p.id === ids[i] && p.transport === t));
  }, { message: 'the four participants in /api/presence' });

  await page.fill('#burst-size', String(BURST));
  // The burst goes up over the WebSocket, so no HTTP technique's counters
  // include the uploads: what each panel shows is the cost of receiving.
  assert.equal(await page.inputValue('#sender'), 'ws');
  await page.click('#burst');

  // Every panel receives the whole burst ...
  await page.waitForFunction(
    ([names, size]) => names.every((n) => window.compare.panels[n].received.filter((r) => r.message.startsWith(`burst `)).length >= size),
    [TECHNIQUES, BURST],
    { timeout: 20_000 },
  );
  const received = await page.evaluate(
    (names) => Object.fromEntries(names.map((n) => [n, window.compare.panels[n].received.filter((r) => r.message.startsWith('burst '))])),
    TECHNIQUES,
  );
  // ... in the same order, with the same seqs.
  const reference = received.ws.map((r) => `${r.seq}:${r.message}`);
  assert.deepEqual(received.ws.map((r) => Number(r.message.match(/^burst (\d+)\//)[1])),
    Array.from({ length: BURST }, (_, i) => i + 1), 'the burst in the order it was sent');
  for (const name of TECHNIQUES) {
    assert.deepEqual(received[name].map((r) => `${r.seq}:${r.message}`), reference, `${name} saw the same burst in the same order`);
  }

  // The counters come alive: every technique delivered events and wrote bytes;
  // the HTTP techniques made requests; short polling counts empty answers.
  const counter = (name, metric) => page.evaluate(
    ([n, m]) => Number(document.querySelector(`.tpanel[data-technique="${n}"] [data-metric="${m}"]`).dataset.value),
    [name, metric],
  );
  await eventually(async () => {
    for (const name of TECHNIQUES) {
      if (!(await counter(name, 'delivered') > 0)) return false;
      if (!(await counter(name, 'bytesDown') > 0)) return false;
      if (!(await counter(name, 'received') >= BURST)) return false;
      if (!(await counter(name, 'latencyPage') >= 0)) return false;
    }
    for (const name of ['sse', 'longpoll', 'poll']) if (!(await counter(name, 'requests') > 0)) return false;
    return (await counter('poll', 'emptyPolls')) > 0;
  }, { timeout: 15_000, message: 'non-zero counters in all four panels' });

  // The bars and the chart are drawn.
  assert.ok(await page.locator('#bars .bar-row').count() >= 16);
  assert.ok(await page.locator('#chart polyline').count() >= 1);

  await sleep(4000); // a few more stats ticks: the chart shows the pollers' requests climbing
  await page.screenshot({ path: screenshotPath('compare.png'), fullPage: true });
  assert.deepEqual(page.errors, []);
  await page.context().close();
});
