// Transport: the only module that knows edgebus's stream endpoints, the
// ticket exchange and the wire formats. Everything else receives envelopes
// `{id, topic, event, ts, payload}` through handlers.
//
// Contract (DESIGN.md "Wire formats" and "Auth"):
// - POST /v1/auth/ticket, `Authorization: Bearer KEY` (no header in open dev
//   mode) → 200 {"ticket", "expires_in"}; single use. 401/403: the key is
//   missing or refused. 404: a server without tickets (streams take none).
// - WebSocket GET /v1/ws?topic=F&topic=G&ticket=T: first frame
//   {"type":"snapshot","events":[…]}, then {"type":"event",…envelope},
//   {"type":"lagged","dropped":N}, {"type":"error","error":"…"}.
// - SSE GET {path}?ticket=T&last_event_id=ID: `event: snapshot` whose data is
//   {"events":[…],"reset":bool} (a bare array is accepted too), then
//   id:/event:/data: envelope frames, `event: lagged` data {"dropped":N}.
// The API key never goes into a URL; tickets do, because browsers cannot set
// headers on WebSocket or EventSource requests.
// - A stream request refused with 400 or 404 (a malformed or unknown id) or
//   403 will be refused again: the page says so and stops. 401 (spent or
//   expired ticket) retries with a fresh ticket; 429, 5xx and network errors
//   back off and retry.

export const TICKET_PATH = '/v1/auth/ticket';
export const WS_PATH = '/v1/ws';
export const CONFIG_PATH = '/assets/config.json';

// What the fleet page listens to, on one WebSocket.
export const FLEET_TOPICS = [
  'devices/+/metrics',
  'devices/+/presence',
  'alerts/#',
  'notifications/#',
  'edgebus/rejects',
  'attackers/+/scored',
  'attackers/+/fingerprint_rotated',
  'uploads/#',
];

// The per-attacker SSE stream and the event names it sends.
export const attackerEventsPath = (uuid) => `/v1/attackers/${encodeURIComponent(uuid)}/events`;
export const ATTACKER_EVENTS = ['observation', 'fingerprint.rotated', 'attacker.scored'];

export class AuthRequired extends Error {}

// What a stream request's refusal means: 'final' (asking again gets the same
// answer), 'ticket' (a fresh ticket may help) or 'backoff' (try later).
export function refusalKind(status) {
  if (status === 400 || status === 403 || status === 404) return 'final';
  if (status === 401) return 'ticket';
  return 'backoff';
}

const KEY_SLOT = 'edgebus.api_key';

// Holds the API key for this tab (sessionStorage: gone when the tab closes)
// and trades it for single-use tickets.
export class Auth {
  constructor(storage = window.sessionStorage) {
    this.storage = storage;
    this.listeners = new Set();
    // 'unknown' until the first ticket answer: 'tickets' | 'none'.
    this.serverMode = 'unknown';
  }

  get key() {
    try {
      return this.storage.getItem(KEY_SLOT) || '';
    } catch {
      return '';
    }
  }

  setKey(key) {
    try {
      if (key) this.storage.setItem(KEY_SLOT, key);
      else this.storage.removeItem(KEY_SLOT);
    } catch {
      // Storage refused (private mode): the key lives only as long as nothing reads it again.
    }
    for (const fn of this.listeners) fn();
  }

  onChange(fn) {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  // A fresh ticket (for `key`, by default the stored one), or null when the
  // server has no ticket endpoint.
  async ticket(key = this.key) {
    const headers = { Accept: 'application/json' };
    if (key) headers.Authorization = `Bearer ${key}`;
    const resp = await fetch(TICKET_PATH, {
      method: 'POST',
      headers,
      cache: 'no-store',
      credentials: 'same-origin',
    });
    if (resp.status === 404 || resp.status === 405) {
      this.serverMode = 'none';
      return null;
    }
    if (resp.status === 401 || resp.status === 403) {
      throw new AuthRequired(key ? 'API key refused' : 'API key required');
    }
    if (!resp.ok) throw new Error(`ticket request failed: HTTP ${resp.status}`);
    const body = await resp.json();
    if (!body || typeof body.ticket !== 'string' || body.ticket === '') {
      throw new Error('ticket response without a ticket');
    }
    this.serverMode = 'tickets';
    return body.ticket;
  }
}

// Exponential back-off with jitter: a fleet of dashboards reconnecting after
// a restart spreads out instead of arriving together.
export class Backoff {
  constructor(minMs = 500, maxMs = 8000, random = Math.random) {
    this.minMs = minMs;
    this.maxMs = maxMs;
    this.random = random;
    this.attempt = 0;
  }

  next() {
    const base = Math.min(this.maxMs, this.minMs * 2 ** this.attempt);
    this.attempt += 1;
    return Math.round(base / 2 + (this.random() * base) / 2);
  }

  reset() {
    this.attempt = 0;
  }
}

// Shared connection bookkeeping: state reports, retries, wake-ups.
class Reconnecting {
  constructor(auth, handlers) {
    this.auth = auth;
    this.h = handlers;
    this.backoff = new Backoff();
    this.timer = 0;
    this.stopped = true;
    this.lastMessageAt = 0;
    this.generation = 0;
    // A key entered or removed: reconnect now, so the stream runs as the
    // new identity (or stops running as the old one).
    this.offAuth = auth.onChange(() => {
      if (this.stopped) return;
      this.backoff.reset();
      this.connect();
    });
    this.onWake = () => this.wake();
  }

  start() {
    if (!this.stopped) return;
    this.stopped = false;
    window.addEventListener('online', this.onWake);
    document.addEventListener('visibilitychange', this.onWake);
    this.connect();
  }

  stop() {
    this.stopped = true;
    this.generation += 1;
    clearTimeout(this.timer);
    window.removeEventListener('online', this.onWake);
    document.removeEventListener('visibilitychange', this.onWake);
    this.close();
    this.report('stopped', '');
  }

  destroy() {
    this.stop();
    this.offAuth();
  }

  // Reconnect now if waiting (the network came back, the tab became
  // visible).
  wake() {
    if (this.stopped || document.visibilityState === 'hidden') return;
    if (this.state === 'reconnecting' || this.state === 'signin') {
      clearTimeout(this.timer);
      this.backoff.reset();
      this.connect();
    }
  }

  report(state, detail, extra = {}) {
    this.state = state;
    this.h.onState?.({ state, detail, ...extra });
  }

  async connect() {
    clearTimeout(this.timer);
    this.close();
    const generation = ++this.generation;
    this.report('connecting', 'Connecting…');
    let ticket;
    try {
      ticket = await this.auth.ticket();
    } catch (err) {
      if (generation !== this.generation) return;
      if (err instanceof AuthRequired) {
        this.report('signin', err.message);
        return; // Waits for a key (Auth.onChange wakes us).
      }
      this.retry(`No server: ${err.message}`);
      return;
    }
    if (generation !== this.generation) return;
    this.open(ticket, generation);
  }

  retry(why) {
    if (this.stopped) return;
    this.close();
    this.generation += 1;
    const delay = this.backoff.next();
    const retryAt = Date.now() + delay;
    this.report('reconnecting', why, { retryAt, attempt: this.backoff.attempt });
    this.timer = setTimeout(() => this.connect(), delay);
  }

  live() {
    this.backoff.reset();
    this.report('live', 'Live');
  }

  // The server will keep refusing this stream: say why and stop retrying
  // (a new key, through Auth.onChange, still tries again).
  fail(why) {
    this.close();
    this.generation += 1;
    clearTimeout(this.timer);
    this.report('failed', why);
    this.h.onError?.(why);
  }

  heard() {
    this.lastMessageAt = Date.now();
  }
}

function parseJson(text) {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

function isEnvelope(v) {
  return v && typeof v === 'object' && typeof v.topic === 'string' && typeof v.event === 'string';
}

// The fleet's WebSocket: one connection, several topic filters.
export class WsStream extends Reconnecting {
  constructor({ auth, topics, ...handlers }) {
    super(auth, handlers);
    this.topics = topics;
    this.ws = null;
  }

  url(ticket) {
    const q = new URLSearchParams();
    for (const t of this.topics) q.append('topic', t);
    if (ticket) q.set('ticket', ticket);
    const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
    return `${scheme}//${location.host}${WS_PATH}?${q}`;
  }

  open(ticket, generation) {
    const ws = new WebSocket(this.url(ticket));
    this.ws = ws;
    let gotSnapshot = false;
    ws.onmessage = (ev) => {
      if (generation !== this.generation) return;
      this.heard();
      const msg = parseJson(ev.data);
      if (!msg || typeof msg !== 'object') return;
      switch (msg.type) {
        case 'snapshot': {
          const events = Array.isArray(msg.events) ? msg.events.filter(isEnvelope) : [];
          // A new connection always starts from a fresh snapshot: whatever
          // happened while away is in it (latest value per topic).
          this.h.onSnapshot?.(events, { reset: false, reconnect: this.everLive === true });
          if (!gotSnapshot) {
            gotSnapshot = true;
            this.everLive = true;
            this.live();
          }
          break;
        }
        case 'event':
          if (isEnvelope(msg)) this.h.onEvent?.(msg);
          break;
        case 'lagged':
          this.h.onLagged?.(Number(msg.dropped) || 0);
          break;
        case 'error':
          this.h.onError?.(String(msg.error ?? 'stream error'));
          break;
        default:
          break;
      }
    };
    ws.onclose = (ev) => {
      if (generation !== this.generation || this.stopped) return;
      const why = ev.code === 1001 ? 'Server going away' : ev.code === 1008 ? 'Refused' : 'Disconnected';
      this.retry(why);
    };
    ws.onerror = () => {
      // onclose follows and owns the retry.
    };
  }

  close() {
    const ws = this.ws;
    this.ws = null;
    if (ws) {
      ws.onmessage = ws.onclose = ws.onerror = null;
      try {
        ws.close(1000);
      } catch {
        // Already closed.
      }
    }
  }
}

// One Server-Sent Events stream, reopened by us (never by EventSource, which
// would replay a spent ticket) with a fresh ticket and the last event id.
export class SseStream extends Reconnecting {
  constructor({ auth, path, events, ...handlers }) {
    super(auth, handlers);
    this.path = path;
    this.events = events;
    this.es = null;
    this.lastEventId = '';
  }

  url(ticket) {
    const q = new URLSearchParams();
    if (ticket) q.set('ticket', ticket);
    if (this.lastEventId) q.set('last_event_id', this.lastEventId);
    const query = q.toString();
    return query ? `${this.path}?${query}` : this.path;
  }

  open(ticket, generation) {
    const es = new EventSource(this.url(ticket));
    this.es = es;
    const current = () => generation === this.generation && !this.stopped;
    // EventSource hides the status of a refused request: an error before the
    // stream ever opened is looked into (probe) instead of retried blindly.
    let opened = false;
    es.onopen = () => {
      if (!current()) return;
      opened = true;
      this.heard();
    };
    es.addEventListener('snapshot', (ev) => {
      if (!current()) return;
      opened = true;
      this.heard();
      const data = parseJson(ev.data);
      let events = [];
      let reset = false;
      if (Array.isArray(data)) events = data;
      else if (data && typeof data === 'object') {
        events = Array.isArray(data.events) ? data.events : [];
        reset = data.reset === true;
      }
      events = events.filter(isEnvelope);
      if (ev.lastEventId) this.lastEventId = ev.lastEventId;
      else if (events.length && typeof events[events.length - 1].id === 'string') {
        this.lastEventId = events[events.length - 1].id;
      }
      this.h.onSnapshot?.(events, { reset });
      this.live();
    });
    for (const name of this.events) {
      es.addEventListener(name, (ev) => {
        if (!current()) return;
        opened = true;
        this.heard();
        const env = parseJson(ev.data);
        if (!isEnvelope(env)) return;
        this.lastEventId = ev.lastEventId || (typeof env.id === 'string' ? env.id : this.lastEventId);
        if (this.state !== 'live') this.live();
        this.h.onEvent?.(env);
      });
    }
    es.addEventListener('lagged', (ev) => {
      if (!current()) return;
      const data = parseJson(ev.data);
      this.h.onLagged?.(Number(data?.dropped) || 0);
    });
    es.onerror = (ev) => {
      if (!current()) return;
      // A named `error` event from the server carries a message; a network
      // error or a non-200 answer carries nothing. Either way: reopen.
      if (ev && typeof ev.data === 'string') {
        const data = parseJson(ev.data);
        this.h.onError?.(String(data?.message ?? data?.error ?? 'stream error'));
      }
      if (!opened) {
        this.close();
        this.probe(generation);
        return;
      }
      this.retry('Disconnected');
    };
  }

  // Asks the same stream with a fresh ticket, to learn the status the
  // EventSource was refused with, then fails for good or retries.
  async probe(generation) {
    let status = 0;
    let message = '';
    try {
      const ticket = await this.auth.ticket();
      if (generation !== this.generation || this.stopped) return;
      const abort = typeof AbortController === 'function' ? new AbortController() : null;
      const resp = await fetch(this.url(ticket), {
        headers: { Accept: 'text/event-stream' },
        cache: 'no-store',
        credentials: 'same-origin',
        signal: abort?.signal,
      });
      status = resp.status;
      if (status !== 200) {
        const body = await resp.json().catch(() => null);
        if (typeof body?.error === 'string') message = body.error;
      }
      abort?.abort(); // A 200 is a live stream: we only wanted its status.
    } catch (err) {
      if (generation !== this.generation || this.stopped) return;
      if (err instanceof AuthRequired) {
        this.report('signin', err.message);
        return;
      }
    }
    if (generation !== this.generation || this.stopped) return;
    if (refusalKind(status) === 'final') {
      this.fail(`Refused (HTTP ${status})${message ? `: ${message}` : ''}`);
      return;
    }
    this.retry(status && status !== 200 ? `HTTP ${status}` : 'Disconnected');
  }

  close() {
    const es = this.es;
    this.es = null;
    if (es) {
      es.onopen = es.onerror = null;
      es.close();
    }
  }
}
