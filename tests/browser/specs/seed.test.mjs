// The seed's original page (../shared/seed/node/WebSocket_chart_web.html) chats
// with the new page through `/`, the seed protocol.
//
// How the seed page is served: by this test itself, not by chatlab: a small
// node:http server on 127.0.0.1 (another port) serves a copy of the page in
// which only URLs change:
//  - the five CDN <link>/<script> URLs point at the same versions from npm
//    (jquery@2.2.4, bootstrap@4.0.0-alpha.2, tether@1.3.2, see package.json);
//  - `new WebSocket('ws://localhost:8180')` gets the test server's host:port (`wss://` over HTTPS).
//    (page.routeWebSocket() cannot do this instead: its connectToServer() always
//    dials the page's original URL, and nothing listens on 8180 here. And the
//    copy is not served with page.route(): Chromium treats such a page as
//    public and blocks its socket to 127.0.0.1 (Local Network Access checks).)
// The rest of the page, its script included, is the seed's, byte for byte.

import { before, after, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { createRequire } from 'node:module';
import {
  REPO_ROOT, useServerAndBrowser, newPage, openChat, say, waitForMessage, waitForNotice, identity, sleep,
} from '../lib/harness.mjs';

const env = useServerAndBrowser({ before, after });
const SEED_DIR = process.env.SEED_DIR || path.resolve(REPO_ROOT, '../shared/seed/node');
const require = createRequire(import.meta.url);
const npmFile = (spec) => require.resolve(spec);

// CDN URL in the seed page -> local copy from node_modules.
const VENDOR = {
  'http://cdn.bootcss.com/bootstrap/4.0.0-alpha.2/css/bootstrap.css': ['bootstrap.css', npmFile('bootstrap/dist/css/bootstrap.css')],
  'http://cdn.bootcss.com/tether/1.3.2/css/tether.css': ['tether.css', npmFile('tether/dist/css/tether.css')],
  'http://cdn.bootcss.com/jquery/2.2.4/jquery.js': ['jquery.js', npmFile('jquery/dist/jquery.js')],
  'http://cdn.bootcss.com/tether/1.3.2/js/tether.js': ['tether.js', npmFile('tether/dist/js/tether.js')],
  'http://cdn.bootcss.com/bootstrap/4.0.0-alpha.2/js/bootstrap.js': ['bootstrap.js', npmFile('bootstrap/dist/js/bootstrap.js')],
};

/** The seed page with its CDN URLs pointing at /vendor/ and its WebSocket at `server`. */
function seedPage(server) {
  const file = path.join(SEED_DIR, 'WebSocket_chart_web.html');
  assert.ok(fs.existsSync(file), `the seed page is expected at ${file} (set SEED_DIR to move it)`);
  let html = fs.readFileSync(file, 'utf8');
  for (const [cdn, [name]] of Object.entries(VENDOR)) {
    assert.ok(html.includes(cdn), `the seed page loads ${cdn}`);
    html = html.replace(cdn, `/vendor/${name}`);
  }
  assert.ok(!html.includes('cdn.bootcss.com'), 'no CDN URL is left');
  const original = "new WebSocket('ws://localhost:8180')";
  assert.ok(html.includes(original), 'the page opens ws://localhost:8180');
  // Over HTTPS (CHATLAB_TLS=1) the same socket as wss://: the seed page itself stays on plain http.
  const scheme = server.url.startsWith('https:') ? 'wss' : 'ws';
  return html.replace(original, `new WebSocket('${scheme}://127.0.0.1:${server.port}')`);
}

/** Serves the seed copy and its vendor files on 127.0.0.1; resolves to {url, close()}. */
async function serveSeed(server) {
  const html = seedPage(server);
  const files = Object.fromEntries(Object.values(VENDOR));
  const site = http.createServer((req, res) => {
    const { pathname } = new URL(req.url, 'http://seed');
    if (pathname === '/' || pathname === '/index.html') {
      res.writeHead(200, { 'Content-Type': 'text/html; charset=utf-8' });
      return res.end(html);
    }
    const name = pathname.replace('/vendor/', '');
    if (!pathname.startsWith('/vendor/') || !files[name]) {
      res.writeHead(404);
      return res.end('not found');
    }
    res.writeHead(200, { 'Content-Type': name.endsWith('.css') ? 'text/css' : 'text/javascript' });
    return res.end(fs.readFileSync(files[name]));
  });
  await new Promise((resolve) => site.listen(0, '127.0.0.1', resolve));
  return {
    url: `http://127.0.0.1:${site.address().port}/`,
    close: () => new Promise((resolve) => { site.closeAllConnections(); site.close(resolve); }),
  };
}

/** Opens the seed page; anything it asks of another machine is refused and recorded. */
async function openSeed(browser, url) {
  const page = await newPage(browser);
  page.offsite = [];
  await page.route((u) => !['127.0.0.1', 'localhost'].includes(u.hostname), (route) => {
    page.offsite.push(route.request().url());
    return route.abort();
  });
  await page.goto(url);
  return page;
}

test("the seed's page and the new page chat through /", { timeout: 60_000 }, async () => {
  const site = await serveSeed(env.server);
  try {
    await chat(site);
  } finally {
    await site.close();
  }
});

async function chat(site) {
  // In Chinese the new page words its notices as the seed does.
  const modern = await openChat(env.browser, env.server, { transport: 'ws', lang: 'zh' });
  const seed = await openSeed(env.browser, site.url);
  const seedLines = () => seed.$$eval('#messages li', (lis) => lis.map((li) => li.textContent.trim()));

  // The seed page joins and is announced to the new page as a guest.
  await seed.waitForFunction(() => document.querySelectorAll('#messages li').length > 0);
  const joined = (await seedLines())[0];
  const seedNick = joined.match(/(\S+) 来了/)[1];
  await waitForNotice(modern, `${seedNick} 来了`);
  assert.ok(Number(await seed.textContent('#count_people')) >= 2, 'the seed page counts both');
  assert.equal(await seed.evaluate(() => typeof window.jQuery), 'function', 'jQuery came from the local copy');

  // seed -> new
  await seed.fill('#message', 'hello from the seed page');
  await seed.click('#send');
  await waitForMessage(modern, 'hello from the seed page');
  const line = await modern.evaluate(() => {
    const li = [...document.querySelectorAll('#messages li.msg')].find((l) => l.querySelector('.text').textContent === 'hello from the seed page');
    return li.querySelector('.nick').textContent;
  });
  assert.equal(line, seedNick, 'the new page names the seed user');

  // new -> seed
  const me = await identity(modern);
  await say(modern, 'hello from chatlab');
  await seed.waitForFunction(
    () => [...document.querySelectorAll('#messages li')].some((li) => li.textContent.includes('hello from chatlab')),
  );
  const shown = (await seedLines()).find((l) => l.includes('hello from chatlab'));
  assert.ok(shown.includes(me.nickname), `the seed page labels it with the sender (${shown})`);

  // /nick from the seed page reaches the new page as a rename notice.
  await seed.fill('#message', '/nick SeedUser');
  await seed.press('#message', 'Enter'); // the form's onsubmit, as a seed user would
  await waitForNotice(modern, `用户 ${seedNick} 改名为: SeedUser`);

  // The seed page leaving is announced at once.
  await seed.close();
  await waitForNotice(modern, `SeedUser 走了`);

  assert.deepEqual(seed.offsite, [], 'the seed page loaded nothing from outside');
  assert.deepEqual(seed.errors, []);
  assert.deepEqual(modern.errors, []);
  await sleep(100);
  await modern.context().close();
}
