// The pages' Content Security Policy: the demo runs under it without a single violation (every technique, the
// comparison view), and no other site can frame the pages.

import { before, after, test } from 'node:test';
import assert from 'node:assert/strict';
import { useServerAndBrowser, newPage, say, waitForMessage, eventually, sleep } from '../lib/harness.mjs';

const env = useServerAndBrowser({ before, after });

/** Records the page's CSP violations (the DOM event, from the first script on) and the console's refusals. */
async function watchViolations(page) {
  page.violations = [];
  page.on('console', (m) => {
    if (/Content Security Policy|Refused to/i.test(m.text())) page.violations.push(`console: ${m.text()}`);
  });
  await page.exposeFunction('reportViolation', (v) => page.violations.push(v));
  await page.addInitScript(() => {
    document.addEventListener('securitypolicyviolation', (e) =>
      window.reportViolation(`${e.violatedDirective}: ${e.blockedURI} (${e.sourceFile}:${e.lineNumber})`));
  });
}

test('the chat page runs every technique under its CSP without a violation', { timeout: 90_000 }, async () => {
  for (const transport of ['ws', 'sse', 'stream', 'iframe', 'longpoll', 'poll']) {
    const page = await newPage(env.browser);
    await watchViolations(page);
    const response = await page.goto(`${env.server.url}/?transport=${transport}&interval=0.5`);
    assert.match(response.headers()['content-security-policy'], /frame-ancestors 'none'/);
    await page.waitForFunction(() => window.chatlab?.client?.id, null, { timeout: 10_000 });
    await say(page, `csp ${transport}`);
    await waitForMessage(page, `csp ${transport}`);
    await sleep(300);
    assert.deepEqual(page.violations, [], `${transport}: no CSP violation`);
    assert.deepEqual(page.errors, []);
    await page.context().close();
  }
});

test('the comparison view runs under its CSP without a violation', { timeout: 60_000 }, async () => {
  const page = await newPage(env.browser);
  await watchViolations(page);
  const response = await page.goto(`${env.server.url}/compare.html`);
  assert.match(response.headers()['content-security-policy'], /default-src 'self'/);
  await sleep(2_000);
  assert.deepEqual(page.violations, []);
  assert.deepEqual(page.errors, []);
  await page.context().close();
});

test('another site cannot frame the pages; a file without the policy can be framed', { timeout: 30_000 }, async () => {
  const page = await newPage(env.browser);
  const refused = [];
  page.on('console', (m) => {
    if (/frame-ancestors/.test(m.text())) refused.push(m.text());
  });
  // An about:blank page (an origin other than the server's) that frames both pages and, as a control, /healthz.
  await page.setContent(`<iframe id="chat" src="${env.server.url}/"></iframe>` +
    `<iframe id="compare" src="${env.server.url}/compare.html"></iframe>` +
    `<iframe id="plain" src="${env.server.url}/healthz"></iframe>`);
  const frameOf = async (id) => (await page.$(`#${id}`)).contentFrame();
  await eventually(async () => {
    const frame = await frameOf('plain');
    return frame && (await frame.evaluate(() => document.body?.innerText ?? '').catch(() => '')).trim() === 'ok';
  }, { message: 'the control frame loaded' });
  await eventually(() => refused.length >= 2, { message: 'the browser refused to frame both pages' });
  for (const id of ['chat', 'compare']) {
    const frame = await frameOf(id);
    const loaded = frame ? await frame.evaluate(() => !!document.querySelector('script[src]')).catch(() => false) : false;
    assert.equal(loaded, false, `${id}: the page did not load inside another site's frame`);
  }
  await page.context().close();
});
