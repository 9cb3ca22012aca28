// ChatClient: one participant, whatever the technique.
//
// It holds the identity (session, id, nickname) and the cursor (the seq of the
// last room event shown), and one transport object from ./transports/. Switching
// technique swaps that object: the new one opens with session=S&since=<cursor>,
// the server hands the participant over (no leave/join notice), and the old one
// is closed. Every room event passes through here once, so deduplication by seq
// and the reconnect backoff are written once for all four techniques.
//
// When the server no longer knows the session (it restarted, or the lease ran
// out while the page was away), the client joins again under the same nickname
// and marks that welcome with `rejoin: {restarted}` so the page can say so.
//
// The cursor belongs to the room's epoch (`welcome.epoch`): every channel is
// opened with since=<cursor>&epoch=<epoch>, and a room that started over answers
// with a `gap` of reason `epoch`, from which the cursor counts again.
//
// The outbox: every line sent gets a `ref` (random) and stays in the outbox until
// the server acknowledges it (the WebSocket's `ack`, the 202 of a POST, whose
// Idempotency-Key is the ref) or refuses it. A line whose answer never came (the
// connection dropped, the server died) is sent again, same ref, once a channel is
// open again, on whatever technique is current: the server publishes a ref once,
// so the line reaches the room exactly once.

import { WsTransport } from './transports/ws.js';
import { SseTransport } from './transports/sse.js';
import { StreamTransport } from './transports/stream.js';
import { IframeTransport } from './transports/iframe.js';
import { LongPollTransport } from './transports/longpoll.js';
import { PollTransport } from './transports/poll.js';
import { ApiError, sessionKnown } from './api.js';

export const TRANSPORTS = {
  ws: WsTransport,
  sse: SseTransport,
  stream: StreamTransport,
  iframe: IframeTransport,
  longpoll: LongPollTransport,
  poll: PollTransport,
};

const BACKOFF_FIRST_MS = 500;
const BACKOFF_MAX_MS = 15000;
// A send that got no answer while its channel still looks open is tried again after this long.
const RESEND_MS = 1000;
// Refusals that are not about the text: the line stays in the outbox and is sent again later.
const TRANSIENT = new Set(['unavailable', 'shutting_down', 'unknown_session', 'too_many_connections', '']);

/** A random ref for one send (crypto.randomUUID where the page is a secure context, else random bytes). */
export function newRef() {
  if (globalThis.crypto?.randomUUID) return crypto.randomUUID();
  const bytes = new Uint8Array(16);
  if (globalThis.crypto?.getRandomValues) crypto.getRandomValues(bytes);
  else for (let i = 0; i < bytes.length; i++) bytes[i] = Math.floor(Math.random() * 256);
  return [...bytes].map((b) => b.toString(16).padStart(2, '0')).join('');
}

export class ChatClient {
  /**
   * @param {object} options
   * @param {string} options.transport  'ws' | 'sse' | 'stream' | 'iframe' | 'longpoll' | 'poll'
   * @param {number} options.pollInterval  short-poll interval in ms
   * @param {(event: object) => void} options.onevent  room and control events, each once
   * @param {(status: object) => void} options.onstatus  {transport, state, attempt, retryIn, reason}
   */
  constructor({ transport = 'ws', pollInterval = 2000, onevent = () => {}, onstatus = () => {} } = {}) {
    this.technique = transport in TRANSPORTS ? transport : 'ws';
    this.pollInterval = pollInterval;
    this.onevent = onevent;
    this.onstatus = onstatus;
    this.session = null;
    this.id = null;
    this.nickname = null;
    this.rejoinAs = null; // the nickname to join again under, once the session is lost
    this.cursor = null; // seq of the last room event delivered
    this.epoch = null; // the room's numbering the cursor belongs to
    this.outbox = []; // [{ref, text, resolve, reject, on}]: sends not yet acknowledged, oldest first
    this.transport = null;
    this.failures = 0; // consecutive channels that ended before they proved healthy
    this.retryTimer = null;
    this.stats = { duplicates: 0, holes: 0 }; // should stay 0: the tests read them
  }

  /** Opens the chosen technique (joining as a new participant the first time). */
  start() {
    this.open();
  }

  /** Switches technique, keeping identity and cursor. */
  switchTo(name) {
    if (!(name in TRANSPORTS) || (name === this.technique && this.transport)) return;
    this.technique = name;
    this.open();
  }

  /**
   * Sends a text or "/nick NAME" through the outbox: resolves with {seq} once the server has it (however many
   * reconnects that takes), rejects with an ApiError if the server refuses it.
   */
  send(text) {
    return new Promise((resolve, reject) => {
      this.outbox.push({ ref: newRef(), text, resolve, reject, on: null });
      this.flush();
    });
  }

  /** Sends every outbox line not yet sent on the current channel, if it is open. */
  flush() {
    const transport = this.transport;
    if (!transport || this.state !== 'open') return;
    for (const entry of this.outbox) {
      if (entry.on !== transport) this.sendOn(transport, entry);
    }
  }

  async sendOn(transport, entry) {
    entry.on = transport;
    try {
      const answer = await transport.send(entry.text, entry.ref);
      this.settle(entry);
      entry.resolve(answer);
    } catch (err) {
      if (err instanceof ApiError && !TRANSIENT.has(err.code)) {
        this.settle(entry);
        entry.reject(err);
        return;
      }
      // No answer: kept, and sent again (same ref) once a channel is open.
      if (entry.on === transport) entry.on = null;
      setTimeout(() => this.flush(), RESEND_MS);
    }
  }

  settle(entry) {
    const at = this.outbox.indexOf(entry);
    if (at >= 0) this.outbox.splice(at, 1);
  }

  setPollInterval(ms) {
    this.pollInterval = ms;
    if (this.transport && this.transport.setInterval) this.transport.setInterval(ms);
  }

  /** Stops for good (the page calls leaveSession() to tell the server at once). */
  stop() {
    clearTimeout(this.retryTimer);
    const old = this.transport;
    this.transport = null;
    if (old) old.close();
    this.status('closed', { reason: 'closed' });
  }

  // ---- internals ----

  open() {
    clearTimeout(this.retryTimer);
    const old = this.transport;
    const Transport = TRANSPORTS[this.technique];
    const transport = new Transport({
      session: this.session,
      since: this.session ? this.cursor : null,
      epoch: this.session ? this.epoch : null,
      nickname: this.session ? null : this.rejoinAs,
      interval: this.pollInterval,
    });
    this.transport = transport;
    // Events and state changes of a transport that is no longer current are
    // ignored: the new one starts from the cursor, so nothing is lost.
    transport.onevent = (event) => { if (this.transport === transport) this.handle(event); };
    transport.onstate = (state, info) => { if (this.transport === transport) this.changed(state, info); };
    transport.connect();
    // The server ends the old channel when the new one arrives; closing it here
    // as well makes sure a poller does not ask again and take the session back.
    if (old) old.close();
  }

  handle(event) {
    this.failures = 0; // the channel works
    if (event.type === 'welcome') {
      const fresh = this.session !== event.session;
      this.session = event.session;
      this.id = event.id;
      this.nickname = event.nickname;
      // A welcome on a resumed channel changes nothing the user needs to see, but
      // its presence is the freshest list of who is online.
      if (!fresh) {
        this.epoch ??= event.epoch ?? null;
        if (event.presence) this.onevent({ type: 'presence', presence: event.presence });
        return;
      }
      // A fresh join starts at the server's cursor. After a rejoin (our old session
      // had expired) say plainly what happened and what we could not get back: a
      // room of another epoch (or, from a server that names none, whose cursor went
      // backwards) is a new room (the server restarted).
      const sameRoom = event.epoch && this.epoch ? event.epoch === this.epoch : !(event.seq < this.cursor);
      if (this.rejoinAs !== null) {
        event = { ...event, rejoin: { restarted: this.cursor !== null && !sameRoom } };
        this.rejoinAs = null;
      }
      if (this.cursor !== null && sameRoom && event.seq > this.cursor) {
        this.onevent({ type: 'gap', from: this.cursor + 1, to: event.seq, local: true });
      }
      this.cursor = event.seq;
      this.epoch = event.epoch ?? null;
      this.onevent(event);
      return;
    }
    if (typeof event.seq === 'number') {
      if (this.cursor !== null && event.seq <= this.cursor) {
        this.stats.duplicates += 1; // already shown: the server may repeat around a switch
        return;
      }
      if (this.cursor !== null && event.seq !== this.cursor + 1) {
        this.stats.holes += 1;
        console.warn('chatlab: hole in seq', this.cursor, '->', event.seq);
      }
      this.cursor = event.seq;
      if (event.type === 'nick_update' && event.id === this.id) this.nickname = event.nickname;
    }
    if (event.type === 'gap' && event.reason === 'epoch') {
      // The room started over: the cursor counts in its new numbering from here.
      this.cursor = event.to;
      this.epoch = event.epoch;
    } else if (event.type === 'gap' && typeof event.to === 'number') {
      this.cursor = Math.max(this.cursor ?? event.to, event.to);
    }
    if (event.type === 'error' && /session/i.test(event.code || '')) {
      this.expired = true; // e.g. unknown_session on a WebSocket: join again
    }
    this.onevent(event);
  }

  changed(state, info = {}) {
    // A channel counts as healthy once it delivered something or stayed open a
    // while; only then does the backoff start again from the shortest delay
    // (a server that accepts and at once closes must not get a tight loop).
    if (state === 'open') this.openedAt = Date.now();
    if (state === 'closed' && this.openedAt && Date.now() - this.openedAt > 5000) this.failures = 0;
    if (state !== 'open') this.openedAt = null;
    if (state !== 'closed') {
      this.status(state);
      if (state === 'open') this.flush();
      return;
    }
    if (!info.retry) {
      this.transport = null;
      this.status('closed', info);
      return;
    }
    this.failures += 1;
    if (info.reason === 'expired') this.expired = true;
    // A slow consumer is told to come back at once; otherwise back off.
    const base = info.reason === 'slow' ? 0 : Math.min(BACKOFF_MAX_MS, BACKOFF_FIRST_MS * 2 ** (this.failures - 1));
    const delay = Math.round(base * (0.5 + Math.random() / 2));
    this.status('reconnecting', { ...info, retryIn: delay });
    this.retryTimer = setTimeout(() => this.reconnect(), delay);
  }

  async reconnect() {
    // After a few failed attempts, ask whether the server still knows us (the
    // transports cannot always tell: an EventSource hides the HTTP status).
    if (!this.expired && this.session && this.failures >= 3) {
      try {
        if (!(await sessionKnown(this.session))) this.expired = true;
      } catch {
        // server unreachable: keep the session and keep backing off
      }
    }
    if (this.expired) {
      this.expired = false;
      this.session = null; // join again as a new participant, under the same nickname
      this.rejoinAs = this.nickname;
    }
    if (this.transport) this.open();
  }

  status(state, extra = {}) {
    this.state = state;
    this.onstatus({ transport: this.technique, state, attempt: this.failures, ...extra });
  }
}
