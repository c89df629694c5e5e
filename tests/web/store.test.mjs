// The dashboard's store (pure): device states, snapshots vs live events,
// toasts, de-duplication. Run: node --test tests/web/

import { test } from 'node:test';
import assert from 'node:assert/strict';

const { Store, alertText } = await import('../../web/js/store.js');
const { pct, ago, level, connLabel } = await import('../../web/js/format.js');

const metrics = (id, device, ts, cpu) => ({
  id,
  topic: `devices/${device}/metrics`,
  event: 'metrics',
  ts,
  payload: { device_id: device, timestamp: 1, cpu_percent: cpu, mem_percent: 2, disk_percent: 3 },
});

test('devices are active, then stale (or offline), then silent', () => {
  const s = new Store({ prune_seconds: 30, silent_after_seconds: 600 });
  s.apply(metrics('e-1', 'd1', 1_000_000, 5), { live: false });
  const d = s.devices.get('d1');
  assert.equal(s.stateOf(d, 1_000_000 + 30_000), 'active');
  assert.equal(s.stateOf(d, 1_000_000 + 30_001), 'stale');
  assert.equal(s.stateOf(d, 1_000_000 + 600_001), 'silent');
  s.apply({ id: 'e-2', topic: 'devices/d1/presence', event: 'device.offline', ts: 1_000_001, payload: { device_id: 'd1' } });
  assert.equal(s.stateOf(d, 1_000_002), 'stale', 'offline = left the active window');
  assert.equal(s.stateOf(d, 1_000_000 + 600_001), 'silent');
});

test('an older frame never overwrites a newer one, and repeats are dropped', () => {
  const s = new Store();
  s.apply(metrics('e-2', 'd1', 2000, 50));
  s.apply(metrics('e-1', 'd1', 1000, 10), { live: false });
  assert.equal(s.devices.get('d1').cpu, 50);
  s.apply(metrics('e-2', 'd1', 2000, 50));
  assert.equal(s.devices.get('d1').log.length, 2, 'the repeat of e-2 is not logged again');
});

test('history keeps one point per second', () => {
  const s = new Store();
  for (let i = 0; i < 10; i++) s.apply(metrics(`e-${i}`, 'd1', 5000 + i * 100, i));
  const h = s.devices.get('d1').hist;
  assert.deepEqual(h.t.length, 1);
  assert.equal(h.cpu[0], 9);
  s.apply(metrics('e-x', 'd1', 6000, 1));
  assert.equal(h.t.length, 2);
});

test('live notifications and alerts toast; a first snapshot does not; a reconnect snapshot toasts only what is new', () => {
  const s = new Store();
  const note = (id, ts) => ({ id, topic: 'notifications/ci', event: 'notification', ts, payload: { level: 'warn', message: 'm' } });
  assert.equal(s.apply(note('n-1', 100), { live: false }), null);
  const t = s.apply(note('n-2', 200));
  assert.deepEqual(t, { level: 'warning', title: 'ci', message: 'm', kind: 'notification' });
  assert.equal(s.apply(note('n-0', 150), { live: false, reconnect: true }), null);
  assert.ok(s.apply(note('n-3', 300), { live: false, reconnect: true }));
  const alert = s.apply({
    id: 'a-1',
    topic: 'alerts/d9/cpu_high',
    event: 'alert',
    ts: 400,
    payload: { field: 'cpu_percent', value: 97.5, threshold: 90 },
  });
  assert.equal(alert.kind, 'alert');
  assert.equal(alert.level, 'warning');
  assert.equal(alert.message, 'cpu_high on d9: cpu_percent 97.5 (limit 90)');
  assert.equal(s.devices.get('d9').alerts.length, 1);
});

test('rejects are counted and logged on their device; attackers are tracked by score', () => {
  const s = new Store();
  s.apply(metrics('e-1', 'd1', 1, 1));
  s.apply({ id: 'r-1', topic: 'edgebus/rejects', event: 'reject', ts: 2, payload: { device_id: 'd1', reason: 'out_of_range' } });
  s.apply({ id: 'r-2', topic: 'edgebus/rejects', event: 'reject', ts: 3, payload: { reason: 'bad_json' } });
  assert.equal(s.rejects, 2);
  assert.equal(s.devices.get('d1').log.at(-1).env.event, 'reject');
  s.apply({ id: 's-1', topic: 'attackers/u1/scored', event: 'attacker.scored', ts: 4, payload: { score: 0.7 } });
  s.apply({ id: 's-2', topic: 'attackers/u1/fingerprint_rotated', event: 'fingerprint.rotated', ts: 5, payload: {} });
  assert.deepEqual(s.attackers.get('u1'), { uuid: 'u1', score: 0.7, rotations: 1, ts: 5 });
});

test('formatting', () => {
  assert.equal(pct(97.25), '97.3%');
  assert.equal(pct(null), '—');
  assert.equal(pct(Number.NaN), '—');
  assert.equal(ago(65_000), '1m 5s ago');
  assert.equal(level('CRITICAL'), 'error');
  assert.equal(level('<b>'), 'info');
  assert.equal(alertText({ message: 'custom' }, 'd', 'r'), 'custom');
  assert.equal(alertText({ message: ':rotating_light: cpu_high ALERT at d' }, 'd', 'r'), 'cpu_high ALERT at d');
  assert.match(connLabel({ state: 'reconnecting', detail: 'Disconnected', retryAt: Date.now() + 2500 }), /retry in 3s/);
});
