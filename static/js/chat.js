// The chat page: one participant, a technique switcher, the online list, the wire panel.
// Everything a user typed is put on the page with textContent, never innerHTML.
//
// Every line on screen keeps the event it shows, so a language switch renders the
// same lines again in the other language. Who is online comes from this page's own
// channel (the `presence` snapshot in the welcome or a poll's first answer, then
// join / leave / rename / message events): the page never polls for it, and an idle
// WebSocket page makes no HTTP request at all.

import { ChatClient } from './client.js';
import { ApiError, leaveSession } from './api.js';
import { t, has, applyLanguage, toggleLanguage, language } from './i18n.js';
import { MIN_INTERVAL_MS, MAX_INTERVAL_MS } from './transports/poll.js';

const $ = (id) => document.getElementById(id);
const messages = $('messages');
const input = $('message');
const hint = $('hint');

const TECHNIQUES = ['ws', 'sse', 'stream', 'iframe', 'longpoll', 'poll'];
const techniqueName = (name) => (TECHNIQUES.includes(name) ? t(name) : String(name ?? ''));

// ?transport=sse&interval=1.5&wire=1 picks the technique (and short-poll interval) at load, and opens the wire panel.
const params = new URLSearchParams(location.search);
const intervalSeconds = clampInterval(Number(params.get('interval')) || 2);
$('interval').value = intervalSeconds;

const client = new ChatClient({
  transport: params.get('transport') || 'ws',
  pollInterval: intervalSeconds * 1000,
  onevent: show,
  onstatus: showStatus,
});
// For the curious (and the browser tests): try chatlab.client in the console. `chatlab` itself is the function
// the forever iframe's scripts call (./transports/iframe.js).
window.chatlab.client = client;

// ---- the conversation ----

/** The event each line shows: a language switch renders it again. */
const shownEvents = new WeakMap();

/** Takes one event from the client: updates who is online, then shows it (or its pending line's delivery). */
function show(event) {
  if (event.type === 'presence') {
    resetPresence(event.presence);
    return;
  }
  if (event.type === 'welcome') event = { ...event, technique: client.technique };
  observePresence(event);

  // Our own line coming back is the delivery of a pending line: it takes that line's place.
  let replaces = null;
  if (event.type === 'message' && event.id === client.id) replaces = takePending(event);

  const li = document.createElement('li');
  if (!render(li, event)) return; // unknown control event: nothing to show
  shownEvents.set(li, event);
  if (replaces) replaces.remove();

  const atBottom = messages.scrollHeight - messages.scrollTop - messages.clientHeight < 40;
  // Lines not yet delivered stay below the delivered ones.
  messages.insertBefore(li, messages.querySelector(':scope > li.pending'));
  while (messages.children.length > 2000) messages.firstElementChild.remove();
  if (atBottom) messages.scrollTop = messages.scrollHeight;
}

/** Fills `li` for `event` in the page's language; false when the event is not shown. */
function render(li, event) {
  li.replaceChildren();
  li.dataset.type = event.type;
  // data-seq marks room events (a welcome's seq is a cursor, not an event).
  if (typeof event.seq === 'number' && event.type !== 'welcome') li.dataset.seq = event.seq;
  li.title = typeof event.ts === 'number' ? new Date(event.ts).toLocaleTimeString(language()) : '';

  switch (event.type) {
    case 'message':
      li.className = 'msg' + (event.id === client.id ? ' mine' : '');
      li.append(span('nick', event.nickname), span('text', event.message));
      // The technique the sender used: a stripe in its colour, and its name on hover.
      if (event.transport) {
        li.dataset.transport = event.transport;
        li.title += ` · ${techniqueName(event.transport)}`;
      }
      break;
    case 'pending': // our own line, not yet delivered back to us
      renderPending(li, event);
      break;
    case 'notification': // joins, leaves, crowds, "Server has disconnected"
      li.className = 'notice';
      if (event.notice) li.dataset.notice = event.notice;
      li.textContent = noticeText(event);
      break;
    case 'nick_update':
      li.className = 'notice rename';
      li.textContent = event.previous ? t('notice.rename', { previous: event.previous, nick: event.nickname }) : event.message;
      break;
    case 'welcome':
      li.className = 'notice local' + (event.rejoin ? ' rejoin' : '');
      li.textContent = event.rejoin
        ? t(event.rejoin.restarted ? 'restarted' : 'rejoined', { nick: event.nickname })
        : t('welcome', { nick: event.nickname, t: techniqueName(event.technique) });
      break;
    case 'gap':
      li.className = 'notice gap';
      // event.local: made up by client.js after a rejoin, not sent by the server. reason 'epoch': the room
      // started over (a restarted server); what it still keeps follows.
      if (event.reason === 'epoch') li.textContent = t('epochGap');
      else if (event.reason === 'skipped') li.textContent = t('skipped', { from: event.from, to: event.to });
      else li.textContent = t(event.local ? 'missed' : 'gap', { from: event.from, to: event.to });
      break;
    case 'error':
      li.className = 'notice error';
      li.textContent = `${t('error')}: ${errorText(event)} [${event.code}]`;
      break;
    case 'local': // the page's own notices: {key, technique}
      li.className = 'notice local';
      li.textContent = t(event.key, { t: techniqueName(event.technique) });
      break;
    default:
      return false;
  }
  return true;
}

/** A room notice in the page's language, from its fields; the server's own text when a field is missing. */
function noticeText(event) {
  const nick = event.nickname;
  switch (event.notice) {
    case 'join':
      return event.transport
        ? t('notice.joinVia', { nick, t: techniqueName(event.transport) })
        : t('notice.join', { nick });
    case 'leave':
      return t('notice.leave', { nick });
    case 'crowd':
      if (typeof event.joined === 'number' && typeof event.left === 'number') {
        const key = event.left === 0 ? 'notice.crowdJoined' : event.joined === 0 ? 'notice.crowdLeft' : 'notice.crowd';
        return t(key, { joined: event.joined, left: event.left });
      }
      break;
    case 'shutdown':
      return t('notice.shutdown');
    default:
      break;
  }
  return event.message;
}

/** An error ({code, message}, from an event or an HTTP answer) in the page's language; the server's text otherwise. */
function errorText({ code, message }) {
  return code && has('err.' + code) ? t('err.' + code) : message || code;
}

function span(className, text) {
  const el = document.createElement('span');
  el.className = className;
  el.textContent = text;
  return el;
}

// ---- sending: a line shows at once, greyed, until the server has it ----

// A pending line is an event {type: 'pending', text, state, reason: {code, message} | {local}, seq} shown at the bottom:
//   'sending'  until acknowledged (HTTP: the 202 answer; WebSocket: the server's ack). A line typed while the
//              connection is down stays here: the client's outbox sends it (again, with the same ref) once a
//              channel is open, and the server publishes it once;
//   'sent'     acknowledged, waiting for the channel to bring it (a short poll can take seconds),
//   'failed'   refused by the server, with the reason and a button that puts the text back in the input.
// When our own line arrives on the channel it replaces its pending line: one line, never two.
const pending = []; // [{li, event}], oldest first

function addPending(text) {
  const event = { type: 'pending', text, state: 'sending', reason: null, seq: null };
  const li = document.createElement('li');
  render(li, event);
  shownEvents.set(li, event);
  messages.append(li);
  messages.scrollTop = messages.scrollHeight;
  const entry = { li, event };
  pending.push(entry);
  return entry;
}

function renderPending(li, event) {
  li.className = `msg mine pending ${event.state}`;
  li.append(span('nick', client.nickname || '…'), span('text', event.text));
  if (event.state === 'sending') li.append(span('state', t('sending')));
  if (event.state === 'failed') {
    li.append(span('state', `${t('notSent')}: ${event.reason.local ? t(event.reason.local) : errorText(event.reason)}`));
    const back = document.createElement('button');
    back.type = 'button';
    back.className = 'put-back';
    back.textContent = t('putBack');
    back.addEventListener('click', () => {
      input.value = event.text;
      dropPending(li);
      input.focus();
    });
    li.append(back);
  }
}

function setPending(entry, changes) {
  Object.assign(entry.event, changes);
  render(entry.li, entry.event);
}

function dropPending(li) {
  const at = pending.findIndex((p) => p.li === li);
  if (at >= 0) pending.splice(at, 1);
  li.remove();
}

/**
 * Finds the pending line our delivered `event` stands for: the one the 202 gave that seq, else the oldest one of
 * that text not yet numbered (still sending first: a failed one sent again must not take the new one's delivery).
 */
function takePending(event) {
  const unnumbered = (p) => p.event.seq === null && p.event.text === event.message;
  const entry = pending.find((p) => p.event.seq === event.seq)
    || pending.find((p) => unnumbered(p) && p.event.state === 'sending')
    || pending.find(unnumbered);
  if (!entry) return null;
  pending.splice(pending.indexOf(entry), 1);
  return entry.li;
}

function failPending(entry, reason) {
  if (!pending.includes(entry)) return; // delivered meanwhile
  setPending(entry, { state: 'failed', reason });
}

let sending = 0; // sends not yet answered

$('chat-form').addEventListener('submit', async (e) => {
  e.preventDefault();
  const text = input.value;
  if (text.trim() === '') {
    showHint(t('emptyHint'));
    input.focus();
    return;
  }
  input.value = '';
  input.focus();
  // A rename comes back as a rename notice, not as a line: it gets no pending line.
  const entry = text.startsWith('/nick ') ? null : addPending(text);
  // Over HTTP a send is a POST, which waits for a free connection like any request (see limitHint).
  sending += 1;
  const slow = client.technique === 'ws' ? null : setTimeout(() => limitHint('stillSending'), SLOW_AFTER_MS);
  try {
    // Resolves once the server has the line (the ack or the 202), however many reconnects that takes.
    const answer = await client.send(text);
    if (entry && pending.includes(entry) && typeof answer?.seq === 'number') {
      setPending(entry, { state: 'sent', seq: answer.seq });
    }
  } catch (err) {
    // The server's refusal has a code; anything else would be a fault of the page.
    const reason = err instanceof ApiError ? { code: err.code, message: err.message } : { local: 'noConnection' };
    if (entry) failPending(entry, reason);
    else if (!input.value) input.value = text; // a failed rename: give the text back at once
    showHint(`${t('sendFailed')}: ${reason.local ? t(reason.local) : errorText(reason)}`);
  } finally {
    clearTimeout(slow);
    sending -= 1;
    if (sending === 0) clearLimitHint('stillSending');
  }
});

let hintTimer;
/** Shows a hint under the composer for a few seconds, or until `clearLimitHint(stays)` when `stays` is a reason. */
function showHint(text, { stays = '' } = {}) {
  hint.textContent = text;
  hint.hidden = false;
  hint.dataset.stays = stays;
  clearTimeout(hintTimer);
  if (!stays) hintTimer = setTimeout(() => { hint.hidden = true; }, 4000);
}

// Over HTTP/1.1 a browser opens at most six connections to one site, and each open SSE stream or held long poll,
// in any tab, keeps one: a page can load and then find none left for its stream or its POSTs. When one of those
// takes long, the page says why; the hint goes once it is done.
const SLOW_AFTER_MS = 4000;
function limitHint(reason) {
  showHint(`${t(reason)} ${t('connectionLimit')}`, { stays: reason });
}
function clearLimitHint(reason) {
  if (hint.dataset.stays !== reason) return;
  hint.hidden = true;
  hint.dataset.stays = '';
}

// ---- technique switcher ----

// A click (or Space/Enter) switches at once. Arrow keys only move the choice: the switch happens once they rest
// for SWITCH_PAUSE_MS or on Enter/Space, so walking across the radios does not reconnect at every key.
const SWITCH_PAUSE_MS = 800;
const radios = [...document.querySelectorAll('input[name=technique]')];
let byArrows = false;
let switchTimer = null;

for (const radio of radios) {
  radio.checked = radio.value === client.technique;
  radio.addEventListener('change', () => {
    if (!radio.checked) return;
    if (!byArrows) {
      commitSwitch(radio.value);
      return;
    }
    clearTimeout(switchTimer);
    switchTimer = setTimeout(() => commitSwitch(radio.value), SWITCH_PAUSE_MS);
    $('about').textContent = t('pendingSwitch', { t: techniqueName(radio.value) });
  });
}
$('switcher').addEventListener('keydown', (e) => {
  if (e.key.startsWith('Arrow')) {
    byArrows = true;
  } else if ((e.key === 'Enter' || e.key === ' ') && e.target.name === 'technique') {
    e.preventDefault();
    e.target.checked = true;
    commitSwitch(e.target.value);
  }
});
$('switcher').addEventListener('pointerdown', () => { byArrows = false; });

function commitSwitch(name) {
  clearTimeout(switchTimer);
  switchTimer = null;
  byArrows = false;
  if (name !== client.technique) {
    client.switchTo(name);
    show({ type: 'local', key: 'switched', technique: name });
  }
  updateTechnique();
}

$('interval').addEventListener('change', () => {
  const seconds = clampInterval(Number($('interval').value));
  $('interval').value = seconds;
  client.setPollInterval(seconds * 1000);
  updateAddress();
});

function clampInterval(seconds) {
  return Math.min(MAX_INTERVAL_MS / 1000, Math.max(MIN_INTERVAL_MS / 1000, seconds || 2));
}

/** Shows which technique is on. */
function updateTechnique() {
  const chosen = radios.find((radio) => radio.checked);
  if (switchTimer && chosen) {
    // A choice made with the arrow keys is still waiting for its pause: keep it, and say so.
    $('about').textContent = t('pendingSwitch', { t: techniqueName(chosen.value) });
  } else {
    for (const radio of radios) radio.checked = radio.value === client.technique;
    $('about').textContent = t('about.' + client.technique);
  }
  $('interval-row').hidden = client.technique !== 'poll';
  $('status-technique').textContent = t(client.technique);
  $('status').dataset.technique = client.technique;
  renderOnline();
  updateAddress();
}

/** Keeps the technique (and whether the wire panel is open) in the address bar. */
function updateAddress() {
  const query = new URLSearchParams({ transport: client.technique });
  if (client.technique === 'poll') query.set('interval', $('interval').value);
  if (!$('wire').hidden) query.set('wire', '1');
  history.replaceState(null, '', '?' + query);
}

// ---- connection state ----

// An HTTP technique that stays "connecting" is most often waiting for a free connection (see limitHint).
let stuckTimer = null;
function watchForStuck(status) {
  if (status.state !== 'connecting' || client.technique === 'ws') {
    clearTimeout(stuckTimer);
    stuckTimer = null;
    clearLimitHint('stillConnecting');
  } else if (!stuckTimer && hint.dataset.stays !== 'stillConnecting') {
    stuckTimer = setTimeout(() => {
      stuckTimer = null;
      if (lastStatus.state === 'connecting') limitHint('stillConnecting');
    }, SLOW_AFTER_MS);
  }
}

let lastStatus = { state: 'connecting' };
function showStatus(status) {
  lastStatus = status;
  watchForStuck(status);
  $('status').dataset.state = status.state;
  let text = t('state.' + status.state, {
    s: ((status.retryIn || 0) / 1000).toFixed(1),
    n: status.attempt,
  });
  if (status.reason && status.reason !== 'closed' && status.state !== 'open') text += ` · ${status.reason}`;
  $('status-text').textContent = text;
  $('status-technique').textContent = t(client.technique);
  // While disconnected the online list is only what we last knew: it greys and says so.
  const stale = status.state !== 'open' && people.size > 0;
  $('online-panel').classList.toggle('stale', stale);
  $('online-stale').hidden = !stale;
}

// ---- who is online: from the channel ----

const people = new Map(); // id -> {id, nickname, transport, since}
let clientcount = 0;
const SHOWN_AT_MOST = 200; // as many as a presence snapshot carries

/** Takes a presence snapshot {clientcount, participants, more}. */
function resetPresence(presence) {
  if (!presence || !Array.isArray(presence.participants)) return;
  people.clear();
  for (const p of presence.participants) people.set(p.id, { ...p });
  if (typeof presence.clientcount === 'number') clientcount = presence.clientcount;
  renderOnline();
  showStatus(lastStatus);
}

/** Keeps the list from the events that change it. */
function observePresence(event) {
  if (typeof event.clientcount === 'number') clientcount = event.clientcount;
  switch (event.type) {
    case 'welcome': // a new session: whoever we knew was in the room before it
      if (event.presence) resetPresence(event.presence);
      else people.clear();
      if (!people.has(event.id)) people.set(event.id, { id: event.id, nickname: event.nickname, since: Date.now() });
      $('me').textContent = event.nickname;
      break;
    case 'notification': {
      const kind = event.notice || seedNotice(event);
      if (kind === 'join') {
        remember(event);
      } else if (kind === 'leave') {
        people.delete(event.id);
      }
      break;
    }
    case 'nick_update':
    case 'message': {
      if (!event.id) break;
      if (event.id === client.id) $('me').textContent = event.nickname;
      remember(event);
      break;
    }
    default:
      return;
  }
  renderOnline();
}

/** A join or leave told only in the seed's words (a server without the `notice` field): `NAME 来了`, `NAME 走了`. */
/** Adds or updates the participant an event is about, keeping what the event does not say. */
function remember(event) {
  const known = people.get(event.id);
  people.set(event.id, {
    id: event.id,
    nickname: event.nickname,
    transport: event.transport || known?.transport,
    since: known?.since ?? event.ts,
  });
}

function seedNotice(event) {
  if (!event.id) return null;
  if (event.message === `${event.nickname} 来了`) return 'join';
  if (event.message === `${event.nickname} 走了`) return 'leave';
  return null;
}

function renderOnline() {
  const list = $('online');
  const everyone = [...people.values()].sort((a, b) => (a.since ?? 0) - (b.since ?? 0));
  const rows = everyone.slice(0, SHOWN_AT_MOST).map((p) => {
    // Our own technique is the one in use now (a switch is not announced to the room).
    const transport = p.id === client.id ? client.technique : p.transport;
    const li = document.createElement('li');
    li.dataset.id = p.id;
    if (transport) li.dataset.transport = transport;
    li.append(span('nick', p.nickname + (p.id === client.id ? ' ' + t('you') : '')));
    if (transport) {
      const tag = span('tag t-' + (TECHNIQUES.includes(transport) ? transport : 'other'), techniqueName(transport));
      li.append(tag);
    }
    return li;
  });
  // The server's count is exact; the list may lack (or, in a crowded room where joins and leaves are only
  // counted, still hold) some names.
  const count = clientcount > 0 ? clientcount : everyone.length;
  if (count > rows.length) {
    const li = document.createElement('li');
    li.className = 'more';
    li.textContent = t('onlineMore', { n: count - rows.length });
    rows.push(li);
  }
  list.replaceChildren(...rows);
  $('count').textContent = count;
}

// ---- the wire panel (js/wire.js, loaded the first time it opens) ----

const wire = $('wire');
const wireToggle = $('wire-toggle');
let wireMounted = false;

function setWireOpen(open) {
  wire.hidden = !open;
  wireToggle.setAttribute('aria-expanded', String(open));
  wireToggle.dataset.i18n = open ? 'wireHide' : 'wireShow';
  wireToggle.textContent = t(wireToggle.dataset.i18n);
  if (open && !wireMounted) {
    wireMounted = true;
    import('./wire.js')
      .then((m) => m.mountWireView(wire, { client }))
      .catch((err) => {
        wireMounted = false;
        showHint(`${t('error')}: ${err.message}`);
      });
  }
  updateAddress();
}
wireToggle.addEventListener('click', () => setWireOpen(wire.hidden));

// ---- language, start, leave ----

$('lang').addEventListener('click', () => {
  toggleLanguage();
  relabel();
  for (const li of messages.children) {
    const event = shownEvents.get(li);
    if (event) render(li, event);
  }
  if (hint.dataset.stays) limitHint(hint.dataset.stays); // a hint that stays is said again in the new language
});

/** The labels chat.js sets itself (applyLanguage does the data-i18n ones). */
function relabel() {
  $('lang').lang = language() === 'zh' ? 'en' : 'zh-CN'; // the button names the other language in that language
  updateTechnique();
  showStatus(lastStatus);
}

// Leave at once when the page goes away, rather than after the session lease.
addEventListener('pagehide', () => {
  if (client.session) leaveSession(client.session, { keepalive: true });
});

applyLanguage();
relabel();
// Ready to type on a desktop; on a touch screen a focused input would open the keyboard over the conversation.
if (matchMedia('(pointer: fine)').matches) input.focus();
if (params.get('wire') === '1') setWireOpen(true);
client.start();
