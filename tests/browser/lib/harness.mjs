// Shared helpers for the browser specs: spawn a chatlab server on a free port,
// launch Debian's Chromium through playwright-core, and wait for things on a
// page. Every wait has a timeout; nothing here waits forever.

import { spawn } from 'node:child_process';
import fs from 'node:fs';
import https from 'node:https';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

export const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
export const SCREENSHOTS = path.join(REPO_ROOT, 'docs', 'screenshots');

/**
 * `CHATLAB_TLS=1`: every spec's server speaks HTTPS (`--tls-self-signed`, so HTTP/2 in Chromium) and every
 * browser believes its certificate; run.sh then lets Node's own requests believe it too.
 */
const TLS_EVERYWHERE = process.env.CHATLAB_TLS === '1';

/** Default timeout (ms) of one wait in a spec. */
export const WAIT = 10_000;

/** Asks the OS for a free TCP port on 127.0.0.1. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const probe = net.createServer();
    probe.unref();
    probe.on('error', reject);
    probe.listen(0, '127.0.0.1', () => {
      const { port } = probe.address();
      probe.close(() => resolve(port));
    });
  });
}

/** A new empty directory under the system's temporary one (a durable room's --data-dir). */
export function tempDataDir() {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'chatlab-browser-'));
}

/**
 * Spawns the chatlab binary (env CHATLAB_BIN, default target/release/chatlab
 * relative to the repo root) with `--bind 127.0.0.1:PORT`, and waits for
 * GET /healthz. Returns {url, port, stop(), output()}. The room is the
 * default durable one, in `dataDir` (give the same one to a restarted server
 * to keep its room), else in a new temporary directory removed on stop.
 * `tls: true` serves HTTPS with a certificate made at start (`--tls-self-signed`):
 * the url is then https://, and the browser must be launched with
 * `launchBrowser({ ignoreCertificateErrors: true })`.
 */
export async function startServer({ port, args = [], dataDir, tls = TLS_EVERYWHERE } = {}) {
  const bin = path.resolve(REPO_ROOT, process.env.CHATLAB_BIN || 'target/release/chatlab');
  if (!fs.existsSync(bin)) {
    throw new Error(`chatlab binary not found at ${bin}: run \`cargo build --release\` first (or set CHATLAB_BIN)`);
  }
  port ??= await freePort();
  const ownDir = dataDir ? null : tempDataDir();
  const lines = [];
  const flags = ['--bind', `127.0.0.1:${port}`, '--data-dir', dataDir || ownDir, ...(tls ? ['--tls-self-signed'] : []), ...args];
  const child = spawn(bin, flags, {
    cwd: REPO_ROOT,
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, RUST_LOG: process.env.RUST_LOG || 'warn' },
  });
  const keep = (chunk) => {
    lines.push(...chunk.toString().split('\n').filter(Boolean));
    if (lines.length > 300) lines.splice(0, lines.length - 300);
  };
  child.stdout.on('data', keep);
  child.stderr.on('data', keep);
  let exited = null;
  const exit = new Promise((resolve) => child.on('exit', (code, signal) => { exited = { code, signal }; resolve(exited); }));

  const url = `${tls ? 'https' : 'http'}://127.0.0.1:${port}`;
  const deadline = Date.now() + 20_000;
  for (;;) {
    if (exited) throw new Error(`chatlab exited early (${JSON.stringify(exited)}):\n${lines.join('\n')}`);
    try {
      if (tls ? (await healthyOverTls(port)) : (await fetch(`${url}/healthz`, { signal: AbortSignal.timeout(1000) })).ok) break;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`chatlab did not answer /healthz within 20 s:\n${lines.join('\n')}`);
    }
    await sleep(100);
  }

  return {
    url,
    port,
    output: () => lines.join('\n'),
    /** SIGKILL (`kill -9`): the process dies without a word to anyone. */
    async kill() {
      if (!exited) child.kill('SIGKILL');
      return Promise.race([exit, sleep(2000)]);
    },
    /** SIGTERM, then SIGKILL if it has not exited within 5 s. */
    async stop() {
      const removeOwnDir = () => { if (ownDir) fs.rmSync(ownDir, { recursive: true, force: true }); };
      if (exited) return removeOwnDir(), exited;
      child.kill('SIGTERM');
      const done = await Promise.race([exit, sleep(5000).then(() => null)]);
      if (done) return removeOwnDir(), done;
      child.kill('SIGKILL');
      const killed = await Promise.race([exit, sleep(2000)]);
      removeOwnDir();
      return killed;
    },
  };
}

/** GET /healthz over HTTPS, believing the self-signed certificate: true on 200. */
function healthyOverTls(port) {
  return new Promise((resolve) => {
    const request = https.get({ host: '127.0.0.1', port, path: '/healthz', rejectUnauthorized: false, timeout: 1000 }, (response) => {
      response.resume();
      resolve(response.statusCode === 200);
    });
    request.on('error', () => resolve(false));
    request.on('timeout', () => { request.destroy(); resolve(false); });
  });
}

/**
 * Launches headless Chromium from Debian's package (never a downloaded one).
 * `ignoreCertificateErrors`: believe any certificate (a server started with `tls: true`).
 */
export function launchBrowser({ ignoreCertificateErrors = TLS_EVERYWHERE } = {}) {
  return chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--no-first-run',
      ...(ignoreCertificateErrors ? ['--ignore-certificate-errors'] : [])],
    timeout: 30_000,
  });
}

/**
 * Opens a new page (in its own browser context, so pages share nothing) and
 * records page errors and dialogs; spec code asserts on them.
 */
export async function newPage(browser, { viewport = { width: 1280, height: 800 } } = {}) {
  const context = await browser.newContext({ viewport, locale: 'en-US' });
  context.setDefaultTimeout(WAIT);
  const page = await context.newPage();
  page.errors = [];
  page.dialogs = [];
  page.on('pageerror', (err) => page.errors.push(String(err)));
  if (process.env.CHATLAB_DEBUG) page.on('console', (m) => console.log(`[page] ${m.type()} ${m.text()}`));
  page.on('dialog', (dialog) => {
    page.dialogs.push(dialog.message());
    dialog.dismiss().catch(() => {});
  });
  return page;
}

/**
 * Opens the chat page with the given technique (language `lang`, browser
 * window `viewport`, default 1280x800) and waits until it is connected and
 * knows who it is. Returns the page.
 */
export async function openChat(browser, server, { transport = 'ws', interval = 0.5, lang = 'en', viewport } = {}) {
  const page = await newPage(browser, viewport ? { viewport } : {});
  await page.addInitScript((l) => localStorage.setItem('chatlab.lang', l), lang);
  await page.goto(`${server.url}/?transport=${transport}&interval=${interval}`);
  await waitConnected(page);
  return page;
}

/** Waits until the chat page's connection is open and its identity known. */
export async function waitConnected(page, timeout = WAIT) {
  try {
    await page.waitForFunction(
      () => document.querySelector('#status').dataset.state === 'open' && window.chatlab.client.id,
      null,
      { timeout },
    );
  } catch (err) {
    const shown = await page.evaluate(() => [
      document.querySelector('#status').textContent.replace(/\s+/g, ' ').trim(),
      [...document.querySelectorAll('#messages li')].slice(-5).map((li) => li.textContent).join(' | '),
    ]).catch(() => []);
    throw new Error(`not connected after ${timeout} ms; status: "${shown[0]}"; last lines: ${shown[1]}`, { cause: err });
  }
}

/** Types a text in the chat page and presses Enter. */
export async function say(page, text) {
  await page.fill('#message', text);
  await page.press('#message', 'Enter');
}

/** Waits until the chat page shows a chat message with exactly this text. */
export async function waitForMessage(page, text, timeout = WAIT) {
  await page.waitForFunction(
    (t) => [...document.querySelectorAll('#messages li[data-type="message"] .text')].some((e) => e.textContent === t),
    text,
    { timeout },
  );
}

/** Waits until the chat page shows a notice containing this text. */
export async function waitForNotice(page, text, timeout = WAIT) {
  await page.waitForFunction(
    (t) => [...document.querySelectorAll('#messages li.notice')].some((e) => e.textContent.includes(t)),
    text,
    { timeout },
  );
}

/** The room events shown on a chat page: [{seq, type, notice, nickname, text}] (notice: join, leave, ... or null). */
export function roomEvents(page) {
  return page.evaluate(() =>
    [...document.querySelectorAll('#messages li[data-seq]')].map((li) => ({
      seq: Number(li.dataset.seq),
      type: li.dataset.type,
      notice: li.dataset.notice || null,
      nickname: li.querySelector('.nick') ? li.querySelector('.nick').textContent : null,
      text: li.querySelector('.text') ? li.querySelector('.text').textContent : li.textContent,
    })),
  );
}

/** The chat page's identity: {id, nickname, session}. */
export function identity(page) {
  return page.evaluate(() => {
    const c = window.chatlab.client;
    return { id: c.id, nickname: c.nickname, session: c.session, technique: c.technique };
  });
}

/** GET a JSON endpoint of the server under test. */
export async function getJson(server, path) {
  const response = await fetch(server.url + path, { signal: AbortSignal.timeout(5000) });
  if (!response.ok) throw new Error(`GET ${path}: ${response.status}`);
  return response.json();
}

/** Polls `check` (sync or async) until it returns a truthy value, or fails after `timeout`. */
export async function eventually(check, { timeout = WAIT, interval = 100, message = 'condition' } = {}) {
  const deadline = Date.now() + timeout;
  let last;
  for (;;) {
    try {
      last = await check();
      if (last) return last;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) throw new Error(`timed out after ${timeout} ms waiting for ${message} (last: ${last})`);
    await sleep(interval);
  }
}

export function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Makes sure docs/screenshots exists and returns the path for `name`. */
export function screenshotPath(name) {
  fs.mkdirSync(SCREENSHOTS, { recursive: true });
  return path.join(SCREENSHOTS, name);
}

/**
 * before/after hooks for a spec file: one server and one browser for the file.
 * Returns an object whose .server and .browser are set once `before` ran.
 */
export function useServerAndBrowser({ before, after }, options = {}) {
  const env = { server: null, browser: null };
  before(async () => {
    env.server = await startServer(options);
    env.browser = await launchBrowser({ ignoreCertificateErrors: Boolean(options.tls) || TLS_EVERYWHERE });
  });
  after(async () => {
    if (env.browser) await env.browser.close().catch(() => {});
    if (env.server) await env.server.stop();
  });
  return env;
}

/**
 * Runs axe-core (from npm, injected into the page; nothing is fetched) on the
 * page as it is now. Returns the violations of impact "serious" or "critical",
 * each as {id, impact, help, targets}: an accessible page returns [].
 */
export async function seriousViolations(page) {
  const axePath = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'node_modules', 'axe-core', 'axe.min.js');
  // Evaluated through the DevTools protocol, not added as a <script>: the page's Content-Security-Policy
  // rightly refuses inline scripts.
  if (!(await page.evaluate(() => typeof window.axe === 'object'))) await page.evaluate(fs.readFileSync(axePath, 'utf8'));
  const result = await page.evaluate(async () => window.axe.run(document, { resultTypes: ['violations'] }));
  return result.violations
    .filter((v) => v.impact === 'serious' || v.impact === 'critical')
    .map((v) => ({ id: v.id, impact: v.impact, help: v.help, targets: v.nodes.map((n) => n.target.join(' ')).slice(0, 10) }));
}

/** The page's horizontal overflow in CSS pixels: 0 when nothing scrolls sideways. */
export async function horizontalOverflow(page) {
  return page.evaluate(() => Math.max(document.documentElement.scrollWidth, document.body.scrollWidth) - window.innerWidth);
}
