// Chinese and English labels. Elements carry data-i18n="key" (text) or
// data-i18n-placeholder="key"; applyLanguage() fills them in. The choice is
// remembered in localStorage. Chat texts and the server's notices are shown as
// they come: only the page's own labels are translated.

const LABELS = {
  zh: {
    title: 'chatlab 聊天室',
    subtitle: '一个聊天室,四种推送技术',
    compareLink: '对比四种技术 →',
    chatLink: '← 回到聊天',
    language: 'English',
    online: '在线',
    onlineCount: '当前在线人数',
    you: '(你)',
    technique: '推送技术',
    interval: '轮询间隔(秒)',
    placeholder: '输入聊天内容(/nick 新名字 可改名)',
    send: '发送!',
    emptyHint: '不能发送空内容!',
    youAre: '你的昵称',
    ws: 'WebSocket',
    sse: 'SSE + POST',
    longpoll: '长轮询',
    poll: '短轮询',
    'about.ws': '一条 TCP 连接,双向收发文本帧。',
    'about.sse': '一个不结束的 text/event-stream 响应推送事件;发言用 POST。',
    'about.longpoll': 'GET 请求被服务器挂起,直到有新消息或超时;发言用 POST。',
    'about.poll': '每隔 N 秒发一次 GET,立刻返回,常常是空的;发言用 POST。',
    'state.connecting': '连接中…',
    'state.open': '已连接',
    'state.reconnecting': '{s} 秒后重连(第 {n} 次)',
    'state.closed': '已断开',
    welcome: '你以 {nick} 的身份加入 ({t})',
    switched: '已切换到 {t},身份和进度不变',
    gap: '第 {from}–{to} 条消息已不在服务器上,无法补回',
    expired: '会话已过期,重新加入为新用户',
    missed: '离开期间的第 {from}–{to} 条消息不再显示(你已不在聊天室里)',
    error: '错误',
    sendFailed: '发送失败',
    stillConnecting: '仍在连接…',
    stillSending: '仍在发送…',
    connectionLimit: '浏览器对同一站点最多同时打开 6 个 HTTP/1.1 连接,每个 SSE 流或挂起的长轮询都一直占着一个:本页的其他标签页可能已经把它们占满了。关掉几个,或改用 WebSocket(它不占这 6 个)。',
    // comparison view
    compareTitle: '四种技术对比',
    compareIntro: '同一个聊天室里的四个参与者,各用一种技术。点「发一串」,看每种技术各付出了什么。',
    burst: '发一串消息',
    burstSize: '条数',
    sender: '发送者',
    reset: '计数清零',
    delivered: '服务器送出的事件',
    requests: 'HTTP 请求',
    bytesDown: '下行字节(线上)',
    bytesUp: '上行字节(线上)',
    bytesPerMsg: '每条消息字节',
    emptyPolls: '空轮询',
    latencyServer: '服务器延迟 p50 / p99',
    latencyPage: '页面延迟 p50 / p99',
    latencyPageP99: '页面延迟 p99(收到 − ts)',
    received: '已收到',
    glance: '一眼看出差别',
    overTime: '随时间变化',
    metric: '指标',
    notMetered: '线上字节尚未统计,显示的是载荷字节',
    countersNote: '服务器计数是该技术所有客户端的总和,从本页打开(或清零)时算起。页面延迟 = 收到时间 − 事件 ts。',
  },
  en: {
    title: 'chatlab chat',
    subtitle: 'one chat room, four push techniques',
    compareLink: 'Compare the four techniques →',
    chatLink: '← Back to the chat',
    language: '中文',
    online: 'Online',
    onlineCount: 'Online now',
    you: '(you)',
    technique: 'Technique',
    interval: 'Poll interval (s)',
    placeholder: 'Type a message (/nick NAME renames you)',
    send: 'Send',
    emptyHint: 'Empty messages are not sent.',
    youAre: 'You are',
    ws: 'WebSocket',
    sse: 'SSE + POST',
    longpoll: 'Long poll',
    poll: 'Short poll',
    'about.ws': 'One TCP connection; text frames both ways.',
    'about.sse': 'One never-ending text/event-stream response pushes events; texts go up by POST.',
    'about.longpoll': 'The server holds each GET until there is news or a timeout; texts go up by POST.',
    'about.poll': 'A GET every N seconds, answered at once, often empty; texts go up by POST.',
    'state.connecting': 'connecting…',
    'state.open': 'connected',
    'state.reconnecting': 'reconnecting in {s} s (attempt {n})',
    'state.closed': 'disconnected',
    welcome: 'You joined as {nick} ({t})',
    switched: 'Switched to {t}; same identity, same cursor',
    gap: 'Events {from}–{to} are no longer kept by the server and cannot be shown',
    expired: 'Session expired; joining again as a new participant',
    missed: 'Events {from}–{to} happened while you were out of the room and are not shown',
    error: 'Error',
    sendFailed: 'Not sent',
    stillConnecting: 'Still connecting…',
    stillSending: 'Still sending…',
    connectionLimit: 'A browser opens at most 6 HTTP/1.1 connections to one site at a time, and every SSE stream or waiting long poll holds one for as long as it lasts: other tabs of this page may be holding them all. Close some, or switch to WebSocket (it does not count against the 6).',
    compareTitle: 'The four techniques side by side',
    compareIntro: 'Four participants in the same room, one per technique. Press “Send a burst” and watch what each one pays.',
    burst: 'Send a burst',
    burstSize: 'messages',
    sender: 'from',
    reset: 'Reset counters',
    delivered: 'Events delivered',
    requests: 'HTTP requests',
    bytesDown: 'Wire bytes down',
    bytesUp: 'Wire bytes up',
    bytesPerMsg: 'Bytes per message',
    emptyPolls: 'Empty polls',
    latencyServer: 'Server latency p50 / p99',
    latencyPage: 'Page latency p50 / p99',
    latencyPageP99: 'Page latency p99 (received − ts)',
    received: 'Received',
    glance: 'At a glance',
    overTime: 'Over time',
    metric: 'Metric',
    notMetered: 'wire bytes not metered yet: showing payload bytes',
    countersNote: 'Server counters add up every client of a technique, counted from when this view opened (or was reset). Page latency = receive time − event ts.',
  },
};

let current = localStorage.getItem('chatlab.lang') || (navigator.language.startsWith('zh') ? 'zh' : 'en');

export function language() {
  return current;
}

/** Looks up a label and fills in {name} placeholders. */
export function t(key, vars = {}) {
  const text = LABELS[current][key] ?? LABELS.en[key] ?? key;
  return text.replace(/\{(\w+)\}/g, (_, name) => String(vars[name] ?? ''));
}

/** Sets the language and relabels the page. */
export function applyLanguage(lang = current) {
  current = lang in LABELS ? lang : 'en';
  localStorage.setItem('chatlab.lang', current);
  document.documentElement.lang = current === 'zh' ? 'zh-CN' : 'en';
  for (const el of document.querySelectorAll('[data-i18n]')) el.textContent = t(el.dataset.i18n);
  for (const el of document.querySelectorAll('[data-i18n-placeholder]')) el.placeholder = t(el.dataset.i18nPlaceholder);
  document.title = t(document.body.dataset.titleKey || 'title');
}

export function toggleLanguage() {
  applyLanguage(current === 'zh' ? 'en' : 'zh');
}
