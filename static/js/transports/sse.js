// Server-Sent Events + POST: one long `text/event-stream` response brings the
// events down; each text goes up as its own POST /api/messages.
//   GET /api/sse?session=S&since=N
//   first frame:  data: {"type":"welcome",...}        (no id:)
//   room events:  id: <seq>  +  data: <json>
//   control:      data: {"type":"gap"|"error",...}   (no id:)
// EventSource reconnects by itself after an error; we close it instead and let
// the client reconnect with our own backoff and an explicit `since`, so the
// behaviour is the same for every technique and visible on the page.

import { Transport, withQuery } from './transport.js';

export class SseTransport extends Transport {
  name = 'sse';

  async connect() {
    this.onstate('connecting');
    try {
      await this.joinOverHttp('sse');
    } catch (err) {
      this.finish({ reason: 'error', retry: true, message: err.message });
      return;
    }
    if (this.closed) return;

    this.source = new EventSource(withQuery('/api/sse', { session: this.session, since: this.since, epoch: this.since === null ? null : this.epoch }));
    this.source.onopen = () => this.onstate('open');
    this.source.onmessage = (e) => {
      const event = JSON.parse(e.data);
      // A newer channel took the session over, or the server is stopping: close,
      // or EventSource would reconnect and steal the session back.
      if (event.type === 'error' && (event.code === 'replaced' || event.code === 'shutdown')) {
        this.source.close();
        this.finish({ reason: event.code, retry: event.code === 'shutdown', message: event.message });
        return;
      }
      this.deliver(event);
    };
    this.source.onerror = () => {
      this.source.close();
      this.finish({ reason: 'error', retry: true });
    };
  }

  close() {
    this.finish({ reason: 'closed', retry: false });
    if (this.source) this.source.close();
  }
}
