// Long polling + POST: a GET that the server holds open until there is news
// (or the timeout), answered with every event after `since`; then ask again.
//   GET /api/longpoll?session=S&since=N&epoch=E&timeout=25  ->  {"events": [...], "next": M, "epoch": E}
// The first request also asks who is online (&presence=1 -> "presence": {...});
// join / leave / rename events keep that list afterwards. Texts go up as POST /api/messages.

import { Transport, withQuery } from './transport.js';
import { readJson } from '../api.js';

const HOLD_SECONDS = 25; // how long the server may hold one request

export class LongPollTransport extends Transport {
  name = 'longpoll';

  async connect() {
    this.onstate('connecting');
    try {
      await this.joinOverHttp('longpoll');
      let open = false;
      const markOpen = () => {
        if (!open && !this.closed) { open = true; this.onstate('open'); }
      };
      let presence = 1; // asked once, on this object's first request
      while (!this.closed) {
        this.abort = new AbortController();
        const url = withQuery('/api/longpoll', { session: this.session, since: this.since, epoch: this.since === null ? null : this.epoch, timeout: HOLD_SECONDS, presence });
        const asked = Date.now();
        // A bad request (unknown session, ...) is answered at once; one that the
        // server is still holding after a second has been accepted: we are connected.
        // (Or it is still waiting in the browser for a free connection, six per site
        // over HTTP/1.1: from here the two look the same. See docs/techniques.md.)
        const held = setTimeout(markOpen, 1000);
        let body;
        try {
          body = await readJson(await fetch(url, { signal: this.abort.signal, cache: 'no-store' }));
        } finally {
          clearTimeout(held);
        }
        if (this.closed) return;
        markOpen();
        presence = null;
        if (!this.takeAnswer(body)) return;
        // An empty answer that came back at once (not after the hold) means the
        // server let go early; pause a little rather than spin.
        if (body.events.length === 0 && Date.now() - asked < 1000) await sleep(1000);
      }
    } catch (err) {
      this.requestFailed(err);
    }
  }

  close() {
    this.finish({ reason: 'closed', retry: false });
    if (this.abort) this.abort.abort();
  }
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
