// Who is online comes from the page's own channel: the presence snapshot in the
// welcome (or a poll's first answer) and the join / leave / rename events, never
// from /api/presence. An idle WebSocket page sends no HTTP request at all, and
// while the page is disconnected its online list greys and says it may be stale.

import { before, after, test } from 'node:test';
import assert from 'node:assert/strict';
import {
  useServerAndBrowser, startServer, launchBrowser, newPage, waitConnected, say, waitForMessage, identity, sleep,
} from '../lib/harness.mjs';

const env = useServerAndBrowser({ before, after });

/** Opens the chat page recording every HTTP request it makes (page.requests: ["GET /path?query"]). */
async function openRecorded(browser, server, transport, viewport) {
  const page = await newPage(browser, viewport ? { viewport } : {});
  page.requests = [];
  page.on('request', (request) => {
    const url = new URL(request.url());
    page.requests.push(`${request.method()} ${url.pathname}${url.search}`);
  });
  await page.addInitScript(() => localStorage.setItem('chatlab.lang', 'en'));
  await page.goto(`${server.url}/?transport=${transport}&interval=0.5`);
  await waitConnected(page);
  return page;
}

/** The online list as shown: {id: transport}. */
const onlineList = (page) => page.evaluate(() =>
  Object.fromEntries([...document.querySelectorAll('#online li[data-id]')].map((li) => [li.dataset.id, li.dataset.transport])));

test('a WebSocket page makes no HTTP request over 10 s of chat', { timeout: 60_000 }, async () => {
  const page = await openRecorded(env.browser, env.server, 'ws');
  const other = await openRecorded(env.browser, env.server, 'poll');
  const { nickname } = await identity(other);
  await page.waitForSelector(`#online li[data-transport="poll"]`);
  await sleep(300);
  const loaded = page.requests.length;
  assert.ok(loaded >= 3, `the page itself was loaded over HTTP: ${page.requests}`);

  const started = Date.now();
  let n = 0;
  while (Date.now() - started < 10_000) {
    n += 1;
    await say(other, `from poll ${n}`);
    if (n % 2 === 0) await say(page, `from ws ${n}`);
    await sleep(500);
  }
  await say(other, '/nick Renamed');
  await waitForMessage(page, `from poll ${n}`);
  await page.waitForFunction(() => [...document.querySelectorAll('#online .nick')].some((e) => e.textContent === 'Renamed'));
  assert.ok(!(await page.textContent('#online')).includes(nickname), 'the old name is gone from the list');
  assert.deepEqual(page.requests.slice(loaded), [], 'no HTTP request after the page loaded');
  for (const p of [page, other]) {
    assert.ok(!p.requests.some((r) => r.includes('/api/presence')), `no /api/presence request: ${p.requests}`);
    assert.deepEqual(p.errors, []);
    await p.context().close();
  }
});

test('every technique builds the online list from its channel', { timeout: 90_000 }, async () => {
  const pages = {};
  const ids = {};
  // Each page joins after the previous ones: the first learns of the others from join events, the last from
  // its presence snapshot, the others from both.
  for (const transport of ['ws', 'sse', 'stream', 'iframe', 'longpoll', 'poll']) {
    pages[transport] = await openRecorded(env.browser, env.server, transport);
    ids[transport] = (await identity(pages[transport])).id;
  }
  const expected = Object.fromEntries(Object.entries(ids).map(([transport, id]) => [id, transport]));
  for (const [transport, page] of Object.entries(pages)) {
    await page.waitForFunction((n) => document.querySelectorAll('#online li[data-id]').length === n, 6);
    assert.deepEqual(await onlineList(page), expected, `the list on the ${transport} page`);
    assert.equal(await page.textContent('#count'), '6');
  }
  // The first request of a poll transport asks for the snapshot; none asks /api/presence.
  assert.ok(pages.poll.requests.some((r) => r.startsWith('GET /api/poll') && r.includes('presence=1')));
  assert.ok(pages.longpoll.requests.some((r) => r.startsWith('GET /api/longpoll') && r.includes('presence=1')));

  // A page that leaves goes from every list.
  await pages.longpoll.close({ runBeforeUnload: true });
  delete expected[ids.longpoll];
  for (const transport of ['ws', 'sse', 'stream', 'iframe', 'poll']) {
    await pages[transport].waitForFunction((id) => !document.querySelector(`#online li[data-id="${id}"]`), ids.longpoll);
    assert.deepEqual(await onlineList(pages[transport]), expected);
  }
  for (const page of Object.values(pages)) {
    assert.ok(!page.requests.some((r) => r.includes('/api/presence')), `no /api/presence request: ${page.requests}`);
    assert.deepEqual(page.errors, []);
    await page.context().close();
  }
});

test('the online list greys while the server is away', { timeout: 60_000 }, async () => {
  const server = await startServer();
  const browser = await launchBrowser();
  try {
    const page = await openRecorded(browser, server, 'ws');
    const other = await openRecorded(browser, server, 'sse');
    await page.waitForFunction(() => document.querySelectorAll('#online li[data-id]').length === 2);
    assert.equal(await page.isVisible('#online-stale'), false);
    await server.stop();
    await page.waitForSelector('#online-panel.stale');
    assert.equal(await page.isVisible('#online-stale'), true);
    assert.match(await page.textContent('#online-stale'), /Not connected: this list may be out of date/);
    const nick = await page.evaluate(() => getComputedStyle(document.querySelector('#online .nick')).color);
    assert.equal(nick, 'rgb(75, 85, 99)', 'the names are greyed');
    assert.equal(await page.locator('#online li[data-id]').count(), 2, 'what we knew is still shown');
    for (const p of [page, other]) assert.deepEqual(p.errors, []);
  } finally {
    await browser.close().catch(() => {});
    await server.stop();
  }
});
