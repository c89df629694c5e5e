// The dashboard's transport module under Node's test runner, with fake
// WebSocket / EventSource / fetch: ticket exchange, reconnects with a fresh
// ticket and the last event id, snapshot forms. Run: node --test tests/web/

import { test } from 'node:test';
import assert from 'node:assert/strict';

// A browser-shaped global scope, just enough for transport.js.
globalThis.window = new EventTarget();
globalThis.document = Object.assign(new EventTarget(), { visibilityState: 'visible' });
globalThis.location = { protocol: 'http:', host: '127.0.0.1:8080' };

class FakeEventSource {
  static all = [];
  constructor(url) {
    this.url = url;
    this.listeners = {};
    this.closed = false;
    FakeEventSource.all.push(this);
  }
  addEventListener(name, fn) {
    (this.listeners[name] ||= []).push(fn);
  }
  emit(name, data, lastEventId = '') {
    for (const fn of this.listeners[name] || []) fn({ data: JSON.stringify(data), lastEventId });
  }
  close() {
    this.closed = true;
  }
}

class FakeWebSocket {
  static all = [];
  constructor(url) {
    this.url = url;
    this.closedByClient = false;
    FakeWebSocket.all.push(this);
  }
  receive(msg) {
    this.onmessage?.({ data: JSON.stringify(msg) });
  }
  drop(code = 1006) {
    this.onclose?.({ code });
  }
  close() {
    this.closedByClient = true;
  }
}

globalThis.EventSource = FakeEventSource;
globalThis.WebSocket = FakeWebSocket;

const { Auth, Backoff, SseStream, WsStream, AuthRequired, FLEET_TOPICS, attackerEventsPath, refusalKind } = await import(
  '../../web/js/transport.js'
);

function memoryStorage() {
  const m = new Map();
  return { getItem: (k) => m.get(k) ?? null, setItem: (k, v) => m.set(k, v), removeItem: (k) => m.delete(k) };
}

// fetch that answers the ticket endpoint and records what it was sent.
function fakeFetch(answer) {
  const calls = [];
  globalThis.fetch = async (url, init) => {
    calls.push({ url, init });
    const { status, body } = answer(calls.length, init);
    return { status, ok: status >= 200 && status < 300, json: async () => body };
  };
  return calls;
}

const until = async (cond, what) => {
  for (let i = 0; i < 200; i++) {
    if (cond()) return;
    await new Promise((r) => setTimeout(r, 5));
  }
  assert.fail(`never happened: ${what}`);
};

const env = (id, event = 'observation', topic = 'attackers/a1/observation/ssh') => ({
  id,
  topic,
  event,
  ts: 1,
  payload: { attacker_uuid: 'a1' },
});

test('backoff grows to its ceiling with jitter, and resets', () => {
  const b = new Backoff(100, 800, () => 1);
  assert.deepEqual([b.next(), b.next(), b.next(), b.next(), b.next()], [100, 200, 400, 800, 800]);
  const low = new Backoff(100, 800, () => 0);
  assert.equal(low.next(), 50);
  b.reset();
  assert.equal(b.next(), 100);
});

test('tickets are fetched with the key in a header, never in the URL', async () => {
  const calls = fakeFetch(() => ({ status: 200, body: { ticket: 'tk1', expires_in: 60 } }));
  const auth = new Auth(memoryStorage());
  auth.setKey('secret-key-123456');
  assert.equal(await auth.ticket(), 'tk1');
  assert.equal(calls[0].url, '/v1/auth/ticket');
  assert.equal(calls[0].init.method, 'POST');
  assert.equal(calls[0].init.headers.Authorization, 'Bearer secret-key-123456');
  assert.ok(!calls[0].url.includes('secret'));
});

test('a refused key asks for sign-in; a server without tickets means none', async () => {
  fakeFetch(() => ({ status: 401, body: { error: 'unauthorized' } }));
  await assert.rejects(new Auth(memoryStorage()).ticket(), AuthRequired);
  fakeFetch(() => ({ status: 404, body: {} }));
  const auth = new Auth(memoryStorage());
  assert.equal(await auth.ticket(), null);
  assert.equal(auth.serverMode, 'none');
  fakeFetch(() => ({ status: 503, body: {} }));
  await assert.rejects(new Auth(memoryStorage()).ticket(), (e) => !(e instanceof AuthRequired));
});

test('the WebSocket names its topics and ticket, goes live on the snapshot and reconnects with a fresh ticket', async () => {
  let n = 0;
  fakeFetch(() => ({ status: 200, body: { ticket: `t${++n}` } }));
  const seen = { states: [], snapshots: [], events: [] };
  const ws = new WsStream({
    auth: new Auth(memoryStorage()),
    topics: FLEET_TOPICS,
    onState: (s) => seen.states.push(s.state),
    onSnapshot: (events, info) => seen.snapshots.push({ events, info }),
    onEvent: (e) => seen.events.push(e),
  });
  ws.backoff = new Backoff(1, 1);
  FakeWebSocket.all.length = 0;
  ws.start();
  await until(() => FakeWebSocket.all.length === 1, 'a socket');
  const url = new URL(FakeWebSocket.all[0].url);
  assert.equal(url.protocol, 'ws:');
  assert.equal(url.pathname, '/v1/ws');
  assert.deepEqual(url.searchParams.getAll('topic'), FLEET_TOPICS);
  assert.equal(url.searchParams.get('ticket'), 't1');

  FakeWebSocket.all[0].receive({ type: 'snapshot', events: [env('e-1', 'metrics', 'devices/d1/metrics'), { junk: true }] });
  FakeWebSocket.all[0].receive({ type: 'event', ...env('e-2', 'metrics', 'devices/d1/metrics') });
  assert.equal(ws.state, 'live');
  assert.equal(seen.snapshots[0].events.length, 1, 'malformed envelopes are dropped');
  assert.equal(seen.snapshots[0].info.reconnect, false);
  assert.equal(seen.events[0].id, 'e-2');

  FakeWebSocket.all[0].drop(1001);
  assert.equal(ws.state, 'reconnecting');
  await until(() => FakeWebSocket.all.length === 2, 'a second socket');
  assert.equal(new URL(FakeWebSocket.all[1].url).searchParams.get('ticket'), 't2');
  FakeWebSocket.all[1].receive({ type: 'snapshot', events: [] });
  assert.equal(seen.snapshots[1].info.reconnect, true);
  // Frames from the dead socket are ignored.
  FakeWebSocket.all[0].receive({ type: 'event', ...env('e-9') });
  assert.equal(seen.events.length, 1);
  ws.destroy();
  assert.equal(ws.state, 'stopped');
});

test('the WebSocket waits for a key when the server asks for one, then connects', async () => {
  let keyed = false;
  fakeFetch((_, init) => (init.headers.Authorization ? ((keyed = true), { status: 200, body: { ticket: 'tk' } }) : { status: 401, body: {} }));
  const auth = new Auth(memoryStorage());
  const states = [];
  const ws = new WsStream({ auth, topics: ['a/#'], onState: (s) => states.push(s.state) });
  FakeWebSocket.all.length = 0;
  ws.start();
  await until(() => ws.state === 'signin', 'the sign-in state');
  assert.equal(FakeWebSocket.all.length, 0);
  auth.setKey('k-0123456789abcdef');
  await until(() => FakeWebSocket.all.length === 1, 'a socket after sign-in');
  assert.ok(keyed);
  assert.ok(!FakeWebSocket.all[0].url.includes('k-0123456789abcdef'));
  ws.destroy();
});

test('SSE reopens itself with a fresh ticket and the last event id', async () => {
  let n = 0;
  fakeFetch(() => ({ status: 200, body: { ticket: `s${++n}` } }));
  const got = { snapshots: [], events: [], lagged: [] };
  const sse = new SseStream({
    auth: new Auth(memoryStorage()),
    path: attackerEventsPath('a1'),
    events: ['observation', 'attacker.scored'],
    onSnapshot: (events, info) => got.snapshots.push({ events, info }),
    onEvent: (e) => got.events.push(e),
    onLagged: (d) => got.lagged.push(d),
  });
  sse.backoff = new Backoff(1, 1);
  FakeEventSource.all.length = 0;
  sse.start();
  await until(() => FakeEventSource.all.length === 1, 'an EventSource');
  const first = FakeEventSource.all[0];
  assert.equal(first.url, '/v1/attackers/a1/events?ticket=s1');

  first.emit('snapshot', { events: [env('k-1'), env('k-2')], reset: false });
  assert.equal(sse.state, 'live');
  assert.equal(got.snapshots[0].events.length, 2);
  assert.equal(sse.lastEventId, 'k-2', 'the newest snapshot event');
  first.emit('observation', env('k-3'), 'k-3');
  first.emit('lagged', { dropped: 4 });
  assert.deepEqual(got.lagged, [4]);
  assert.equal(got.events.at(-1).id, 'k-3');

  // A network error: our own reconnect, never EventSource's (spent ticket).
  first.onerror({});
  assert.ok(first.closed);
  await until(() => FakeEventSource.all.length === 2, 'a second EventSource');
  assert.equal(FakeEventSource.all[1].url, '/v1/attackers/a1/events?ticket=s2&last_event_id=k-3');

  // A reset snapshot (the id left the ring, or another epoch) and the bare-array form.
  FakeEventSource.all[1].emit('snapshot', { events: [env('z-1')], reset: true });
  assert.equal(got.snapshots[1].info.reset, true);
  FakeEventSource.all[1].emit('snapshot', [env('z-2')]);
  assert.equal(got.snapshots[2].info.reset, false);
  assert.equal(got.snapshots[2].events[0].id, 'z-2');
  sse.destroy();
  assert.ok(FakeEventSource.all[1].closed);
});

test('a refused stream is final on 400/403/404, retried with a fresh ticket on 401, backed off on 429/5xx', () => {
  assert.deepEqual(
    [400, 403, 404, 401, 429, 500, 503, 0].map(refusalKind),
    ['final', 'final', 'final', 'ticket', 'backoff', 'backoff', 'backoff', 'backoff'],
  );
});

test('an SSE stream refused before it opened asks why, and stops for good on 400/404 or retries', async () => {
  for (const [status, final] of [
    [400, true],
    [404, true],
    [401, false],
    [429, false],
    [503, false],
  ]) {
    const probes = [];
    let n = 0;
    globalThis.fetch = async (url, init) => {
      if (url === '/v1/auth/ticket') return { status: 200, ok: true, json: async () => ({ ticket: `r${++n}` }) };
      probes.push({ url, init });
      return { status, ok: false, json: async () => ({ error: 'attacker id must match ^[A-Za-z0-9._-]{1,64}$' }) };
    };
    const states = [];
    const errors = [];
    const sse = new SseStream({
      auth: new Auth(memoryStorage()),
      path: attackerEventsPath('not an id!'),
      events: ['observation'],
      onState: (s) => states.push(s),
      onError: (m) => errors.push(m),
    });
    sse.backoff = new Backoff(1, 1);
    FakeEventSource.all.length = 0;
    sse.start();
    await until(() => FakeEventSource.all.length === 1, 'an EventSource');
    // EventSource reports a non-200 answer as a bare error, before any open.
    FakeEventSource.all[0].onerror({});
    assert.ok(FakeEventSource.all[0].closed, 'never left to EventSource to retry');
    if (final) {
      await until(() => sse.state === 'failed', `failed for good on ${status}`);
      assert.equal(probes.length, 1, 'one probe');
      assert.equal(probes[0].url, '/v1/attackers/not%20an%20id!/events?ticket=r2');
      assert.match(states.at(-1).detail, new RegExp(`HTTP ${status}.*attacker id must match`));
      assert.equal(errors.length, 1, 'the page shows the error');
      // Nothing is scheduled: the view stays failed.
      await new Promise((r) => setTimeout(r, 50));
      assert.equal(FakeEventSource.all.length, 1, 'no retry');
      assert.equal(sse.state, 'failed');
    } else {
      await until(() => FakeEventSource.all.length === 2, `a retry after ${status}`);
      assert.equal(states.find((s) => s.state === 'reconnecting').detail, `HTTP ${status}`);
      assert.equal(errors.length, 0);
    }
    sse.destroy();
  }
});
