// The dashboard's uploads state (pure): per host, the last upload, counts by
// outcome, the last refusal; the host bound; what reaches it through the
// store. Run: node --test tests/web/

import { test } from 'node:test';
import assert from 'node:assert/strict';

const { Uploads, uploadHost, TEXT_CAP, UPLOAD_HOSTS_CAP } = await import('../../web/js/uploads.js');
const { Store } = await import('../../web/js/store.js');
const { FLEET_TOPICS } = await import('../../web/js/transport.js');
const { bytes } = await import('../../web/js/format.js');

// An event as the contract spells it (UPLOADS_CONTRACT.md).
const upload = (id, host, event, ts, payload = {}) => ({
  id,
  topic: `uploads/${host}`,
  event,
  ts,
  payload: { host_id: host, schema_version: 2, stamped: true, ...payload },
});
const stored = (id, host, ts, episode, size) =>
  upload(id, host, 'upload.stored', ts, { episode_id: episode, status: 'stored', http_status: 201, size_bytes: size, sha256: 'a'.repeat(64) });
const duplicate = (id, host, ts, episode) =>
  upload(id, host, 'upload.duplicate', ts, { episode_id: episode, status: 'already-present', http_status: 200, sha256: 'a'.repeat(64) });
const refused = (id, host, ts, status, http, reason, extra = {}) =>
  upload(id, host, 'upload.refused', ts, { status, http_status: http, reason, ...extra });

test('a host keeps its last upload, its counts by outcome and its last refusal', () => {
  const u = new Uploads();
  assert.equal(u.apply(stored('e1', 'lab-01', 1000, 'ep-0001', 4096), 1000), true);
  u.apply(duplicate('e2', 'lab-01', 2000, 'ep-0001'), 2000);
  u.apply(refused('e3', 'lab-01', 3000, 'sha-mismatch', 400, 'body sha256 does not match', { episode_id: 'ep-0002' }), 3000);
  u.apply(stored('e4', 'lab-01', 4000, 'ep-0003', 10), 4000);

  const r = u.hosts.get('lab-01');
  assert.deepEqual(
    { stored: r.stored, duplicate: r.duplicate, refused: r.refused },
    { stored: 2, duplicate: 1, refused: 1 },
  );
  assert.deepEqual(r.last, {
    outcome: 'stored',
    episode: 'ep-0003',
    status: 'stored',
    httpStatus: 201,
    size: 10,
    reason: null,
    ts: 4000,
  });
  assert.deepEqual(r.lastRefusal, {
    outcome: 'refused',
    episode: 'ep-0002',
    status: 'sha-mismatch',
    httpStatus: 400,
    size: null,
    reason: 'body sha256 does not match',
    ts: 3000,
  });
});

test('an older event counts but never hides a newer one', () => {
  const u = new Uploads();
  u.apply(stored('e2', 'lab-01', 2000, 'ep-new', 1), 2000);
  u.apply(refused('e1', 'lab-01', 1000, 'too-large', 413, 'episode exceeds max size'), 1000);
  const r = u.hosts.get('lab-01');
  assert.equal(r.last.episode, 'ep-new');
  assert.equal(r.refused, 1);
  assert.equal(r.lastRefusal.status, 'too-large');
});

test('a refusal without an episode id or reason still shows its status', () => {
  const u = new Uploads();
  u.apply(upload('e1', 'lab-01', 'upload.refused', 1, { status: 'bad-request', http_status: 400 }), 1);
  const r = u.hosts.get('lab-01');
  assert.equal(r.last.episode, null);
  assert.equal(r.lastRefusal.status, 'bad-request');
  assert.equal(r.lastRefusal.reason, null);
});

test('only upload events on a host id topic are taken, and odd fields are dropped', () => {
  const u = new Uploads();
  assert.equal(u.apply({ topic: 'uploads/lab-01', event: 'notification', ts: 1, payload: {} }, 1), false);
  assert.equal(u.apply({ topic: 'alerts/lab-01/x', event: 'upload.stored', ts: 1, payload: {} }, 1), false);
  for (const topic of ['uploads/', 'uploads/.hidden', 'uploads/a/b', `uploads/${'h'.repeat(65)}`, 'uploads/a b']) {
    assert.equal(u.apply({ topic, event: 'upload.stored', ts: 1, payload: {} }, 1), false, topic);
  }
  assert.equal(u.hosts.size, 0);
  assert.equal(uploadHost('uploads/lab-01.cs_490'), 'lab-01.cs_490');

  u.apply(
    upload('e1', 'lab-02', 'upload.refused', 5, {
      episode_id: 42,
      status: ['x'],
      http_status: 4000,
      size_bytes: -1,
      reason: 'r'.repeat(5000),
    }),
    5,
  );
  const r = u.hosts.get('lab-02');
  assert.equal(r.last.episode, null);
  assert.equal(r.last.status, 'refused', 'the outcome stands in for a missing status');
  assert.equal(r.last.httpStatus, null);
  assert.equal(r.last.size, null);
  assert.equal(r.last.reason.length, TEXT_CAP);
  assert.ok(r.last.reason.endsWith('…'));
  // A payload that is not an object is an event without details.
  assert.equal(u.apply({ topic: 'uploads/lab-03', event: 'upload.stored', ts: 6, payload: 'x' }, 6), true);
  assert.equal(u.hosts.get('lab-03').stored, 1);
});

test('at most `cap` hosts are kept: the one heard from longest ago goes first', () => {
  const u = new Uploads(3);
  u.apply(stored('a', 'h-a', 100, 'ep', 1), 100);
  u.apply(stored('b', 'h-b', 200, 'ep', 1), 200);
  u.apply(stored('c', 'h-c', 300, 'ep', 1), 300);
  u.apply(stored('a2', 'h-a', 400, 'ep', 1), 400); // h-a is recent again
  u.apply(stored('d', 'h-d', 500, 'ep', 1), 500);
  assert.deepEqual(
    u.list().map((r) => r.host),
    ['h-a', 'h-c', 'h-d'],
  );
  assert.equal(u.forgotten, 1);
  // An event older than every kept host is forgotten at once.
  u.apply(stored('z', 'h-z', 1, 'ep', 1), 1);
  assert.deepEqual(u.list().map((r) => r.host), ['h-a', 'h-c', 'h-d']);
  assert.equal(u.forgotten, 2);

  const many = new Uploads();
  for (let i = 0; i < UPLOAD_HOSTS_CAP + 50; i++) many.apply(stored(`e${i}`, `lab-${i}`, i, 'ep', 1), i);
  assert.equal(many.hosts.size, UPLOAD_HOSTS_CAP);
  assert.ok(!many.hosts.has('lab-0') && many.hosts.has(`lab-${UPLOAD_HOSTS_CAP + 49}`));
});

test('the fleet stream subscribes to uploads, and the store feeds the panel once per event id', () => {
  assert.ok(FLEET_TOPICS.includes('uploads/#'));
  const s = new Store();
  s.apply(stored('e1', 'lab-01', 1000, 'ep-1', 2048), { live: false });
  assert.equal(s.takeDirty().uploads, true);
  s.apply(stored('e1', 'lab-01', 1000, 'ep-1', 2048), { live: false, reconnect: true });
  assert.equal(s.takeDirty().uploads, false, 'a repeat in a reconnect snapshot');
  const toast = s.apply(refused('e2', 'lab-01', 2000, 'conflict', 409, 'different content'));
  assert.equal(toast, null, 'refusals show in the panel, not as toasts');
  const r = s.uploads.hosts.get('lab-01');
  assert.deepEqual([r.stored, r.refused, r.last.status], [1, 1, 'conflict']);
  assert.equal(s.devices.size, 0, 'a host is no device');
});

test('sizes read in binary units', () => {
  assert.equal(bytes(0), '0 B');
  assert.equal(bytes(1023), '1023 B');
  assert.equal(bytes(1536), '1.5 KiB');
  assert.equal(bytes(12 * 1024 * 1024), '12.0 MiB');
  assert.equal(bytes(-1), '—');
  assert.equal(bytes(null), '—');
});
