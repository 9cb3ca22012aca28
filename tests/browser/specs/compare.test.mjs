// The comparison view: six participants (one per technique) receive the same
// burst in the same order; every figure is the server's count for that
// participant, up and down, whoever sent; "Reset everything" really resets
// (every figure back to zero or "no data", then only the new burst counts);
// verdicts link to the docs; no horizontal scroll and no serious axe finding
// at 360-1440 px in both languages. Takes docs/screenshots/compare.png,
// compare-phone.png and wire.png.

import { before, after, afterEach, test } from 'node:test';
import assert from 'node:assert/strict';
import {
  useServerAndBrowser, newPage, eventually, screenshotPath, sleep, seriousViolations, horizontalOverflow,
} from '../lib/harness.mjs';

const env = useServerAndBrowser({ before, after });
env.pages = [];
// A test that fails leaves its page open: close it, so its six participants do not count in the next test.
afterEach(async () => {
  for (const page of env.pages.splice(0)) await page.context().close().catch(() => {});
});
const TECHNIQUES = ['ws', 'sse', 'stream', 'iframe', 'longpoll', 'poll'];

async function openCompare({ width = 1440, height = 900, lang = 'en' } = {}) {
  const page = await newPage(env.browser, { viewport: { width, height } });
  await page.addInitScript((l) => localStorage.setItem('chatlab.lang', l), lang);
  await page.goto(`${env.server.url}/compare.html`);
  // All six connected, their wire logs live, and the view counting from zero.
  await page.waitForFunction(
    (names) => names.every((n) => window.compare.panels[n].client.id
      && document.querySelector(`.tpanel[data-technique="${n}"] .status`).dataset.state === 'open'
      && document.querySelector(`.tpanel[data-technique="${n}"] .wire-view`).dataset.state === 'live')
      && window.compare.settled(),
    TECHNIQUES,
    { timeout: 20_000 },
  );
  return page;
}

/** Every figure of the table: {technique: {metric: {value, text}}}. */
function table(page) {
  return page.evaluate(() => {
    const out = {};
    for (const td of document.querySelectorAll('#summary td[data-technique]')) {
      (out[td.dataset.technique] ??= {})[td.dataset.metric] = { value: Number(td.dataset.value), text: td.textContent };
    }
    return out;
  });
}

const cell = (page, name, metric) => page.evaluate(
  ([n, m]) => Number(document.querySelector(`#summary td[data-technique="${n}"][data-metric="${m}"]`).dataset.value),
  [name, metric],
);

async function burst(page, { size, sender = 'ws' }) {
  await page.fill('#burst-size', String(size));
  await page.selectOption('#sender', sender);
  await page.click('#burst');
  await page.waitForFunction((s) => document.querySelector('#burst-status').textContent === `${s}/${s}`, size, { timeout: 20_000 });
}

test('six panels get the same burst in the same order; figures up and down for every technique', { timeout: 120_000 }, async () => {
  const page = await openCompare();
  env.pages.push(page);
  const ids = await page.evaluate((names) => names.map((n) => window.compare.panels[n].client.id), TECHNIQUES);
  assert.equal(new Set(ids).size, 6);

  // A fresh view is not contradictory: received and delivered count from the same moment.
  const fresh = await table(page);
  for (const name of TECHNIQUES) assert.equal(fresh[name].received.value, fresh[name].delivered.value, `${name} fresh`);

  const BURST = 15;
  await burst(page, { size: BURST, sender: 'ws' });
  await page.waitForFunction(
    ([names, size]) => names.every((n) => window.compare.panels[n].received.filter((r) => r.message.startsWith('burst ')).length >= size),
    [TECHNIQUES, BURST],
    { timeout: 20_000 },
  );
  const received = await page.evaluate(
    (names) => Object.fromEntries(names.map((n) => [n, window.compare.panels[n].received.filter((r) => r.message.startsWith('burst '))])),
    TECHNIQUES,
  );
  const reference = received.ws.map((r) => `${r.seq}:${r.message}`);
  assert.deepEqual(received.ws.map((r) => Number(r.message.match(/^burst (\d+)\//)[1])),
    Array.from({ length: BURST }, (_, i) => i + 1), 'the burst in the order it was sent');
  for (const name of TECHNIQUES) assert.deepEqual(received[name].map((r) => `${r.seq}:${r.message}`), reference, name);

  // Every technique: the server delivered what the page received.
  await eventually(async () => {
    const now = await table(page);
    // Up: the WebSocket sender's frames and the pollers' requests; an open stream (SSE, NDJSON, iframe) sends nothing up.
    const ok = TECHNIQUES.every((n) => now[n].received.value === BURST && now[n].delivered.value === BURST
      && now[n].bytesDown.value > 0 && (['sse', 'stream', 'iframe'].includes(n) ? now[n].bytesUp.value === 0 : now[n].bytesUp.value > 0));
    if (!ok) throw new Error(TECHNIQUES.map((n) => `${n}: ${now[n].received.value}/${now[n].delivered.value}/${now[n].bytesUp.value}/${now[n].bytesDown.value}`).join(', '));
    return true;
  }, { timeout: 15_000, message: 'received = delivered = the burst, bytes up and down in all six (received/delivered/up/down)' });
  const after = await table(page);
  assert.equal(after.ws.requests.value, 0, 'a WebSocket makes no HTTP request for a burst');
  assert.ok(after.ws.frames.value >= 2 * BURST, 'the WebSocket sender: a frame up and a frame down per line');
  assert.ok(after.poll.requests.value > 0);

  // The sender's POSTs count under its own technique: a burst from the short poller.
  const pollUp = after.poll.bytesUp.value;
  const posts = () => page.locator('.tpanel[data-technique="poll"] .rec-http[data-request-line^="POST /api/messages"]').count();
  await burst(page, { size: 5, sender: 'poll' });
  await eventually(async () => (await posts()) >= 5, { message: 'five POSTs in the short poller\'s wire log' });
  await eventually(async () => (await cell(page, 'poll', 'bytesUp')) > pollUp + 5 * 100, { message: 'the POSTs in poll\'s bytes up' });

  // Plain-language verdicts, each linking to the section that explains it.
  await eventually(async () => (await page.locator('#verdicts li').filter({ hasText: /^Short polling asked \d+ times and heard nothing \d+ times/ }).count()) === 1,
    { message: 'the short-polling verdict' });
  const hrefs = await page.locator('#verdicts a').evaluateAll((links) => links.map((a) => a.getAttribute('href')));
  assert.ok(hrefs.includes('/docs/techniques#1-short-interval-polling'), hrefs.join(' '));
  assert.ok(hrefs.every((h) => h.startsWith('/docs/techniques#')));

  // Chart and table.
  assert.ok(await page.locator('#bars .bar-row').count() >= 16);
  assert.ok(await page.locator('#chart polyline').count() >= 1);

  // Screenshots: the whole view, and the wire logs with a short poll and a WebSocket frame opened.
  await sleep(3000);
  // The logs paused (records that come meanwhile are held, and said so), then one short poll, one
  // WebSocket frame and one SSE write opened, each scrolled to the top of its log.
  for (const button of await page.locator('.wire-pause').all()) await button.click();
  assert.equal(await page.locator('.wire-pause[aria-pressed="true"]').count(), 6);
  for (const row of [
    page.locator('.tpanel[data-technique="poll"] .rec-http[data-request-line^="GET /api/poll"]').last(),
    page.locator('.tpanel[data-technique="ws"] .rec-frame[data-dir="down"]').last(),
    page.locator('.tpanel[data-technique="sse"] .rec-sse').last(),
  ]) {
    await row.locator('summary').click();
    await row.evaluate((li) => { li.closest('.wire-log').scrollTop = li.offsetTop; });
  }
  await page.screenshot({ path: screenshotPath('compare.png'), fullPage: true });
  await page.locator('#panels').screenshot({ path: screenshotPath('wire.png') });
  assert.deepEqual(page.errors, []);
  await page.context().close();
});

test('reset resets everything shown, then counts only the new burst', { timeout: 90_000 }, async () => {
  const page = await openCompare();
  env.pages.push(page);
  await burst(page, { size: 6, sender: 'sse' });
  await eventually(async () => (await cell(page, 'poll', 'received')) >= 6, { message: 'a first burst everywhere' });

  // Reset and read every figure in the same task: nothing can tick in between.
  const shown = await page.evaluate(() => {
    document.querySelector('#reset').click();
    return {
      cells: [...document.querySelectorAll('#summary td[data-technique]')].map((td) => [td.dataset.technique, td.dataset.metric, Number(td.dataset.value), td.textContent]),
      feeds: [...document.querySelectorAll('.tpanel .feed li')].length,
      records: [...document.querySelectorAll('.wire-log li')].length,
      received: [...document.querySelectorAll('.received-count')].map((e) => e.textContent),
      totals: [...document.querySelectorAll('.wire-totals')].map((e) => Number(e.dataset.requests) + Number(e.dataset.wireBytesIn) + Number(e.dataset.wireBytesOut)),
      verdicts: document.querySelector('#verdicts').textContent,
      bars: [...document.querySelectorAll('#bars .bar-value')].map((e) => e.textContent),
    };
  });
  for (const [name, metric, value, text] of shown.cells) {
    assert.ok(value === 0, `${name} ${metric} after reset: ${value} (${text})`);
    assert.match(text, /^(0|0 B|0 \/ 0|no data|n\/a)$/, `${name} ${metric} shows ${text}`);
  }
  assert.equal(shown.feeds, 0);
  assert.equal(shown.records, 0);
  assert.deepEqual(shown.received, TECHNIQUES.map(() => '0'));
  assert.deepEqual(shown.totals, TECHNIQUES.map(() => 0));
  assert.match(shown.verdicts, /back to zero/);
  for (const text of shown.bars) assert.match(text, /^(0|0 B|no data|n\/a)$/);

  // Only the new burst counts.
  const NEW = 7;
  await burst(page, { size: NEW, sender: 'ws' });
  await eventually(async () => {
    const now = await table(page);
    if (!TECHNIQUES.every((n) => now[n].received.value === NEW && now[n].delivered.value === NEW)) {
      throw new Error(TECHNIQUES.map((n) => `${n}: ${now[n].received.value}/${now[n].delivered.value}`).join(', '));
    }
    return true;
  }, { timeout: 15_000, message: 'received = delivered = the new burst (received/delivered)' });
  const now = await table(page);
  assert.equal(now.ws.requests.value, 0);
  assert.equal(now.sse.requests.value, 0, 'the SSE stream was open before the reset');
  assert.ok(now.ws.frames.value >= 2 * NEW, 'a frame up and a frame down per line');
  // Server latency: percentiles of this run's histogram counts only.
  await eventually(async () => {
    const m = await page.evaluate(() => window.compare.metrics());
    const counts = TECHNIQUES.map((n) => `${n} ${m[n].serverCount}`).join(', ');
    if (!(m.ws.serverCount >= 1 && m.ws.serverCount <= NEW && m.sse.serverCount >= 1 && m.sse.serverCount <= NEW)) throw new Error(counts);
    return true;
  }, { message: 'server latency counted from the new burst only' });
  assert.notEqual((await table(page)).ws.latencyServer.text, 'no data');
  assert.deepEqual(page.errors, []);
  await page.context().close();
});

test('labels are in the HTML: the controls read right before any script runs', { timeout: 30_000 }, async () => {
  const context = await env.browser.newContext({ javaScriptEnabled: false, viewport: { width: 390, height: 844 } });
  const page = await context.newPage();
  await page.goto(`${env.server.url}/compare.html`);
  for (const selector of ['#burst', '#reset', 'label:has(#burst-size)', 'label:has(#sender)', 'label:has(#interval)', '#lang', 'h1']) {
    assert.ok((await page.locator(selector).textContent()).trim().length > 1, `${selector} has a label`);
  }
  await context.close();
});

for (const [width, height] of [[390, 844], [1440, 900]]) {
  for (const lang of ['en', 'zh']) {
    test(`no horizontal scroll, no serious axe finding at ${width}x${height} (${lang})`, { timeout: 90_000 }, async () => {
      const page = await openCompare({ width, height, lang });
      env.pages.push(page);
      await burst(page, { size: 3, sender: 'sse' });
      await page.waitForSelector('.tpanel[data-technique="poll"] .rec-http');
      await page.locator('.tpanel[data-technique="poll"] .rec-http summary').first().click();
      assert.equal(await horizontalOverflow(page), 0);
      assert.deepEqual(await seriousViolations(page), []);
      if (width === 390) {
        for (const narrow of [360, 430]) {
          await page.setViewportSize({ width: narrow, height });
          await sleep(200);
          assert.equal(await horizontalOverflow(page), 0, `at ${narrow} px`);
        }
        await page.setViewportSize({ width, height });
        if (lang === 'en') {
          await page.evaluate(() => scrollTo(0, 0)); // the top: header, controls, verdicts
          await page.screenshot({ path: screenshotPath('compare-phone.png') });
        }
      }
      assert.deepEqual(page.errors, []);
      await page.context().close();
    });
  }
}
