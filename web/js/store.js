// What the page knows: devices, alerts, notifications, attackers, uploads.
// Envelopes go in through `apply`; views read the maps and the dirty sets
// once per animation frame, so a burst of hundreds of events costs one
// render.

import { levels, level } from './format.js';
import { Uploads } from './uploads.js';

export const HISTORY_MS = 10 * 60 * 1000; // charts look back this far
const HISTORY_POINTS = 1200; // at most, per device (one per second bucket)
const LOG_CAP = 200; // raw events kept per device
const FEED_CAP = 200; // alerts / notifications kept
const SEEN_CAP = 10000; // event ids remembered, to drop repeats across snapshots

// An insertion-ordered set that forgets its oldest entries.
class RecentIds {
  constructor(cap) {
    this.cap = cap;
    this.set = new Set();
  }
  has(id) {
    return this.set.has(id);
  }
  add(id) {
    this.set.add(id);
    if (this.set.size > this.cap) this.set.delete(this.set.values().next().value);
  }
}

function num(v) {
  return typeof v === 'number' && Number.isFinite(v) ? v : null;
}

export function alertText(payload, device, rule) {
  // The message is written for Slack: drop its leading `:emoji:` shortcode.
  if (typeof payload?.message === 'string' && payload.message) {
    return payload.message.replace(/^:[a-z0-9_+-]+:\s*/, '');
  }
  const field = typeof payload?.field === 'string' ? payload.field : '';
  const value = num(payload?.value);
  const limit = num(payload?.threshold ?? payload?.above ?? payload?.below);
  let text = `${payload?.rule ?? rule ?? 'alert'} on ${payload?.device_id ?? device ?? '?'}`;
  if (field && value !== null) {
    text += `: ${field} ${value.toFixed(1)}`;
    if (limit !== null) text += ` (limit ${limit})`;
  }
  return text;
}

export class Store {
  constructor(config = {}) {
    this.activeMs = (Number(config.prune_seconds) || 30) * 1000;
    this.silentMs = (Number(config.silent_after_seconds) || 1800) * 1000;
    this.devices = new Map();
    this.alerts = [];
    this.notifications = [];
    this.attackers = new Map();
    this.uploads = new Uploads();
    this.rejects = 0;
    this.lagged = 0;
    this.seen = new RecentIds(SEEN_CAP);
    this.skew = null; // local clock minus server clock, estimated
    this.lastTs = 0; // newest server time seen: what a reconnect compares against
    this.feedSeq = 0;
    this.dirty = this.freshDirty();
    this.onDirty = () => {};
  }

  freshDirty() {
    return {
      devices: new Set(),
      added: false,
      alerts: false,
      notifications: false,
      attackers: false,
      uploads: false,
      counts: false,
    };
  }

  takeDirty() {
    const d = this.dirty;
    this.dirty = this.freshDirty();
    return d;
  }

  // Server time now, by our clock corrected for the estimated skew.
  now() {
    return Date.now() - (this.skew ?? 0);
  }

  stateOf(device, now = this.now()) {
    const age = now - device.lastSeen;
    // `device.offline` comes when the device left the active window
    // (registry.prune_seconds): stale, until it has been quiet for
    // silent_after_seconds.
    if (age <= this.activeMs && device.presence !== 'offline') return 'active';
    if (age <= this.silentMs) return 'stale';
    return 'silent';
  }

  device(id) {
    let d = this.devices.get(id);
    if (!d) {
      d = {
        id,
        cpu: null,
        mem: null,
        disk: null,
        gpu: null,
        lastSeen: -Infinity,
        deviceTs: null,
        presence: null,
        hist: { t: [], cpu: [], mem: [], disk: [] },
        alerts: [],
        log: [],
        logSeq: 0,
      };
      this.devices.set(id, d);
      this.dirty.added = true;
    }
    return d;
  }

  log(d, env) {
    d.logSeq += 1;
    d.log.push({ seq: d.logSeq, env });
    if (d.log.length > LOG_CAP) d.log.shift();
  }

  // Applies one envelope. `live` = it arrived on the stream now (not in a
  // snapshot). Returns a toast description when the user should be told.
  apply(env, { live = true, reconnect = false } = {}) {
    if (typeof env.id === 'string') {
      if (this.seen.has(env.id)) return null;
      this.seen.add(env.id);
    }
    const ts = num(env.ts) ?? Date.now();
    const fresh = live || (reconnect && ts > this.lastTs);
    if (live) {
      const sample = Date.now() - ts;
      this.skew = this.skew === null || sample < this.skew ? sample : this.skew * 0.99 + sample * 0.01;
    }
    const lv = levels(env.topic);
    const p = env.payload && typeof env.payload === 'object' ? env.payload : {};
    let toast = null;
    switch (env.event) {
      case 'metrics':
        this.metrics(env, p, lv, ts);
        break;
      case 'device.online':
      case 'device.offline': {
        const id = typeof p.device_id === 'string' ? p.device_id : lv[1];
        if (!id) break;
        const d = this.device(id);
        d.presence = env.event === 'device.offline' ? 'offline' : 'online';
        this.log(d, env);
        this.dirty.devices.add(id);
        this.dirty.counts = true;
        break;
      }
      case 'alert': {
        const device = typeof p.device_id === 'string' ? p.device_id : lv[1];
        const rule = lv.slice(2).join('/');
        const item = {
          seq: ++this.feedSeq,
          ts,
          device,
          rule,
          level: level(p.level ?? p.severity, 'warning'),
          text: alertText(p, device, rule),
        };
        this.alerts.push(item);
        if (this.alerts.length > FEED_CAP) this.alerts.shift();
        if (device) {
          const d = this.device(device);
          d.alerts.push(item);
          if (d.alerts.length > FEED_CAP) d.alerts.shift();
          this.log(d, env);
          this.dirty.devices.add(device);
        }
        this.dirty.alerts = true;
        if (fresh) toast = { level: item.level, title: `Alert · ${rule || 'rule'}`, message: item.text, kind: 'alert' };
        break;
      }
      case 'notification': {
        const source = typeof p.source === 'string' && p.source ? p.source : lv.slice(1).join('/');
        const item = {
          seq: ++this.feedSeq,
          ts,
          source,
          level: level(p.level),
          text: typeof p.message === 'string' ? p.message : JSON.stringify(p.message ?? ''),
        };
        this.notifications.push(item);
        if (this.notifications.length > FEED_CAP) this.notifications.shift();
        this.dirty.notifications = true;
        if (fresh) toast = { level: item.level, title: source || 'notification', message: item.text, kind: 'notification' };
        break;
      }
      case 'reject': {
        this.rejects += 1;
        this.dirty.counts = true;
        const id = typeof p.device_id === 'string' ? p.device_id : null;
        if (id && this.devices.has(id)) {
          this.log(this.devices.get(id), env);
          this.dirty.devices.add(id);
        }
        break;
      }
      case 'attacker.scored':
      case 'fingerprint.rotated': {
        const uuid = typeof p.attacker_uuid === 'string' ? p.attacker_uuid : lv[1];
        if (!uuid) break;
        let a = this.attackers.get(uuid);
        if (!a) {
          a = { uuid, score: null, rotations: 0, ts: 0 };
          this.attackers.set(uuid, a);
        }
        if (env.event === 'attacker.scored') a.score = num(p.score) ?? a.score;
        else a.rotations += 1;
        a.ts = Math.max(a.ts, ts);
        this.dirty.attackers = true;
        break;
      }
      case 'upload.stored':
      case 'upload.duplicate':
      case 'upload.refused':
        if (this.uploads.apply(env, ts)) this.dirty.uploads = true;
        break;
      default: {
        // Anything else under devices/{id}/ still belongs in that device's log.
        if (lv[0] === 'devices' && lv[1] && this.devices.has(lv[1])) {
          this.log(this.devices.get(lv[1]), env);
          this.dirty.devices.add(lv[1]);
        }
      }
    }
    if (ts > this.lastTs) this.lastTs = ts;
    this.onDirty();
    return toast;
  }

  metrics(env, p, lv, ts) {
    const id = typeof p.device_id === 'string' ? p.device_id : lv[1];
    if (!id) return;
    const d = this.device(id);
    this.log(d, env);
    if (ts < d.lastSeen) return; // an older frame (snapshot after live): keep the newer
    d.cpu = num(p.cpu_percent);
    d.mem = num(p.mem_percent);
    d.disk = num(p.disk_percent);
    d.gpu = num(p.gpu_percent);
    d.deviceTs = num(p.timestamp);
    d.lastSeen = ts;
    if (d.presence === 'offline') d.presence = 'online';
    const h = d.hist;
    const bucket = Math.floor(ts / 1000);
    const last = h.t.length - 1;
    if (last >= 0 && Math.floor(h.t[last] / 1000) === bucket) {
      h.t[last] = ts;
      h.cpu[last] = d.cpu;
      h.mem[last] = d.mem;
      h.disk[last] = d.disk;
    } else {
      h.t.push(ts);
      h.cpu.push(d.cpu);
      h.mem.push(d.mem);
      h.disk.push(d.disk);
    }
    const cutoff = ts - HISTORY_MS;
    let drop = 0;
    while (drop < h.t.length && (h.t[drop] < cutoff || h.t.length - drop > HISTORY_POINTS)) drop += 1;
    if (drop > 0) for (const k of ['t', 'cpu', 'mem', 'disk']) h[k].splice(0, drop);
    this.dirty.devices.add(id);
  }

  counts(now = this.now()) {
    const c = { active: 0, stale: 0, silent: 0 };
    for (const d of this.devices.values()) c[this.stateOf(d, now)] += 1;
    return c;
  }
}
