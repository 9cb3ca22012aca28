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
  for (const transport of ['ws', 'sse', 'longpoll', 'poll']) {
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

test('another site cannot frame the chat page', { timeout: 30_000 }, async () => {
  const page = await newPage(env.browser);
  // A page of another origin (a data: URL is opaque) that tries to frame ours.
  const refused = [];
  page.on('console', (m) => {
    if (/frame-ancestors/.test(m.text())) refused.push(m.text());
  });
  await page.goto(`data:text/html,<iframe src="${env.server.url}/"></iframe>`);
  await eventually(() => refused.length > 0, { message: 'the browser refused to frame the page' });
  const frame = page.frames().find((f) => f !== page.mainFrame());
  const framed = frame ? await frame.evaluate(() => !!document.querySelector('#messages')).catch(() => false) : false;
  assert.equal(framed, false, 'the chat page did not load inside the frame');
  await page.context().close();
});
