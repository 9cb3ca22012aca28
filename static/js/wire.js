// The wire view: what this page's own channel put on the wire, record by record,
// like the Network and WebSocket-frames views of a browser's developer tools.
//
//   const view = mountWireView(section, { client });   // client: a ChatClient
//
// It opens `GET /api/wire?session=<client.session>`, a WebSocket on which the
// server sends one JSON record per text frame (docs/protocol.md):
//   totals  the session's counters (requests, wire bytes in/out, frames, events)
//   http    one request and its response: both heads as sent, head and body bytes, timing; over
//           HTTP/2 ("version":"h2") one stream: the heads as decoded, HEADERS and DATA frame bytes
//           both ways, and what the heads would take as HTTP/1.1 text (HPACK's saving)
//   frame   one WebSocket frame of the session's channel: direction, opcode, header and payload bytes
//   sse     one write of the session's SSE stream: its events' field and data bytes, the chunk framing
//           (over HTTP/2, "version":"h2": one DATA frame of the stream, its 9-byte header as the framing)
//   ndjson  the same for an HTTP stream (fields: the newline of each line)
//   script  the same for a forever iframe (fields: each event's <script ...>parent.chatlab( and )</script>)
//   lagged  records the server dropped because this view fell behind
// Every record carries `totals`, so the figures shown are the server's counts,
// never an estimate made here. The wire view's own socket is counted apart by
// the server (`other.wire_view` in /api/stats), and shown apart here.
//
// Each record gets a bar on one scale shared by every wire view on the page:
// the dark part is overhead (request/response heads, frame headers, SSE field
// names, chunk framing), the light part payload (bodies, frame payloads, SSE
// data). A short poll is a long dark bar around a sliver of payload; a
// WebSocket frame is nearly all payload.

import { t } from './i18n.js';

/** Rows kept in the list (older ones are dropped first); also the most records held while paused. */
export const MAX_RECORDS = 200;
/** Bytes that fill a bar's whole width; larger records are drawn full width and marked. */
export const BAR_SCALE_BYTES = 1024;
/** How often the view checks whether the client's session changed (no network involved). */
const SESSION_CHECK_MS = 500;
/** Reconnect backoff of the wire view's own socket. */
const RETRY_FIRST_MS = 1000;
const RETRY_MAX_MS = 10000;

/**
 * Mounts a wire view into `container` (its existing children are kept) and
 * returns the view. The socket is open while the container is not hidden and
 * the client has a session; it follows the client to a new session.
 *
 * @param {HTMLElement} container
 * @param {object} options
 * @param {{session: string|null}} options.client  whose channel to show
 * @param {(record: object) => void} [options.onrecord]  every record received, for a page that adds it up
 * @param {string} [options.heading]  heading element of the view's title: 'h2' (default) or 'h3'
 */
export function mountWireView(container, { client, onrecord = () => {}, heading = 'h2' } = {}) {
  // The view's stylesheet comes with it, so a page needs no change to host it.
  const href = new URL('../css/wire.css', import.meta.url).href;
  if (![...document.querySelectorAll('link[rel="stylesheet"]')].some((link) => link.href === href)) {
    const link = document.createElement('link');
    link.rel = 'stylesheet';
    link.href = href;
    document.head.append(link);
  }
  return new WireView(container, client, onrecord, heading);
}

class WireView {
  constructor(container, client, onrecord, heading) {
    this.container = container;
    this.client = client;
    this.onrecord = onrecord;
    this.records = [];   // the records listed (bounded by MAX_RECORDS)
    this.pending = [];   // records received while paused (bounded by MAX_RECORDS)
    this.paused = false;
    this.totals = null;  // the server's latest counters for the session
    this.baseline = null; // counters at the last reset(): the totals shown are counted from it
    this.self = { frames: 0, bytes: 0 }; // this view's own socket, counted from the frames it received
    this.socket = null;
    this.session = null;
    this.state = 'idle';
    this.retries = 0;
    this.build(heading);

    this.sessionTimer = setInterval(() => this.follow(), SESSION_CHECK_MS);
    // Open while shown, closed while hidden: a hidden panel costs nothing.
    this.observer = new MutationObserver(() => this.follow());
    this.observer.observe(container, { attributes: true, attributeFilter: ['hidden'] });
    // The page's language changed (i18n.js sets <html lang>): relabel what is on screen.
    this.langObserver = new MutationObserver(() => this.relabel());
    this.langObserver.observe(document.documentElement, { attributes: true, attributeFilter: ['lang'] });
    this.follow();
  }

  // ---- the socket ----

  /** Opens, reopens or closes the socket so that it watches the client's current session while shown. */
  follow() {
    const wanted = this.container.hidden || !this.client ? null : this.client.session;
    if (wanted === this.session && (this.socket || this.retryTimer || !wanted)) return;
    this.disconnect();
    if (wanted && this.session && wanted !== this.session) {
      // A new session (a rejoin after the old one expired): its counters start again.
      this.baseline = null;
      this.totals = null;
      this.add({ type: 'session', at: Date.now() });
    }
    this.session = wanted;
    if (wanted) this.connect();
    else this.setState('idle');
  }

  connect() {
    const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
    const socket = new WebSocket(`${scheme}//${location.host}/api/wire?session=${encodeURIComponent(this.session)}`);
    this.socket = socket;
    this.setState('connecting');
    socket.onopen = () => {
      if (this.socket !== socket) return;
      this.retries = 0;
      this.setState('live');
    };
    socket.onmessage = (message) => {
      if (this.socket !== socket) return;
      this.countSelf(message.data);
      let record;
      try {
        record = JSON.parse(message.data);
      } catch {
        return; // not a record: nothing to show
      }
      this.receive(record);
    };
    socket.onclose = () => {
      if (this.socket !== socket) return;
      this.socket = null;
      // The session may be gone (it left, or the server restarted): follow() picks
      // up a new one; otherwise try again, backing off.
      const delay = Math.min(RETRY_MAX_MS, RETRY_FIRST_MS * 2 ** this.retries);
      this.retries += 1;
      this.setState('retrying');
      this.retryTimer = setTimeout(() => {
        this.retryTimer = null;
        if (this.session && !this.container.hidden) this.connect();
      }, delay);
    };
  }

  disconnect() {
    clearTimeout(this.retryTimer);
    this.retryTimer = null;
    const socket = this.socket;
    this.socket = null;
    if (socket) socket.close();
  }

  /** A server-to-client frame's size on the wire: payload plus a 2, 4 or 10 byte header (unmasked). */
  countSelf(data) {
    const payload = new TextEncoder().encode(data).length;
    this.self.frames += 1;
    this.self.bytes += payload + (payload < 126 ? 2 : payload < 65536 ? 4 : 10);
    this.showSelf();
  }

  // ---- records ----

  receive(record) {
    if (record.totals) this.totals = record.totals;
    if (record.type === 'totals') this.totals = pickTotals(record);
    this.showTotals();
    this.onrecord(record);
    if (['http', 'frame', 'sse', 'ndjson', 'script', 'lagged'].includes(record.type)) this.add(record);
  }

  add(record) {
    if (this.paused) {
      this.pending.push(record);
      if (this.pending.length > MAX_RECORDS) this.pending.shift();
      this.showPaused();
      return;
    }
    this.records.push(record);
    const stick = this.log.scrollHeight - this.log.scrollTop - this.log.clientHeight < 24;
    this.log.append(this.row(record));
    while (this.records.length > MAX_RECORDS) {
      this.records.shift();
      this.log.firstElementChild.remove();
    }
    if (stick) this.log.scrollTop = this.log.scrollHeight; // newest at the bottom, unless the reader scrolled up
    this.empty.hidden = true;
  }

  /** Pauses or resumes the list; records received meanwhile are shown on resume (the last MAX_RECORDS). */
  pause(paused = !this.paused) {
    this.paused = paused;
    this.pauseButton.setAttribute('aria-pressed', String(paused));
    this.pauseButton.textContent = t(paused ? 'wire.resume' : 'wire.pause');
    if (!paused) {
      const held = this.pending;
      this.pending = [];
      for (const record of held) this.add(record);
    }
    this.showPaused();
  }

  /** Empties the list (the totals stay: they are the server's). */
  clear() {
    this.records = [];
    this.pending = [];
    this.log.replaceChildren();
    this.empty.hidden = false;
    this.showPaused();
  }

  /** Empties the list and counts the totals (and this view's own cost) from now on. */
  reset() {
    this.clear();
    this.baseline = this.totals ? { ...this.totals } : null;
    this.self = { frames: 0, bytes: 0 };
    this.showTotals();
    this.showSelf();
  }

  /** The totals shown: the server's counters since the last reset. */
  shown() {
    const now = this.totals || {};
    const then = this.baseline || {};
    return Object.fromEntries(TOTAL_KEYS.map((key) => [key, Math.max(0, (now[key] || 0) - (then[key] || 0))]));
  }

  /** Closes the socket and stops following the client. */
  close() {
    clearInterval(this.sessionTimer);
    this.observer.disconnect();
    this.langObserver.disconnect();
    this.disconnect();
    this.setState('idle');
  }

  // ---- drawing ----

  build(heading) {
    const root = el('div', 'wire-view');
    const head = el('div', 'wire-head');
    const title = el(heading, 'wire-title');
    title.dataset.i18n = 'wire.title';
    title.textContent = t('wire.title');
    this.stateLabel = el('span', 'wire-state');
    this.pauseButton = el('button', 'wire-pause');
    this.pauseButton.type = 'button';
    this.pauseButton.setAttribute('aria-pressed', 'false');
    this.pauseButton.textContent = t('wire.pause');
    this.pauseButton.addEventListener('click', () => this.pause());
    const clearButton = el('button', 'wire-clear');
    clearButton.type = 'button';
    clearButton.dataset.i18n = 'wire.clear';
    clearButton.textContent = t('wire.clear');
    clearButton.addEventListener('click', () => this.clear());
    head.append(title, this.stateLabel, this.pauseButton, clearButton);

    this.totalsLine = el('p', 'wire-totals');
    this.selfLine = el('p', 'wire-self');
    this.pausedLine = el('p', 'wire-paused');
    this.pausedLine.hidden = true;

    const key = el('p', 'wire-key');
    const over = el('span', 'key-overhead');
    over.dataset.i18n = 'wire.overhead';
    const pay = el('span', 'key-payload');
    pay.dataset.i18n = 'wire.payload';
    const scale = el('span', 'key-scale');
    this.scaleLabel = scale;
    key.append(over, pay, scale);

    this.log = el('ol', 'wire-log');
    this.log.tabIndex = 0; // scrollable: reachable by keyboard
    this.empty = el('p', 'wire-empty');
    this.empty.dataset.i18n = 'wire.empty';

    root.append(head, this.totalsLine, this.selfLine, key, this.log, this.empty, this.pausedLine);
    this.container.append(root);
    this.root = root;
    this.relabel();
  }

  relabel() {
    for (const node of this.root.querySelectorAll('[data-i18n]')) node.textContent = t(node.dataset.i18n);
    this.log.setAttribute('aria-label', t('wire.log'));
    this.pauseButton.textContent = t(this.paused ? 'wire.resume' : 'wire.pause');
    this.scaleLabel.textContent = t('wire.scale', { b: bytes(BAR_SCALE_BYTES) });
    this.setState(this.state);
    this.showTotals();
    this.showSelf();
    this.showPaused();
    this.log.replaceChildren(...this.records.map((record) => this.row(record)));
    this.log.scrollTop = this.log.scrollHeight;
  }

  setState(state) {
    this.state = state;
    this.root.dataset.state = state;
    this.stateLabel.textContent = t('wire.state.' + state);
  }

  showTotals() {
    const s = this.shown();
    const line = this.totalsLine;
    for (const key of TOTAL_KEYS) line.dataset[camel(key)] = s[key];
    if (!this.totals) {
      line.textContent = t('wire.noTotals');
      return;
    }
    const strong = el('strong');
    strong.textContent = t(this.baseline ? 'wire.totalsSinceReset' : 'wire.totals', {
      n: count(s.requests),
      up: bytes(s.wire_bytes_in),
      down: bytes(s.wire_bytes_out),
    });
    const parts = [strong];
    if (s.frames_in || s.frames_out) parts.push(' ' + t('wire.frames', { i: count(s.frames_in), o: count(s.frames_out) }));
    parts.push(' ' + t('wire.events', { n: count(s.events_delivered) }));
    line.replaceChildren(...parts);
  }

  showSelf() {
    this.selfLine.dataset.bytes = this.self.bytes;
    this.selfLine.textContent = t('wire.self', { n: count(this.self.frames), b: bytes(this.self.bytes) });
  }

  showPaused() {
    this.pausedLine.hidden = !this.paused;
    this.pausedLine.textContent = t('wire.held', { n: count(this.pending.length) });
  }

  /** One list item for one record. */
  row(record) {
    const li = el('li', 'rec rec-' + record.type);
    li.dataset.type = record.type;
    switch (record.type) {
      case 'http': return this.httpRow(li, record);
      case 'frame': return this.frameRow(li, record);
      case 'sse':
      case 'ndjson':
      case 'script':
        return this.sseRow(li, record);
      case 'lagged':
        li.textContent = t('wire.lagged', { n: count(record.dropped || 0) });
        return li;
      default:
        li.textContent = t('wire.newSession');
        return li;
    }
  }

  httpRow(li, r) {
    if (r.version === 'h2') return this.h2Row(li, r);
    const request = r.request || {};
    const response = r.response || {};
    const requestLine = firstLine(request.head);
    const status = firstLine(response.head).split(' ')[1] || '';
    li.dataset.requestLine = requestLine;
    li.dataset.technique = r.technique || '';
    li.dataset.version = 'http/1.1';
    const up = (request.head_bytes || 0) + (request.body_bytes || 0);
    const down = (response.head_bytes || 0) + (response.body_bytes || 0);
    li.dataset.up = up;
    li.dataset.down = down;

    const details = el('details');
    const summary = el('summary');
    const line = el('span', 'rec-line');
    line.append(span('rec-what', requestLine), span('rec-status', status), span('rec-ms', ms(r.ms)));
    const sizes = el('span', 'rec-sizes');
    sizes.textContent = t('wire.httpSizes', {
      up: bytes(up), uh: bytes(request.head_bytes || 0), ub: bytes(request.body_bytes || 0),
      down: bytes(down), dh: bytes(response.head_bytes || 0), db: bytes(response.body_bytes || 0),
    }) + (r.streaming ? ' ' + t('wire.streaming') : '');
    summary.append(line, sizes,
      bar('up', request.head_bytes || 0, request.body_bytes || 0),
      bar('down', response.head_bytes || 0, response.body_bytes || 0));
    details.append(summary,
      headBlock(t('wire.requestHead', { b: bytes(request.head_bytes || 0) }), request.head),
      headBlock(t('wire.responseHead', { b: bytes(response.head_bytes || 0) }), response.head),
      span('rec-at', t('wire.at', { time: clock(r.at) })));
    li.append(details);
    return li;
  }

  /**
   * An HTTP/2 exchange: one stream of a shared connection. Its heads travel
   * HPACK-compressed in HEADERS frames, its body in DATA frames; beside the
   * bytes they took is what the same heads would take as HTTP/1.1 text.
   */
  h2Row(li, r) {
    const request = r.request || {};
    const response = r.response || {};
    const pseudo = pseudoHeaders(request.head);
    const requestLine = `${pseudo[':method'] || ''} ${pseudo[':path'] || ''}`;
    const status = pseudoHeaders(response.head)[':status'] || '';
    li.dataset.requestLine = requestLine;
    li.dataset.technique = r.technique || '';
    li.dataset.version = 'h2';
    li.dataset.stream = r.stream;
    const up = request.bytes || 0;
    const down = response.bytes || 0;
    li.dataset.up = up;
    li.dataset.down = down;
    const heads = (request.head_bytes || 0) + (response.head_bytes || 0);
    const asText = (request.http1_head_bytes || 0) + (response.http1_head_bytes || 0);
    li.dataset.heads = heads;
    li.dataset.http1Heads = asText;

    const details = el('details');
    const summary = el('summary');
    const line = el('span', 'rec-line');
    line.append(span('rec-badge', t('wire.h2')), span('rec-what', requestLine), span('rec-status', status),
      span('rec-ms', ms(r.ms)));
    const sizes = el('span', 'rec-sizes');
    sizes.textContent = t('wire.h2Sizes', {
      n: r.stream, up: bytes(up), uh: bytes(request.head_bytes || 0), ub: bytes(request.body_bytes || 0),
      down: bytes(down), dh: bytes(response.head_bytes || 0), db: bytes(response.body_bytes || 0),
    }) + (r.streaming ? ' ' + t('wire.streaming') : '');
    const saving = el('span', 'rec-hpack');
    saving.textContent = t('wire.hpack', {
      h: bytes(heads), t: bytes(asText),
      p: asText > 0 ? Math.round((100 * Math.max(0, asText - heads)) / asText) : 0,
    });
    // Overhead: every byte but the bodies (HPACK heads, frame headers, flow control).
    summary.append(line, sizes, saving,
      bar('up', up - (request.data_bytes || 0), request.data_bytes || 0),
      bar('down', down - (response.data_bytes || 0), response.data_bytes || 0));
    details.append(summary,
      headBlock(t('wire.h2RequestHead', {
        b: bytes(request.head_bytes || 0), t: bytes(request.http1_head_bytes || 0),
      }), request.head),
      headBlock(t('wire.h2ResponseHead', {
        b: bytes(response.head_bytes || 0), t: bytes(response.http1_head_bytes || 0),
      }), response.head),
      span('rec-at', t('wire.h2Frames', { i: count(request.frames), o: count(response.frames) })
        + ' ' + t('wire.at', { time: clock(r.at) })));
    const connection = r.connection;
    if (connection) {
      li.dataset.connection = connection.id;
      details.append(span('rec-at', t('wire.h2Connection', {
        id: connection.id, n: count(connection.streams), i: bytes(connection.bytes_in), o: bytes(connection.bytes_out),
      })));
    }
    li.append(details);
    return li;
  }

  frameRow(li, r) {
    const up = r.dir === 'in'; // "in" is what the server read: the page sent it
    li.dataset.dir = up ? 'up' : 'down';
    li.dataset.opcode = r.opcode || '';
    li.dataset.header = r.header_bytes || 0;
    li.dataset.payload = r.payload_bytes || 0;
    const header = r.header_bytes || 0;
    const payload = r.payload_bytes || 0;
    const details = el('details');
    const summary = el('summary');
    const line = el('span', 'rec-line');
    line.append(
      span('rec-dir', t(up ? 'wire.sent' : 'wire.received')),
      span('rec-what', r.opcode || ''),
      span('rec-preview', r.preview || ''),
    );
    const sizes = el('span', 'rec-sizes');
    sizes.textContent = t('wire.frameSizes', { h: bytes(header), p: bytes(payload), all: bytes(header + payload) })
      + (up ? ' ' + t('wire.masked') : '');
    summary.append(line, sizes, bar(up ? 'up' : 'down', header, payload));
    const full = el('pre', 'rec-head');
    full.textContent = r.preview || '';
    details.append(summary, full, span('rec-at', t('wire.at', { time: clock(r.at) })));
    li.append(details);
    return li;
  }

  sseRow(li, r) {
    const events = r.events || [];
    const data = events.reduce((sum, e) => sum + (e.data_bytes || 0), 0);
    const all = r.bytes || 0;
    const details = el('details');
    const summary = el('summary');
    const line = el('span', 'rec-line');
    const ids = events.map((e) => (e.id === null || e.id === undefined ? '–' : '#' + e.id)).join(' ');
    const h2 = r.version === 'h2';
    if (h2) {
      li.dataset.version = 'h2';
      li.dataset.stream = r.stream;
      line.append(span('rec-badge', t('wire.h2')));
    }
    line.append(
      span('rec-dir', t('wire.received')),
      span('rec-what', events.length > 0 ? t('wire.sseEvents', { n: count(events.length) })
        : t(r.type === 'sse' ? 'wire.sseComment' : 'wire.streamFiller')),
      span('rec-preview', ids),
    );
    const sizes = el('span', 'rec-sizes');
    sizes.textContent = t(h2 ? 'wire.sseSizesH2' : 'wire.sseSizes', {
      n: r.stream,
      all: bytes(all),
      f: bytes(events.reduce((sum, e) => sum + (e.field_bytes || 0), 0)),
      d: bytes(data),
      c: bytes(r.chunk_bytes || 0),
    });
    summary.append(line, sizes, bar('down', Math.max(0, all - data), data));
    const list = el('ul', 'rec-events');
    for (const e of events) {
      const item = el('li');
      item.textContent = t('wire.sseEvent', {
        id: e.id === null || e.id === undefined ? '–' : e.id,
        f: bytes(e.field_bytes || 0),
        d: bytes(e.data_bytes || 0),
      });
      list.append(item);
    }
    details.append(summary, list, span('rec-at', t('wire.at', { time: clock(r.at) })));
    li.append(details);
    return li;
  }
}

const TOTAL_KEYS = ['requests', 'wire_bytes_in', 'wire_bytes_out', 'frames_in', 'frames_out', 'events_delivered'];

function pickTotals(record) {
  return Object.fromEntries(TOTAL_KEYS.map((key) => [key, record[key] || 0]));
}

/** A bar on the shared scale: overhead (dark) then payload (light). */
function bar(direction, overhead, payload) {
  const track = el('span', 'rec-bar rec-bar-' + direction);
  const total = overhead + payload;
  const width = Math.min(1, total / BAR_SCALE_BYTES);
  const a = el('span', 'seg-overhead');
  const b = el('span', 'seg-payload');
  // Widths through the CSSOM (allowed by the page's style-src 'self'); a record
  // of a few bytes still gets a visible sliver.
  a.style.width = total ? `${(100 * width * overhead) / total}%` : '0';
  b.style.width = total ? `${(100 * width * payload) / total}%` : '0';
  if (overhead) a.style.minWidth = '1px';
  if (payload) b.style.minWidth = '1px';
  track.append(a, b);
  if (total > BAR_SCALE_BYTES) track.classList.add('over-scale');
  track.setAttribute('aria-hidden', 'true'); // the same figures are in the text beside it
  return track;
}

function headBlock(title, text) {
  const box = el('div', 'rec-block');
  const label = el('span', 'rec-block-title');
  label.textContent = title;
  const pre = el('pre', 'rec-head');
  // \r\n shown as the line breaks they are; the byte counts above include them.
  pre.textContent = (text || '').replace(/\r\n/g, '\n');
  box.append(label, pre);
  return box;
}

function el(name, className) {
  const node = document.createElement(name);
  if (className) node.className = className;
  return node;
}

function span(className, text) {
  const node = el('span', className);
  node.textContent = text;
  return node;
}

/** The pseudo-headers (`:method`, `:path`, `:status`…) of an HTTP/2 head's lines. */
function pseudoHeaders(head) {
  const found = {};
  for (const line of String(head || '').split('\r\n')) {
    if (!line.startsWith(':')) break;
    const at = line.indexOf(': ', 1);
    if (at > 0) found[line.slice(0, at)] = line.slice(at + 2);
  }
  return found;
}

function firstLine(head) {
  return String(head || '').split('\r\n')[0];
}

function camel(key) {
  return key.replace(/_(\w)/g, (_, c) => c.toUpperCase());
}

function count(v) {
  return Number(v || 0).toLocaleString('en-US');
}

/** Exact bytes up to 10 kB (the wire view is about single bytes), then kB / MB. */
export function bytes(v) {
  v = Number(v || 0);
  if (v >= 1e6) return (v / 1e6).toFixed(2) + ' MB';
  if (v >= 1e4) return (v / 1e3).toFixed(1) + ' kB';
  return v.toLocaleString('en-US') + ' B';
}

function ms(v) {
  return typeof v === 'number' ? `${Math.round(v)} ms` : '';
}

function clock(at) {
  if (typeof at !== 'number') return '–';
  const d = new Date(at);
  const pad = (n, w = 2) => String(n).padStart(w, '0');
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}
