// Small wrappers around chatlab's HTTP endpoints, shared by the pages and the
// three HTTP transports. Every error the server returns is JSON
// {"error": "...", "code": "..."}; we turn it into an ApiError so callers can
// show the message and branch on the status (404 = session unknown or expired,
// 429 = rate limit, ...).

/** An HTTP error from chatlab, carrying its status, code and message. */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message || `HTTP ${status}`);
    this.status = status;
    this.code = code || '';
  }
}

/** Reads a JSON body, or throws an ApiError for a non-2xx answer. */
export async function readJson(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null; // empty or non-JSON body
  }
  if (!response.ok) {
    throw new ApiError(response.status, body && body.code, body && body.error);
  }
  return body;
}

/**
 * Joins the room over HTTP: POST /api/sessions.
 * Resolves to {session, id, nickname, seq, epoch, presence}; `seq` is the cursor to start from, `epoch` the
 * room's numbering it belongs to.
 */
export async function joinSession(transport, nickname) {
  const body = { transport };
  if (nickname) body.nickname = nickname;
  const response = await fetch('/api/sessions', {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify(body),
  });
  return readJson(response);
}

/**
 * Sends a text (or "/nick NAME") for a session: POST /api/messages -> {seq}. With a `key` (Idempotency-Key),
 * sending it again is harmless: the server publishes a key once and answers the first send's seq.
 */
export async function postMessage(session, text, key = null) {
  const headers = { 'Content-Type': 'text/plain; charset=utf-8' };
  if (key) headers['Idempotency-Key'] = key;
  const response = await fetch('/api/messages?session=' + encodeURIComponent(session), {
    method: 'POST',
    headers,
    body: text,
  });
  return readJson(response);
}

/**
 * Leaves at once: DELETE /api/sessions/{session}. With keepalive the request
 * survives the page being closed (used on "pagehide").
 */
export function leaveSession(session, { keepalive = false } = {}) {
  return fetch('/api/sessions/' + encodeURIComponent(session), { method: 'DELETE', keepalive })
    .catch(() => {}); // leaving is best effort: the session lease cleans up anyway
}

/**
 * GET /api/presence?after=&limit= -> {clientcount, participants: [{id, nickname, transport, since}], more, next}:
 * one page, in join order; pass `next` as `after` for the next page while `more`.
 */
export async function getPresence({ after = 0, limit = 200 } = {}) {
  const query = new URLSearchParams({ after: String(after), limit: String(limit) });
  return readJson(await fetch('/api/presence?' + query, { cache: 'no-store' }));
}

/**
 * Whether the server still knows a session: GET /api/sessions/{session}/wire answers 404 for one that left or
 * whose lease ran out. One small request, whatever the number online (presence is paged).
 */
export async function sessionKnown(session) {
  const response = await fetch('/api/sessions/' + encodeURIComponent(session) + '/wire', { cache: 'no-store' });
  if (response.status === 404) return false;
  await readJson(response); // any other refusal is an error, as for every call here
  return true;
}

/** GET /api/stats -> {transports: {ws: {...}, sse: {...}, longpoll: {...}, poll: {...}}} */
export async function getStats() {
  return readJson(await fetch('/api/stats', { cache: 'no-store' }));
}
