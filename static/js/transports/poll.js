// Short (interval) polling + POST: every N seconds a GET that is answered at
// once with whatever happened after `since`, often nothing.
//   GET /api/poll?session=S&since=N&epoch=E  ->  {"events": [...], "next": M, "epoch": E}
// The first request also asks who is online (&presence=1 -> "presence": {...});
// join / leave / rename events keep that list afterwards.
// The server forgets a session that has not polled for its lease (15 s by
// default), so the interval is kept well below that.

import { Transport, withQuery } from './transport.js';
import { readJson } from '../api.js';

export const MIN_INTERVAL_MS = 200;
export const MAX_INTERVAL_MS = 10000; // below the server's default 15 s lease

export class PollTransport extends Transport {
  name = 'poll';

  constructor(options = {}) {
    super(options);
    this.setInterval(options.interval ?? 2000);
  }

  /** Changes the polling interval; a wait in progress restarts with the new one. */
  setInterval(ms) {
    this.interval = Math.min(MAX_INTERVAL_MS, Math.max(MIN_INTERVAL_MS, Number(ms) || 2000));
    if (this.wakeUp) {
      clearTimeout(this.timer);
      this.timer = setTimeout(this.wakeUp, this.interval);
    }
  }

  async connect() {
    this.onstate('connecting');
    try {
      await this.joinOverHttp('poll');
      let first = true;
      while (!this.closed) {
        this.abort = new AbortController();
        const epoch = this.since === null ? null : this.epoch;
        const url = withQuery('/api/poll', { session: this.session, since: this.since, epoch, presence: first ? 1 : null });
        const body = await readJson(await fetch(url, { signal: this.abort.signal, cache: 'no-store' }));
        if (this.closed) return;
        if (first) { this.onstate('open'); first = false; }
        if (!this.takeAnswer(body)) return;
        await this.wait();
      }
    } catch (err) {
      this.requestFailed(err);
    }
  }

  /** Waits one interval; close() (or a new interval) can cut it short. */
  wait() {
    return new Promise((resolve) => {
      this.wakeUp = resolve;
      this.timer = setTimeout(resolve, this.interval);
    }).finally(() => { this.wakeUp = null; });
  }

  close() {
    this.finish({ reason: 'closed', retry: false });
    if (this.abort) this.abort.abort();
    clearTimeout(this.timer);
    if (this.wakeUp) this.wakeUp();
  }
}
