import { before, after, test } from 'node:test';
import { useServerAndBrowser, newPage, sleep, say, waitForMessage, waitConnected, identity } from '../lib/harness.mjs';
const env = useServerAndBrowser({ before, after }, { tls: true });
test('debug', { timeout: 300_000 }, async () => {
  for (let i = 0; i < 8; i++) {
    const page = await newPage(env.browser, { viewport: { width: 390, height: 844 } });
    await page.goto(`${env.server.url}/?transport=sse&interval=1&wire=1`);
    await waitConnected(page);
    await page.waitForSelector('#wire .wire-view[data-state="live"]');
    for (const n of [1, 2]) { const text = `x ${i} ${n}`; await say(page, text); await waitForMessage(page, text); }
    await sleep(500);
    const types = await page.evaluate(() => [...document.querySelectorAll('#wire .rec')].map((e) => `${e.dataset.type}/${e.dataset.version || ''}/${e.dataset.stream || ''}/${e.dataset.requestLine || ''}`.slice(0, 60)));
    const { session } = await identity(page);
    const w = await page.evaluate(async (s) => (await (await fetch(`/api/sessions/${s}/wire`)).json()).session_wire, session);
    const res = await page.evaluate(() => performance.getEntriesByType('resource').filter((e) => e.name.includes('/api/')).map((e) => new URL(e.name).pathname + ' ' + e.nextHopProtocol + ' ' + Math.round(e.startTime)));
    console.log(i, JSON.stringify(types), JSON.stringify(w), JSON.stringify(res));
    await page.context().close();
  }
});
