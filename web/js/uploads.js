// Fleet uploads (pure): per lab host, its last upload, counts of stored /
// duplicate / refused uploads and its last refusal, from the `uploads/{host}`
// events edgebus publishes once per upload attempt (`upload.stored`,
// `upload.duplicate`, `upload.refused`; no client can publish under
// `uploads/`). A snapshot holds only each host's latest event, so the counts
// are of the events this page has seen.
//
// Bounded: at most `cap` hosts; past it, the host heard from longest ago is
// forgotten. Every string kept is cut to TEXT_CAP characters.

export const UPLOAD_HOSTS_CAP = 200;
export const TEXT_CAP = 200;

// Event name → outcome.
export const UPLOAD_OUTCOMES = {
  'upload.stored': 'stored',
  'upload.duplicate': 'duplicate',
  'upload.refused': 'refused',
};

// The host id rule: what `uploads/{host}` may carry.
const HOST_ID = /^(?!\.)[A-Za-z0-9._-]{1,64}$/;

function text(v) {
  if (typeof v !== 'string' || v === '') return null;
  return v.length > TEXT_CAP ? `${v.slice(0, TEXT_CAP - 1)}…` : v;
}

function count(v) {
  return typeof v === 'number' && Number.isSafeInteger(v) && v >= 0 ? v : null;
}

function httpStatus(v) {
  return Number.isInteger(v) && v >= 100 && v <= 599 ? v : null;
}

// The host of an `uploads/{host}` topic, or null.
export function uploadHost(topic) {
  if (typeof topic !== 'string' || !topic.startsWith('uploads/')) return null;
  const host = topic.slice('uploads/'.length);
  return HOST_ID.test(host) ? host : null;
}

export class Uploads {
  constructor(cap = UPLOAD_HOSTS_CAP) {
    this.cap = cap;
    this.hosts = new Map(); // host → record
    this.forgotten = 0; // hosts dropped at the cap
  }

  // Applies one envelope received at server time `ts`; returns whether it
  // was an upload event (false: not one, or it names no host).
  apply(env, ts) {
    const outcome = UPLOAD_OUTCOMES[env?.event];
    const host = uploadHost(env?.topic);
    if (!outcome || !host) return false;
    const p = env.payload && typeof env.payload === 'object' ? env.payload : {};
    let r = this.hosts.get(host);
    if (!r) {
      r = { host, stored: 0, duplicate: 0, refused: 0, last: null, lastRefusal: null, ts: -Infinity };
      this.hosts.set(host, r);
    }
    r[outcome] += 1;
    const attempt = {
      outcome,
      episode: text(p.episode_id),
      status: text(p.status) ?? outcome,
      httpStatus: httpStatus(p.http_status),
      size: count(p.size_bytes),
      reason: text(p.reason),
      ts,
    };
    // An older event (a snapshot after live ones) counts, but never hides
    // a newer one.
    if (!r.last || ts >= r.last.ts) r.last = attempt;
    if (outcome === 'refused' && (!r.lastRefusal || ts >= r.lastRefusal.ts)) r.lastRefusal = attempt;
    r.ts = Math.max(r.ts, ts);
    this.trim();
    return true;
  }

  trim() {
    while (this.hosts.size > this.cap) {
      let oldest = null;
      for (const r of this.hosts.values()) if (!oldest || r.ts < oldest.ts) oldest = r;
      this.hosts.delete(oldest.host);
      this.forgotten += 1;
    }
  }

  // The hosts sorted by id.
  list() {
    return [...this.hosts.values()].sort((a, b) => (a.host < b.host ? -1 : a.host > b.host ? 1 : 0));
  }
}
