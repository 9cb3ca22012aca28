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

import { WsTransport } from './transports/ws.js';
import { SseTransport } from './transports/sse.js';
import { LongPollTransport } from './transports/longpoll.js';
import { PollTransport } from './transports/poll.js';
import { sessionKnown } from './api.js';

export const TRANSPORTS = {
  ws: WsTransport,
  sse: SseTransport,
  longpoll: LongPollTransport,
  poll: PollTransport,
};

const BACKOFF_FIRST_MS = 500;
const BACKOFF_MAX_MS = 15000;

export class ChatClient {
  /**
   * @param {object} options
   * @param {string} options.transport  'ws' | 'sse' | 'longpoll' | 'poll'
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

  /** Sends a text or "/nick NAME" through the current technique. */
  async send(text) {
    if (!this.transport) throw new Error('not connected');
    return this.transport.send(text);
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
        if (event.presence) this.onevent({ type: 'presence', presence: event.presence });
        return;
      }
      // A fresh join starts at the server's cursor. After a rejoin (our old session
      // had expired) say plainly what happened and what we could not get back: a
      // room whose cursor went backwards is a new room (the server restarted).
      if (this.rejoinAs !== null) {
        event = { ...event, rejoin: { restarted: this.cursor !== null && event.seq < this.cursor } };
        this.rejoinAs = null;
      }
      if (this.cursor !== null && event.seq > this.cursor) {
        this.onevent({ type: 'gap', from: this.cursor + 1, to: event.seq, local: true });
      }
      this.cursor = event.seq;
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
    if (event.type === 'gap' && typeof event.to === 'number') {
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
