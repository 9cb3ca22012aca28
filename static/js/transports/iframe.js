// The forever iframe + POST: a hidden <iframe> loads one long chunked HTML
// document; each event arrives as a script the browser runs as soon as it has
// parsed it, which calls this page:
//   GET /api/iframe?session=S&since=N&epoch=E
//   <!doctype html>...<!-- ~1 KB of padding for old browsers -->
//   <script nonce="...">parent.chatlab({"type":"welcome",...})</script>
//   <script nonce="...">parent.chatlab({"type":"message",...})</script>
// Texts go up as POST /api/messages. An iframe tells its parent nothing about
// errors: a refused request (unknown session) or a dropped connection is seen
// only as the document's load event, so the channel ends then and the client
// reconnects with its backoff from the last `seq`.

import { Transport, withQuery } from './transport.js';
import { sessionKnown } from '../api.js';

/**
 * The live iframe channels (the comparison page runs several at once). Every
 * script calls the same `parent.chatlab`; the channel it belongs to is the one
 * whose document is running a script right now (its `currentScript`).
 */
const live = new Set();
window.chatlab = (event) => {
  for (const channel of live) {
    if (channel.frame?.contentDocument?.currentScript) return channel.receive(event);
  }
};

export class IframeTransport extends Transport {
  name = 'iframe';

  async connect() {
    this.onstate('connecting');
    try {
      await this.joinOverHttp('iframe');
    } catch (err) {
      this.finish({ reason: 'error', retry: true, message: err.message });
      return;
    }
    if (this.closed) return;
    live.add(this);
    this.frame = document.createElement('iframe');
    this.frame.hidden = true;
    this.frame.title = 'chatlab forever iframe';
    // The document ends only when the channel does (replaced, slow, shutdown,
    // a dropped connection, or a refusal that never ran a script).
    this.frame.addEventListener('load', () => this.ended());
    this.frame.src = withQuery('/api/iframe', { session: this.session, since: this.since, epoch: this.since === null ? null : this.epoch });
    document.body.append(this.frame);
  }

  /** One event from a script of the document. */
  receive(event) {
    if (this.closed) return;
    if (event.type === 'welcome') this.onstate('open');
    if (!this.takeStreamed(event)) this.remove();
  }

  /** The document finished loading: the response ended without saying why. */
  async ended() {
    if (this.closed) return;
    const known = await sessionKnown(this.session).catch(() => true);
    this.remove();
    this.finish({ reason: known ? 'error' : 'expired', retry: true, message: 'the document ended' });
  }

  close() {
    this.finish({ reason: 'closed', retry: false });
    this.remove();
  }

  remove() {
    live.delete(this);
    if (this.frame) this.frame.remove();
    this.frame = null;
  }
}
