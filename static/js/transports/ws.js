// WebSocket: one TCP connection carries both directions.
//   GET /ws?session=S&since=N (resume), /ws?nickname=NAME (join under that name) or /ws (join as a guest)
//   server -> client: one JSON text frame per event; the first one is `welcome` (with `presence`: who is online)
//   client -> server: plain text frames ("hello", "/nick NAME")
// Close codes the server uses: 1001 shutdown, 4000 replaced by a newer channel of
// the same session, 4008 slow consumer (resume from the cursor), 1003 binary
// frame, 1007 invalid UTF-8, 1009 frame too big.

import { Transport, withQuery } from './transport.js';

export class WsTransport extends Transport {
  name = 'ws';

  connect() {
    this.onstate('connecting');
    const query = this.session ? { session: this.session, since: this.since } : { nickname: this.nickname };
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
      if (event.type === 'welcome') this.session = event.session;
      this.deliver(event);
    };
    this.socket.onclose = (e) => this.finish(closeInfo(e));
  }

  async send(text) {
    await withTimeout(this.opened, 5000, 'WebSocket is not open');
    this.socket.send(text);
    return {};
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
