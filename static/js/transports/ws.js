// WebSocket: one TCP connection carries both directions.
//   GET /ws?ack=1&session=S&since=N&epoch=E (resume), /ws?ack=1&nickname=NAME (join under that name) or
//   /ws?ack=1 (join as a guest)
//   server -> client: one JSON text frame per event; the first one is `welcome` (with `presence`: who is online)
//   client -> server: {"ref": "<our id for it>", "text": "hello" or "/nick NAME"}, answered
//                     {"type":"ack","ref","seq"} once kept (on disk in the durable room), or
//                     {"type":"error","ref","code","message"}
// Without ack=1 the client would send the bare text and hear nothing back unless it is refused: it could not
// tell a line the server has from one lost with a dying connection.
// Close codes the server uses: 1001 shutdown, 4000 replaced by a newer channel of
// the same session, 4008 slow consumer (resume from the cursor), 1003 binary
// frame, 1007 invalid UTF-8, 1009 frame too big.

import { Transport, withQuery } from './transport.js';
import { ApiError } from '../api.js';

export class WsTransport extends Transport {
  name = 'ws';

  connect() {
    this.onstate('connecting');
    this.waiting = new Map(); // ref -> {resolve, reject}: sends not yet answered on this socket
    const query = this.session
      ? { ack: 1, session: this.session, since: this.since, epoch: this.since === null ? null : this.epoch }
      : { ack: 1, nickname: this.nickname };
    const url = new URL(withQuery('/ws', query), location.href);
    url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
    this.socket = new WebSocket(url);
    // send() waits for this, so a text typed while connecting is not lost.
    this.opened = new Promise((resolve, reject) => {
      this.socket.addEventListener('open', resolve);
      this.socket.addEventListener('close', () => reject(new Error('WebSocket closed')));
    });
    this.opened.catch(() => {}); // nobody may be waiting

    this.socket.onopen = () => this.onstate('open');
    this.socket.onmessage = (e) => {
      const event = JSON.parse(e.data);
      // The answer to one of our sends: it settles that send, and is not a room event.
      if ((event.type === 'ack' || event.type === 'error') && typeof event.ref === 'string') {
        const waiting = this.waiting.get(event.ref);
        this.waiting.delete(event.ref);
        if (!waiting) return;
        if (event.type === 'ack') waiting.resolve({ seq: event.seq });
        else waiting.reject(new ApiError(0, event.code, event.message));
        return;
      }
      if (event.type === 'welcome') this.session = event.session;
      this.deliver(event);
    };
    this.socket.onclose = (e) => {
      // Sends not answered before the socket went are not known to be lost or delivered: the outbox sends them
      // again, same ref, on the next channel.
      for (const waiting of this.waiting.values()) waiting.reject(new Error('WebSocket closed'));
      this.waiting.clear();
      this.finish(closeInfo(e));
    };
  }

  async send(text, ref) {
    await withTimeout(this.opened, 5000, 'WebSocket is not open');
    // Closed since it opened: onclose has settled every send it knew of, and would not hear of this one.
    if (this.socket.readyState !== WebSocket.OPEN) throw new Error('WebSocket closed');
    return new Promise((resolve, reject) => {
      this.waiting.set(ref, { resolve, reject });
      this.socket.send(JSON.stringify({ ref, text }));
    });
  }

  close() {
    this.finish({ reason: 'closed', retry: false });
    if (this.socket) this.socket.close(1000);
  }
}

/** Turns a close event into {reason, retry, code, message}. */
function closeInfo(e) {
  const info = { code: e.code, message: e.reason, retry: true, reason: 'error' };
  if (e.code === 1001) info.reason = 'shutdown';
  if (e.code === 4000) Object.assign(info, { reason: 'replaced', retry: false });
  if (e.code === 4008) info.reason = 'slow';
  return info;
}

function withTimeout(promise, ms, message) {
  let timer;
  const timeout = new Promise((_, reject) => { timer = setTimeout(() => reject(new Error(message)), ms); });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}
