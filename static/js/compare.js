// The comparison view: six participants in the same room, one per technique,
// each with its own wire log (js/wire.js). The figures come from three places:
//  - each participant's own counters, kept by the server per session, carried
//    by every record of its wire log and read every second (requests, wire
//    bytes up and down, frames, events delivered): exact, and only this view's
//    six participants;
//  - the server's latency histograms, GET /api/stats every second: the
//    percentiles of the counts added since the last reset (the whole technique);
//  - this page's timings: for every room event, receive time minus its `ts`.
// "Reset" takes a new baseline for all three and empties every list, so every
// figure on the page counts from the same moment.

import { ChatClient } from './client.js';
import { getStats, leaveSession } from './api.js';
import { t, applyLanguage, toggleLanguage } from './i18n.js';
import { drawBars, drawLines } from './chart.js';
import { mountWireView, bytes } from './wire.js';

const $ = (id) => document.getElementById(id);
const TECHNIQUES = ['ws', 'sse', 'stream', 'iframe', 'longpoll', 'poll'];
// Darker than the badges' colours so that text and thin lines keep a 4.5:1 contrast on white.
const COLORS = { ws: '#1d4ed8', sse: '#15803d', stream: '#0f766e', iframe: '#854d0e', longpoll: '#c2410c', poll: '#7e22ce' };
const FEED_LENGTH = 100;     // room events kept in each panel's list
const HISTORY_LENGTH = 300;  // chart samples kept (one a second)
const LATENCY_SAMPLES = 5000; // page latencies kept per technique
const SETTLE_MS = 1500;      // after all six joined, wait this long for the join notices, then count from zero

/** Where docs/techniques.md explains each point (served at /docs/techniques, GitHub-style anchors). */
const DOC = {
  poll: '/docs/techniques#1-short-interval-polling',
  longpoll: '/docs/techniques#2-long-polling',
  sse: '/docs/techniques#3-server-sent-events-sse',
  stream: '/docs/techniques#8-http-streaming-ndjson',
  iframe: '/docs/techniques#9-the-forever-iframe',
  ws: '/docs/techniques#4-websocket',
  side: '/docs/techniques#5-side-by-side',
};

// ---- one participant, one panel and one wire log per technique ----

const panels = {};
for (const name of TECHNIQUES) {
  const panel = $('panel-template').content.firstElementChild.cloneNode(true);
  panel.dataset.technique = name;
  panel.querySelector('.name').dataset.i18n = name;
  panel.setAttribute('aria-label', name);
  $('panels').append(panel);

  const state = {
    name,
    panel,
    received: [],      // {seq, message} of every chat message since the last reset (the tests read it)
    events: 0,         // room events received since the last reset
    latencies: [],     // page latency (ms) of each room event since the last reset
    empty: 0,          // poll / long-poll answers since the last reset that carried no event
    lastDelivered: null, // the session's events_delivered after the previous wire record
    client: null,
    wire: null,
  };
  state.client = new ChatClient({
    transport: name,
    pollInterval: Number($('interval').value) * 1000,
    onevent: (event) => receivedEvent(state, event),
    onstatus: (status) => {
      state.status = status;
      showStatus(state);
      settle();
    },
  });
  state.wire = mountWireView(panel.querySelector('.wire-slot'), {
    client: state.client,
    heading: 'h4',
    onrecord: (record) => wireRecord(state, record),
  });
  panels[name] = state;
}

function showStatus(state) {
  const status = state.status || { state: 'connecting' };
  const box = state.panel.querySelector('.status');
  box.dataset.state = status.state;
  box.querySelector('.state').textContent = t('state.' + status.state, {
    s: ((status.retryIn || 0) / 1000).toFixed(1),
    n: status.attempt,
  });
}

function receivedEvent(state, event) {
  const now = Date.now();
  if (event.type === 'welcome' || (event.type === 'nick_update' && event.id === state.client.id)) {
    state.panel.querySelector('.who').textContent = event.nickname;
  }
  const room = typeof event.seq === 'number' && event.type !== 'welcome';
  if (!room && event.type !== 'gap') return;

  const li = document.createElement('li');
  if (event.type === 'gap') {
    li.textContent = t(event.reason === 'skipped' ? 'skipped' : 'gap', { from: event.from, to: event.to });
    li.className = 'gap';
  } else {
    state.events += 1;
    if (typeof event.ts === 'number') state.latencies.push(Math.max(0, now - event.ts));
    if (state.latencies.length > LATENCY_SAMPLES) state.latencies.shift();
    if (event.type === 'message') state.received.push({ seq: event.seq, message: event.message });
    li.dataset.seq = event.seq;
    const seq = document.createElement('span');
    seq.className = 'seq';
    seq.textContent = '#' + event.seq;
    li.append(seq, document.createTextNode(feedText(event)));
    if (event.type !== 'message') li.className = 'notice-line';
    li.event = event; // kept so that a language switch can say it again
  }
  const feed = state.panel.querySelector('.feed');
  feed.append(li);
  while (feed.children.length > FEED_LENGTH) feed.firstElementChild.remove();
  feed.scrollTop = feed.scrollHeight;
  state.panel.querySelector('.received-count').textContent = String(state.events);
  scheduleRender();
}

/** A room event as one line in the page's language (notices from their fields; the seed's text otherwise). */
function feedText(event) {
  if (event.type === 'message') return `${event.nickname}: ${event.message}`;
  switch (event.notice) {
    case 'join': return t('feedJoin', { nick: event.nickname });
    case 'leave': return t('feedLeave', { nick: event.nickname });
    case 'crowd': return t('feedCrowd', { j: event.joined ?? 0, l: event.left ?? 0 });
    case 'shutdown': return t('feedShutdown');
    default:
      if (event.type === 'nick_update' && event.previous) return t('feedRename', { old: event.previous, nick: event.nickname });
      return event.message || event.type;
  }
}

/** Every record of a panel's wire log: counts the poll answers that brought nothing. */
function wireRecord(state, record) {
  const before = state.lastDelivered;
  const totals = record.type === 'totals' ? record : record.totals;
  if (totals && typeof totals.events_delivered === 'number') state.lastDelivered = totals.events_delivered;
  if (record.type === 'http' && record.request && /^GET \/api\/(long)?poll[?\s]/.test(record.request.head || '')
      && before !== null && state.lastDelivered === before) {
    state.empty += 1; // the session's delivered count did not move across this answer
  }
  settle();
  scheduleRender();
}

// ---- the burst ----

$('controls').addEventListener('submit', async (event) => {
  event.preventDefault();
  const size = Math.min(40, Math.max(1, Math.round(Number($('burst-size').value)) || 20));
  $('burst-size').value = size;
  const sender = panels[$('sender').value].client;
  const stamp = new Date().toLocaleTimeString();
  $('burst').disabled = true;
  try {
    for (let i = 1; i <= size; i++) {
      await sender.send(`burst ${i}/${size} · ${stamp}`);
      $('burst-status').textContent = `${i}/${size}`;
    }
  } catch (err) {
    $('burst-status').textContent = `${t('sendFailed')}: ${err.message}`;
  } finally {
    $('burst').disabled = false;
  }
});

$('interval').addEventListener('change', () => {
  const seconds = Math.min(10, Math.max(0.2, Number($('interval').value) || 1));
  $('interval').value = seconds;
  panels.poll.client.setPollInterval(seconds * 1000);
});

// ---- the baseline ----

let baseline = null; // the /api/stats snapshot latency and the wire views' cost are counted from
let latest = null;
let history = [];    // [{time, values: {ws: {...metrics}, ...}}]
let resetAt = null;  // when the figures started counting (null: since the page opened)
let settled = false; // the automatic first reset, once all four have joined, has been done
let settleTimer = null;
let resets = 0;      // counts resets, so that only the latest one's baseline is kept

/**
 * The server's histograms as they are now become the baseline: not the last
 * one-second sample, which would count what came since. Until the answer is
 * in, server latency shows "no data".
 */
function takeBaseline() {
  baseline = null;
  latest = null;
  const asked = ++resets;
  readServer().then((now) => {
    if (asked !== resets || !now) return; // a later reset asked again, or the server is away
    baseline = now;
    latest = now;
  });
}

/**
 * The server's figures now: /api/stats (latency histograms, the wire views' own
 * bucket) and each participant's counters (GET /api/sessions/{session}/wire).
 * The counters are read here as well as carried by the wire logs' records,
 * because a record only comes when something happens: a long poll held when
 * its wire log opened would leave the log's totals behind until its next answer.
 * These reads count in the server's wire-view bucket, never under a technique.
 * Resolves to null when the server does not answer.
 */
async function readServer() {
  try {
    const [stats, ...sessions] = await Promise.all([
      getStats(),
      ...TECHNIQUES.map((name) => sessionWire(panels[name].client.session)),
    ]);
    stats.sessions = Object.fromEntries(TECHNIQUES.map((name, i) => [name, sessions[i]]));
    return stats;
  } catch {
    return null;
  }
}

/** GET /api/sessions/{session}/wire -> {requests, wire_bytes_in, ...} (null without a session, or unknown). */
async function sessionWire(session) {
  if (!session) return null;
  const response = await fetch(`/api/sessions/${encodeURIComponent(session)}/wire`, { cache: 'no-store' });
  if (!response.ok) return null;
  return (await response.json()).session_wire;
}

/** Takes a new baseline for every figure on the page and empties every list. */
function reset() {
  takeBaseline();
  history = [];
  resetAt = Date.now();
  for (const state of Object.values(panels)) {
    state.received = [];
    state.events = 0;
    state.latencies = [];
    state.empty = 0;
    state.panel.querySelector('.feed').replaceChildren();
    state.panel.querySelector('.received-count').textContent = '0';
    state.wire.reset();
  }
  $('burst-status').textContent = '';
  render();
}

$('reset').addEventListener('click', () => reset());

/**
 * A fresh view starts counting once all four participants are connected and
 * the server has sent each one's counters: their joins happened before, so
 * "received" and "delivered" start together at zero.
 */
function settle() {
  if (settled || settleTimer) return;
  const ready = Object.values(panels).every((s) => s.status && s.status.state === 'open' && s.wire.totals);
  if (!ready) return;
  settleTimer = setTimeout(() => {
    settled = true;
    reset();
  }, SETTLE_MS);
}

// ---- the figures ----

/** The figures of one technique since the last reset. */
function metricsFor(name) {
  const state = panels[name];
  const w = counters(name); // the server's counters for this participant, since the reset
  const server = serverLatency(name);
  const page = percentiles(state.latencies);
  const polls = name === 'poll' || name === 'longpoll';
  return {
    received: state.events,
    delivered: w.events_delivered,
    requests: w.requests,
    emptyAnswers: polls ? state.empty : null,
    framesUp: name === 'ws' ? w.frames_in : null,
    framesDown: name === 'ws' ? w.frames_out : null,
    bytesUp: w.wire_bytes_in,
    bytesDown: w.wire_bytes_out,
    downPerEvent: w.events_delivered > 0 ? w.wire_bytes_out / w.events_delivered : null,
    serverP50: server.p50,
    serverP99: server.p99,
    serverCount: server.count,
    pageP50: page.p50,
    pageP99: page.p99,
  };
}

/**
 * A participant's counters since the baseline: the newest the server gave,
 * from its wire log's last record or the last read of its counters.
 */
function counters(name) {
  const then = baseline && baseline.sessions && baseline.sessions[name];
  const zero = Object.fromEntries(COUNTER_KEYS.map((key) => [key, 0]));
  if (!then) return zero; // no baseline yet: nothing has counted
  const read = (latest && latest.sessions && latest.sessions[name]) || then;
  const logged = panels[name].wire.totals || then;
  // Counters only grow: of two readings of the same counter, the larger is the newer.
  return Object.fromEntries(COUNTER_KEYS.map((key) => [
    key,
    Math.max(0, Math.max(read[key] || 0, logged[key] || 0) - (then[key] || 0)),
  ]));
}
const COUNTER_KEYS = ['requests', 'wire_bytes_in', 'wire_bytes_out', 'frames_in', 'frames_out', 'events_delivered'];

/** Percentiles of the server's latency histogram counts added since the baseline (upper bucket bounds). */
function serverLatency(name) {
  const now = latest && latest.transports[name] && latest.transports[name].latency_ms;
  if (!now || !Array.isArray(now.buckets)) return { p50: null, p99: null, count: 0 };
  const then = baseline && baseline.transports[name] && baseline.transports[name].latency_ms;
  const before = new Map(((then && then.buckets) || []).map(([upper, n]) => [upper, n]));
  const delta = now.buckets
    .map(([upper, n]) => [upper, Math.max(0, n - (before.get(upper) || 0))])
    .filter(([, n]) => n > 0)
    .sort((a, b) => a[0] - b[0]);
  const total = delta.reduce((sum, [, n]) => sum + n, 0);
  if (total === 0) return { p50: null, p99: null, count: 0 };
  const at = (q) => {
    let seen = 0;
    for (const [upper, n] of delta) {
      seen += n;
      if (seen >= q * total) return upper;
    }
    return delta[delta.length - 1][0];
  };
  return { p50: at(0.5), p99: at(0.99), count: total };
}

function percentiles(values) {
  if (values.length === 0) return { p50: null, p99: null };
  const sorted = [...values].sort((a, b) => a - b);
  const at = (q) => sorted[Math.min(sorted.length - 1, Math.ceil(q * sorted.length) - 1)];
  return { p50: at(0.5), p99: at(0.99) };
}

async function readStats() {
  const asked = resets;
  const now = await readServer();
  // Before the baseline arrives nothing counts; with the server away the last numbers stay on screen.
  if (now && asked === resets && baseline) latest = now;
  const values = {};
  for (const name of TECHNIQUES) values[name] = metricsFor(name);
  history.push({ time: Date.now(), values });
  if (history.length > HISTORY_LENGTH) history.shift();
  render();
}

// ---- drawing ----

/** The table's rows: [key, label, cell text of a technique's metrics]. */
const ROWS = [
  ['received', 'rowReceived', (m) => count(m.received), (m) => m.received],
  ['delivered', 'rowDelivered', (m) => count(m.delivered), (m) => m.delivered],
  ['requests', 'requests', (m) => count(m.requests), (m) => m.requests],
  ['emptyAnswers', 'rowEmpty', (m) => (m.emptyAnswers === null ? t('notApplicable') : count(m.emptyAnswers)), (m) => m.emptyAnswers ?? 0],
  ['frames', 'rowFrames', (m) => (m.framesUp === null ? t('notApplicable') : `${count(m.framesUp)} / ${count(m.framesDown)}`), (m) => (m.framesUp ?? 0) + (m.framesDown ?? 0)],
  ['bytesUp', 'bytesUp', (m) => bytes(m.bytesUp), (m) => m.bytesUp],
  ['bytesDown', 'bytesDown', (m) => bytes(m.bytesDown), (m) => m.bytesDown],
  ['downPerEvent', 'rowDownPerEvent', (m) => (m.downPerEvent === null ? t('noData') : bytes(Math.round(m.downPerEvent))), (m) => m.downPerEvent ?? 0],
  ['latencyServer', 'latencyServer', (m) => pair(m.serverP50, m.serverP99, '≤ '), (m) => m.serverP99 ?? 0],
  ['latencyPage', 'latencyPage', (m) => pair(m.pageP50, m.pageP99, ''), (m) => m.pageP99 ?? 0],
];

const CHART_METRICS = {
  requests: { label: 'requests', format: count },
  bytesUp: { label: 'bytesUp', format: bytes },
  bytesDown: { label: 'bytesDown', format: bytes },
  emptyAnswers: { label: 'rowEmpty', format: count },
  pageP50: { label: 'latencyPageP50', format: ms },
};

function buildTable() {
  const body = $('summary-body');
  body.replaceChildren();
  for (const [key, label] of ROWS) {
    const tr = document.createElement('tr');
    tr.dataset.metric = key;
    const th = document.createElement('th');
    th.scope = 'row';
    th.textContent = t(label);
    tr.append(th);
    for (const name of TECHNIQUES) {
      const td = document.createElement('td');
      td.dataset.technique = name;
      td.dataset.metric = key;
      td.dataset.value = '0';
      td.textContent = '0';
      tr.append(td);
    }
    body.append(tr);
  }
}

let renderQueued = false;
function scheduleRender() {
  if (renderQueued) return;
  renderQueued = true;
  requestAnimationFrame(() => {
    renderQueued = false;
    render();
  });
}

function render() {
  const all = {};
  for (const name of TECHNIQUES) all[name] = metricsFor(name);

  for (const [key, , text, value] of ROWS) {
    for (const name of TECHNIQUES) {
      const cell = document.querySelector(`#summary td[data-technique="${name}"][data-metric="${key}"]`);
      cell.dataset.value = value(all[name]);
      cell.textContent = text(all[name]);
    }
  }
  $('since').textContent = resetAt ? t('sinceReset', { time: new Date(resetAt).toLocaleTimeString() }) : t('sinceOpened');
  showWireViewCost();

  const group = (key, label, format) => ({
    title: t(label),
    rows: TECHNIQUES.map((name) => ({
      label: t(name),
      color: COLORS[name],
      value: all[name][key] || 0,
      text: all[name][key] === null ? t('notApplicable') : format(all[name][key]),
    })),
  });
  drawBars($('bars'), [
    group('requests', 'requests', count),
    group('bytesUp', 'bytesUp', bytes),
    group('bytesDown', 'bytesDown', bytes),
    group('emptyAnswers', 'rowEmpty', count),
    group('pageP50', 'latencyPageP50', ms),
  ]);

  const metric = $('chart-metric').value || 'requests';
  drawLines(
    $('chart'),
    TECHNIQUES.map((name) => ({
      color: COLORS[name],
      points: history.map((h) => [h.time, h.values[name][metric] ?? 0]),
    })),
    CHART_METRICS[metric].format,
  );
  renderVerdicts(all);
}

/** What the four wire logs cost, from the server's separate bucket (absent on a server without one). */
function showWireViewCost() {
  const now = latest && latest.other && latest.other.wire_view;
  const then = (baseline && baseline.other && baseline.other.wire_view) || {};
  const note = $('wire-view-cost');
  if (!now) {
    note.textContent = t('noteWireView');
    return;
  }
  const d = (key) => Math.max(0, (now[key] || 0) - (then[key] || 0));
  note.textContent = t('noteWireViewCost', { down: bytes(d('wire_bytes_out')), up: bytes(d('wire_bytes_in')) });
}

/** One plain-language sentence per metric, each with a link to the section that explains it. */
function renderVerdicts(m) {
  const items = [];
  const say = (text, href, section) => items.push({ text, href, section });
  const names = (f) => Object.fromEntries(TECHNIQUES.map((n) => [n, f(m[n])]));

  const poll = m.poll;
  if (poll.requests > 0) {
    const key = poll.emptyAnswers === poll.requests ? 'verdictPollAllEmpty' : 'verdictPoll';
    say(t(key, { n: times(poll.requests), e: times(poll.emptyAnswers), i: $('interval').value }), DOC.poll, 'docPoll');
  }
  if (m.longpoll.requests > 0) {
    const key = m.longpoll.emptyAnswers > 0 ? 'verdictLongpollEmpty' : 'verdictLongpoll';
    say(t(key, { n: times(m.longpoll.requests), e: count(m.longpoll.emptyAnswers) }), DOC.longpoll, 'docLongpoll');
  }
  const delivered = TECHNIQUES.some((n) => m[n].delivered > 0);
  if (delivered) {
    say(t('verdictPushers', { s: count(m.sse.requests), w: count(m.ws.requests), f: count(m.ws.framesDown), e: count(m.ws.delivered) }), DOC.ws, 'docWs');
    const per = names((x) => (x.downPerEvent === null ? t('noData') : bytes(Math.round(x.downPerEvent))));
    const best = TECHNIQUES.filter((n) => m[n].downPerEvent !== null)
      .sort((a, b) => m[a].downPerEvent - m[b].downPerEvent)[0];
    say(t('verdictDown', { ...per, best: best ? t(best) : t('noData') }), DOC.side, 'docSide');
  }
  if (TECHNIQUES.some((n) => m[n].bytesUp > 0)) {
    say(t('verdictUp', names((x) => bytes(x.bytesUp))), DOC.ws, 'docWs');
  }
  if (TECHNIQUES.some((n) => m[n].pageP50 !== null)) {
    say(t('verdictLatency', { ...names((x) => ms(x.pageP50)), i: $('interval').value }), DOC.poll, 'docPoll');
  }

  const list = $('verdicts');
  if (items.length === 0) {
    const li = document.createElement('li');
    li.className = 'verdict-empty';
    li.textContent = t(resetAt ? 'verdictsEmptyReset' : 'verdictsEmpty');
    list.replaceChildren(li);
    return;
  }
  list.replaceChildren(...items.map(({ text, href, section }) => {
    const li = document.createElement('li');
    const link = document.createElement('a');
    link.href = href;
    link.textContent = t(section);
    li.append(text + ' ', link);
    return li;
  }));
}

function count(v) {
  if (v === null || v === undefined) return '–';
  return Number.isInteger(v) ? v.toLocaleString('en-US') : v < 10 ? v.toFixed(1) : String(Math.round(v));
}
function times(n) {
  return t(n === 1 ? 'onceN' : 'timesN', { n: count(n) });
}
function ms(v) {
  return v === null || v === undefined ? t('noData') : Math.round(v) + ' ms';
}
function pair(p50, p99, prefix) {
  if (p50 === null || p50 === undefined) return t('noData');
  const round = (v) => (v < 10 ? v.toFixed(1) : String(Math.round(v)));
  return `${prefix}${round(p50)} / ${prefix}${round(p99)} ms`;
}

function fillMetricChoice() {
  const select = $('chart-metric');
  const chosen = select.value || 'requests';
  select.replaceChildren();
  for (const [key, { label }] of Object.entries(CHART_METRICS)) {
    select.append(new Option(t(label), key, false, key === chosen));
  }
}

function fillLegend() {
  $('legend').replaceChildren(
    ...TECHNIQUES.map((name) => {
      const item = document.createElement('span');
      const swatch = document.createElement('span');
      swatch.className = 'swatch';
      swatch.style.background = COLORS[name];
      item.append(swatch, t(name));
      return item;
    }),
  );
}

function relabel() {
  buildTable();
  fillMetricChoice();
  fillLegend();
  for (const state of Object.values(panels)) {
    state.panel.setAttribute('aria-label', t(state.name));
    showStatus(state);
    for (const li of state.panel.querySelectorAll('.feed li.notice-line')) {
      if (li.event) li.lastChild.textContent = feedText(li.event);
    }
  }
  render();
}

$('chart-metric').addEventListener('change', render);
$('lang').addEventListener('click', () => {
  toggleLanguage();
  relabel();
});

addEventListener('pagehide', () => {
  for (const { client } of Object.values(panels)) {
    if (client.session) leaveSession(client.session, { keepalive: true });
  }
});

applyLanguage();
relabel();
window.compare = { panels, settled: () => settled, metrics: () => Object.fromEntries(TECHNIQUES.map((n) => [n, metricsFor(n)])), reset };
for (const state of Object.values(panels)) state.client.start();
takeBaseline();
setInterval(readStats, 1000);
