// The one small interface every technique implements.
//
//   const t = new SseTransport({ session, since });
//   t.onevent = (event) => { ... };        // every JSON object the server sends
//   t.onstate = (state, info) => { ... };  // 'connecting' | 'open' | 'closed'
//   t.connect();
//   await t.send('hello', ref);             // or '/nick NAME'; resolves {seq} once the server has it
//   t.close();
//
// `session`, `since` and `nickname` are optional. Without a session the transport
// joins as a new participant (named `nickname` when given: a rejoin keeps the
// name) and reports a `welcome` event ({id, nickname, session, seq, presence}).
// Who is online comes on the channel, never from an extra request: a `presence`
// object in the welcome (and in the first answer of a poll transport), handed
// to onevent as {type: 'presence', presence} when it is not in a welcome.
// With `session` and `since` it takes over that participant and delivers the
// events after `since` (this is how switching technique and reconnecting work);
// `epoch` is the room's numbering `since` belongs to: a room that started over
// since (a restarted server) answers with a `gap` of reason `epoch` and the
// room from its oldest retained event.
//
// `send(text, ref)` resolves with {seq} once the server has sequenced the text
// (the WebSocket's `ack`, the 202 of a POST), rejects with an ApiError when the
// server refuses it, and with any other error when it got no answer: the caller
// (../client.js, the outbox) then sends it again, same `ref`, on the next channel,
// and the server publishes a `ref` once.
//
// When the channel ends, onstate('closed', info) is called once, with
//   info.reason: 'closed' (we closed it), 'replaced', 'shutdown', 'expired'
//                (the server no longer knows the session), 'slow' or 'error'
//   info.retry:  whether reconnecting (from the cursor) makes sense
//   info.code / info.message: details for the user.
// Deduplication, the cursor and the reconnect backoff live in ../client.js, not
// here, so each transport file shows only its technique.

import { joinSession, postMessage } from '../api.js';

export class Transport {
  constructor({ session = null, since = null, epoch = null, nickname = null } = {}) {
    this.session = session;
    this.since = since;
    this.epoch = epoch;
    this.nickname = nickname;
    this.onevent = () => {};
    this.onstate = () => {};
    this.closed = false; // set once the channel has ended, for whatever reason
  }

  /** Reports the end of the channel exactly once. */
  finish(info) {
    if (this.closed) return;
    this.closed = true;
    this.onstate('closed', info);
  }

  /**
   * A failed request of an HTTP technique's channel ends it: a 404 says the server
   * no longer knows the session; anything else is worth a reconnect.
   */
  requestFailed(err) {
    if (this.closed) return; // we aborted it ourselves
    const expired = err.status === 404;
    this.finish({ reason: expired ? 'expired' : 'error', retry: true, code: err.status, message: err.message });
  }

  /** The HTTP techniques' send (all but the WebSocket, which sends on its socket): POST /api/messages. */
  send(text, ref) {
    return postMessage(this.session, text, ref);
  }

  /**
   * The HTTP techniques' join (all but the WebSocket): without a session yet, joins
   * as a new participant with POST /api/sessions and reports the `welcome`.
   */
  async joinOverHttp(transport) {
    if (this.session) return;
    const joined = await joinSession(transport, this.nickname);
    this.session = joined.session;
    this.since = joined.seq;
    this.epoch = joined.epoch ?? null;
    this.deliver({ type: 'welcome', ...joined });
  }

  /**
   * Hands out the events of a poll's answer ({events, next, presence?}) and
   * moves the cursor to `next`; the presence snapshot (asked with presence=1)
   * comes after the events, being as new as the answer. Returns false when the
   * answer says a newer channel took the session over: the channel has then ended.
   */
  takeAnswer(body) {
    for (const event of body.events) {
      if (event.type === 'error' && event.code === 'replaced') {
        this.finish({ reason: 'replaced', retry: false, message: event.message });
        return false;
      }
      this.deliver(event);
    }
    if (typeof body.next === 'number') this.since = body.next;
    if (typeof body.epoch === 'string') this.epoch = body.epoch;
    if (body.presence) this.onevent({ type: 'presence', presence: body.presence });
    return true;
  }

  /**
   * One event of a streaming response (HTTP streaming, the forever iframe):
   * hands it out, or ends the channel when the event says why the response
   * stops (`replaced`, `slow_consumer`, the shutdown notice). Returns false
   * once the channel has ended.
   */
  takeStreamed(event) {
    if (event.type === 'error' && (event.code === 'replaced' || event.code === 'slow_consumer')) {
      const replaced = event.code === 'replaced';
      this.finish({ reason: replaced ? 'replaced' : 'slow', retry: !replaced, message: event.message });
      return false;
    }
    this.deliver(event);
    if (event.notice === 'shutdown') {
      this.finish({ reason: 'shutdown', retry: true, message: event.message });
      return false;
    }
    return true;
  }

  /** Remembers the cursor of the last room event handed out, and its epoch (used to continue). */
  deliver(event) {
    if (typeof event.seq === 'number' && event.type !== 'welcome') this.since = event.seq;
    if (event.type === 'welcome' && event.epoch) this.epoch = event.epoch;
    if (event.type === 'gap' && event.reason === 'epoch') {
      this.since = event.to;
      this.epoch = event.epoch;
    }
    this.onevent(event);
  }
}

/** Builds `path?key=value&...`, leaving out keys whose value is null. */
export function withQuery(path, params) {
  const query = Object.entries(params)
    .filter(([, value]) => value !== null && value !== undefined)
    .map(([key, value]) => key + '=' + encodeURIComponent(value))
    .join('&');
  return query ? path + '?' + query : path;
}
