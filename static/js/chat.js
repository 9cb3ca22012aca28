// The chat page: one participant, a technique switcher, the online list.
// Everything a user typed is put on the page with textContent, never innerHTML.

import { ChatClient } from './client.js';
import { getPresence, leaveSession } from './api.js';
import { t, applyLanguage, toggleLanguage } from './i18n.js';
import { MIN_INTERVAL_MS, MAX_INTERVAL_MS } from './transports/poll.js';

const $ = (id) => document.getElementById(id);
const messages = $('messages');
const input = $('message');
const hint = $('hint');

// ?transport=sse&interval=1.5 picks the technique (and short-poll interval) at load.
const params = new URLSearchParams(location.search);
const intervalSeconds = clampInterval(Number(params.get('interval')) || 2);
$('interval').value = intervalSeconds;

const client = new ChatClient({
  transport: params.get('transport') || 'ws',
  pollInterval: intervalSeconds * 1000,
  onevent: show,
  onstatus: showStatus,
});
window.chatlab = { client }; // for the curious (and the browser tests): try chatlab.client in the console

// ---- the conversation ----

/** Appends one event to the conversation. */
function show(event) {
  const li = document.createElement('li');
  li.dataset.type = event.type;
  // data-seq marks room events (a welcome's seq is a cursor, not an event).
  if (typeof event.seq === 'number' && event.type !== 'welcome') li.dataset.seq = event.seq;

  switch (event.type) {
    case 'message': {
      li.className = 'msg' + (event.id === client.id ? ' mine' : '');
      const nick = document.createElement('span');
      nick.className = 'nick';
      nick.textContent = event.nickname;
      const text = document.createElement('span');
      text.className = 'text';
      text.textContent = event.message;
      li.append(nick, text);
      break;
    }
    case 'notification': // joins, leaves, "Server has disconnected"
      li.className = 'notice';
      li.textContent = event.message;
      refreshPresenceSoon();
      break;
    case 'nick_update':
      li.className = 'notice rename';
      li.textContent = event.message;
      if (event.id === client.id) $('me').textContent = client.nickname;
      refreshPresenceSoon();
      break;
    case 'welcome':
      li.className = 'notice local';
      li.textContent = t('welcome', { nick: event.nickname, t: t(client.technique) });
      $('me').textContent = event.nickname;
      refreshPresenceSoon();
      break;
    case 'gap':
      li.className = 'notice gap';
      // event.local: made up by client.js after a rejoin, not sent by the server.
      li.textContent = t(event.local ? 'missed' : 'gap', { from: event.from, to: event.to })
        + (event.message ? ` (${event.message})` : '');
      break;
    case 'error':
      li.className = 'notice error';
      li.textContent = `${t('error')}: ${event.message || event.code} [${event.code}]`;
      break;
    case 'expired':
      li.className = 'notice gap';
      li.textContent = t('expired');
      break;
    case 'local':
      li.className = 'notice local';
      li.textContent = event.text;
      break;
    default:
      return; // unknown control event: nothing to show
  }
  if (typeof event.ts === 'number') li.title = new Date(event.ts).toLocaleTimeString();
  if (typeof event.clientcount === 'number') $('count').textContent = event.clientcount;

  const atBottom = messages.scrollHeight - messages.scrollTop - messages.clientHeight < 40;
  messages.append(li);
  while (messages.children.length > 2000) messages.firstElementChild.remove();
  if (atBottom) messages.scrollTop = messages.scrollHeight;
}

// ---- sending ----

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
  // Over HTTP a send is a POST, which waits for a free connection like any request (see limitHint).
  sending += 1;
  const slow = client.technique === 'ws' ? null : setTimeout(() => limitHint('stillSending'), SLOW_AFTER_MS);
  try {
    await client.send(text);
  } catch (err) {
    input.value = input.value || text; // give the text back so it can be sent again
    showHint(`${t('sendFailed')}: ${err.message}`);
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

// ---- technique and connection state ----

for (const radio of document.querySelectorAll('input[name=technique]')) {
  radio.checked = radio.value === client.technique;
  radio.addEventListener('change', () => {
    client.switchTo(radio.value);
    show({ type: 'local', text: t('switched', { t: t(radio.value) }) });
    updateTechnique();
  });
}

$('interval').addEventListener('change', () => {
  const seconds = clampInterval(Number($('interval').value));
  $('interval').value = seconds;
  client.setPollInterval(seconds * 1000);
  updateTechnique();
});

function clampInterval(seconds) {
  return Math.min(MAX_INTERVAL_MS / 1000, Math.max(MIN_INTERVAL_MS / 1000, seconds || 2));
}

/** Shows which technique is on, and keeps it in the address bar. */
function updateTechnique() {
  $('interval-row').hidden = client.technique !== 'poll';
  $('about').textContent = t('about.' + client.technique);
  $('status-technique').textContent = t(client.technique);
  $('status').dataset.technique = client.technique;
  const query = new URLSearchParams({ transport: client.technique });
  if (client.technique === 'poll') query.set('interval', $('interval').value);
  history.replaceState(null, '', '?' + query);
}

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
}

// ---- who is online ----

const TECHNIQUE_ORDER = ['ws', 'sse', 'longpoll', 'poll'];

async function refreshPresence() {
  let presence;
  try {
    presence = await getPresence();
  } catch {
    return; // the connection state already tells the user the server is away
  }
  $('count').textContent = presence.clientcount;
  const list = $('online');
  list.replaceChildren();
  for (const p of presence.participants) {
    const li = document.createElement('li');
    li.dataset.id = p.id;
    li.dataset.transport = p.transport;
    const name = document.createElement('span');
    name.className = 'nick';
    name.textContent = p.nickname + (p.id === client.id ? ' ' + t('you') : '');
    const tag = document.createElement('span');
    tag.className = 'tag t-' + (TECHNIQUE_ORDER.includes(p.transport) ? p.transport : 'other');
    tag.textContent = TECHNIQUE_ORDER.includes(p.transport) ? t(p.transport) : p.transport;
    li.append(name, tag);
    list.append(li);
  }
}

let presenceTimer;
function refreshPresenceSoon() {
  clearTimeout(presenceTimer);
  presenceTimer = setTimeout(refreshPresence, 150);
}
setInterval(refreshPresence, 3000);

// ---- language, start, leave ----

$('lang').addEventListener('click', () => {
  toggleLanguage();
  updateTechnique();
  showStatus(lastStatus);
  if (hint.dataset.stays) limitHint(hint.dataset.stays); // a hint that stays is said again in the new language
  refreshPresence();
});

// Leave at once when the page goes away, rather than after the session lease.
addEventListener('pagehide', () => {
  if (client.session) leaveSession(client.session, { keepalive: true });
});

applyLanguage();
updateTechnique();
client.start();
