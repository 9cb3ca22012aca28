// The comparison view: four participants in the same room, one per technique.
// The numbers come from two places:
//  - the server's own counters, GET /api/stats, read every second and shown as
//    the difference from when this view opened (or was reset);
//  - this page's timings: for every chat message, receive time minus its `ts`.

import { ChatClient } from './client.js';
import { getStats, leaveSession } from './api.js';
import { t, applyLanguage, toggleLanguage } from './i18n.js';
import { drawBars, drawLines } from './chart.js';

const $ = (id) => document.getElementById(id);
const TECHNIQUES = ['ws', 'sse', 'longpoll', 'poll'];
const COLORS = { ws: '#2563eb', sse: '#16a34a', longpoll: '#ea580c', poll: '#9333ea' };
const FEED_LENGTH = 200;     // messages kept in each panel's list
const HISTORY_LENGTH = 300;  // chart samples kept (one a second)

// ---- one participant and one panel per technique ----

const panels = {};
for (const name of TECHNIQUES) {
  const panel = $('panel-template').content.firstElementChild.cloneNode(true);
  panel.dataset.technique = name;
  panel.querySelector('.name').dataset.i18n = name;
  $('panels').append(panel);

  const state = {
    name,
    panel,
    received: [],   // {seq, message} of every chat message since the page opened
    latencies: [],  // page latency (ms) of each message since the last reset
    client: null,
  };
  state.client = new ChatClient({
    transport: name,
    pollInterval: Number($('interval').value) * 1000,
    onevent: (event) => received(state, event),
    onstatus: (status) => {
      const box = panel.querySelector('.status');
      box.dataset.state = status.state;
      box.querySelector('.state').textContent = t('state.' + status.state, {
        s: ((status.retryIn || 0) / 1000).toFixed(1),
        n: status.attempt,
      });
    },
  });
  panels[name] = state;
}

function received(state, event) {
  const now = Date.now();
  if (event.type === 'welcome' || (event.type === 'nick_update' && event.id === state.client.id)) {
    state.panel.querySelector('.who').textContent = event.nickname;
  }
  if (event.type !== 'message' && event.type !== 'gap') return;

  const li = document.createElement('li');
  if (event.type === 'gap') {
    li.textContent = t('gap', { from: event.from, to: event.to });
    li.className = 'gap';
  } else {
    state.received.push({ seq: event.seq, message: event.message });
    if (typeof event.ts === 'number') state.latencies.push(Math.max(0, now - event.ts));
    if (state.latencies.length > 5000) state.latencies.shift();
    li.dataset.seq = event.seq;
    const seq = document.createElement('span');
    seq.className = 'seq';
    seq.textContent = '#' + event.seq;
    li.append(seq, document.createTextNode(`${event.nickname}: ${event.message}`));
  }
  const feed = state.panel.querySelector('.feed');
  feed.append(li);
  while (feed.children.length > FEED_LENGTH) feed.firstElementChild.remove();
  feed.scrollTop = feed.scrollHeight;
  setCell(state.panel, 'received', state.received.length, String(state.received.length));
}

// ---- the burst ----

$('burst').addEventListener('click', async () => {
  const size = Math.min(40, Math.max(1, Number($('burst-size').value) || 20));
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

// ---- the server's counters ----

let baseline = null; // the /api/stats snapshot the deltas are counted from
let latest = null;
let history = [];    // [{time, values: {ws: {...metrics}, ...}}]

$('reset').addEventListener('click', () => {
  baseline = latest;
  history = [];
  for (const state of Object.values(panels)) state.latencies = [];
  render();
});

/** The numbers of one technique since the baseline, as plain numbers. */
function metricsFor(name) {
  const now = (latest && latest.transports[name]) || {};
  const then = (baseline && baseline.transports[name]) || {};
  const delta = (key) => Math.max(0, (now[key] || 0) - (then[key] || 0));
  const wireDown = delta('wire_bytes_out');
  const payloadDown = delta('payload_bytes_out');
  const delivered = delta('events_delivered');
  const down = wireDown || payloadDown; // wire bytes may not be metered yet
  const page = percentiles(panels[name].latencies);
  return {
    requests: delta('requests'),
    bytesDown: down,
    bytesDownIsWire: wireDown > 0,
    bytesUp: delta('wire_bytes_in'),
    delivered,
    bytesPerMsg: delivered > 0 ? down / delivered : 0,
    emptyPolls: delta('empty_responses'),
    serverP50: now.latency_ms ? now.latency_ms.p50 : null,
    serverP99: now.latency_ms ? now.latency_ms.p99 : null,
    pageP50: page.p50,
    pageP99: page.p99,
  };
}

function percentiles(values) {
  if (values.length === 0) return { p50: null, p99: null };
  const sorted = [...values].sort((a, b) => a - b);
  const at = (q) => sorted[Math.min(sorted.length - 1, Math.ceil(q * sorted.length) - 1)];
  return { p50: at(0.5), p99: at(0.99) };
}

async function readStats() {
  try {
    latest = await getStats();
  } catch {
    return; // server away: keep the last numbers on screen
  }
  if (!baseline) baseline = latest;
  const values = {};
  for (const name of TECHNIQUES) values[name] = metricsFor(name);
  history.push({ time: Date.now(), values });
  if (history.length > HISTORY_LENGTH) history.shift();
  render();
}

// ---- drawing ----

const CHART_METRICS = {
  requests: { label: 'requests', format: count },
  bytesDown: { label: 'bytesDown', format: bytes },
  bytesUp: { label: 'bytesUp', format: bytes },
  emptyPolls: { label: 'emptyPolls', format: count },
  pageP99: { label: 'latencyPageP99', format: ms },
};

function render() {
  if (!latest) return;
  const all = {};
  let anyWire = false;
  for (const name of TECHNIQUES) {
    const m = metricsFor(name);
    all[name] = m;
    anyWire ||= m.bytesDownIsWire;
    const panel = panels[name].panel;
    setCell(panel, 'delivered', m.delivered, count(m.delivered));
    setCell(panel, 'requests', m.requests, count(m.requests));
    setCell(panel, 'bytesDown', m.bytesDown, bytes(m.bytesDown));
    setCell(panel, 'bytesUp', m.bytesUp, bytes(m.bytesUp));
    setCell(panel, 'bytesPerMsg', m.bytesPerMsg, m.delivered ? bytes(m.bytesPerMsg) : '–');
    setCell(panel, 'emptyPolls', m.emptyPolls, count(m.emptyPolls));
    setCell(panel, 'latencyServer', m.serverP99 ?? 0, `${ms(m.serverP50)} / ${ms(m.serverP99)}`);
    setCell(panel, 'latencyPage', m.pageP99 ?? 0, `${ms(m.pageP50)} / ${ms(m.pageP99)}`);
  }
  $('metering-note').textContent = anyWire ? '' : t('notMetered');

  const group = (key, label, format) => ({
    title: t(label),
    rows: TECHNIQUES.map((name) => ({
      label: t(name),
      color: COLORS[name],
      value: all[name][key] || 0,
      text: all[name][key] === null ? '–' : format(all[name][key]),
    })),
  });
  drawBars($('bars'), [
    group('requests', 'requests', count),
    group('bytesDown', 'bytesDown', bytes),
    group('bytesPerMsg', 'bytesPerMsg', bytes),
    group('emptyPolls', 'emptyPolls', count),
    group('pageP99', 'latencyPageP99', ms),
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
}

/** Writes a counter; data-value keeps the raw number for scripts and tests. */
function setCell(panel, metric, value, text) {
  const cell = panel.querySelector(`[data-metric="${metric}"]`);
  cell.dataset.value = value;
  cell.textContent = text;
}

function count(v) {
  return Number.isInteger(v) ? String(v) : v < 10 ? v.toFixed(1) : String(Math.round(v));
}
function bytes(v) {
  if (v >= 1e6) return (v / 1e6).toFixed(1) + ' MB';
  if (v >= 1e4) return (v / 1e3).toFixed(1) + ' kB';
  return Math.round(v) + ' B';
}
function ms(v) {
  return v === null || v === undefined ? '–' : Math.round(v) + ' ms';
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

$('chart-metric').addEventListener('change', render);
$('lang').addEventListener('click', () => {
  toggleLanguage();
  fillMetricChoice();
  fillLegend();
  render();
});

addEventListener('pagehide', () => {
  for (const { client } of Object.values(panels)) {
    if (client.session) leaveSession(client.session, { keepalive: true });
  }
});

applyLanguage();
fillMetricChoice();
fillLegend();
window.compare = { panels }; // for the curious (and the browser tests)
for (const state of Object.values(panels)) state.client.start();
readStats();
setInterval(readStats, 1000);
