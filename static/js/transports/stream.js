// HTTP streaming + POST: one long chunked response of NDJSON (one JSON event per
// line) brings the events down, read with fetch() and the body's ReadableStream;
// each text goes up as its own POST /api/messages.
//   GET /api/stream?session=S&since=N&epoch=E
//   first line:   {"type":"welcome",...}
//   then:         one event per line; a blank line now and then keeps it alive
// Unlike EventSource, nothing reconnects by itself: when the response ends the
// client reconnects with its own backoff from the last `seq` it saw.

import { Transport, withQuery } from './transport.js';
import { readJson } from '../api.js';

export class StreamTransport extends Transport {
  name = 'stream';

  async connect() {
    this.onstate('connecting');
    try {
      await this.joinOverHttp('stream');
      if (this.closed) return;
      this.abort = new AbortController();
      const url = withQuery('/api/stream', { session: this.session, since: this.since, epoch: this.since === null ? null : this.epoch });
      const response = await fetch(url, { signal: this.abort.signal, cache: 'no-store' });
      if (!response.ok) await readJson(response); // throws the server's error
      this.onstate('open');
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let end;
        while ((end = buffer.indexOf('\n')) >= 0) {
          const line = buffer.slice(0, end);
          buffer = buffer.slice(end + 1);
          if (line && !this.takeStreamed(JSON.parse(line))) return;
        }
      }
      this.finish({ reason: 'error', retry: true, message: 'the stream ended' });
    } catch (err) {
      this.requestFailed(err);
    }
  }

  close() {
    this.finish({ reason: 'closed', retry: false });
    if (this.abort) this.abort.abort();
  }
}
