// Formatting of values for display (pure; returns strings).

export function pct(v) {
  return typeof v === 'number' && Number.isFinite(v) ? `${v.toFixed(1)}%` : '—';
}

export function ago(ms) {
  if (!Number.isFinite(ms)) return '—';
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 60) return `${s}s ago`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m ${s % 60}s ago`;
  const hours = Math.floor(m / 60);
  if (hours < 48) return `${hours}h ${m % 60}m ago`;
  return `${Math.floor(hours / 24)}d ago`;
}

export function clock(ts) {
  if (!Number.isFinite(ts)) return '—';
  const d = new Date(ts);
  const p = (n, w = 2) => String(n).padStart(w, '0');
  return `${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}.${p(d.getMilliseconds(), 3)}`;
}

// Compact one-line JSON, cut to `max` characters.
export function brief(value, max = 240) {
  let text;
  try {
    text = typeof value === 'string' ? value : JSON.stringify(value);
  } catch {
    text = String(value);
  }
  if (text === undefined) text = String(value);
  return text.length > max ? `${text.slice(0, max - 1)}…` : text;
}

// `alerts/{device}/{rule}` → ['alerts', device, rule].
export function levels(topic) {
  return typeof topic === 'string' ? topic.split('/') : [];
}

const LEVELS = new Set(['info', 'success', 'warning', 'error']);

export function level(v, fallback = 'info') {
  const s = typeof v === 'string' ? v.toLowerCase() : '';
  if (LEVELS.has(s)) return s;
  if (s === 'critical' || s === 'fatal') return 'error';
  if (s === 'warn') return 'warning';
  return fallback;
}

// The words for a stream's state report (transport.js `onState`).
export function connLabel(s) {
  switch (s.state) {
    case 'live':
      return 'Live';
    case 'connecting':
      return 'Connecting…';
    case 'reconnecting': {
      const secs = s.retryAt ? Math.max(0, Math.ceil((s.retryAt - Date.now()) / 1000)) : 0;
      return `${s.detail || 'Disconnected'} · retry in ${secs}s`;
    }
    case 'signin':
      return `Sign-in needed: ${s.detail}`;
    case 'failed':
      return s.detail || 'Refused';
    case 'stopped':
      return 'Stopped';
    default:
      return s.detail || s.state;
  }
}

// A size in bytes: `512 B`, `1.5 KiB`, `12.0 MiB`, `3.2 GiB`.
export function bytes(n) {
  if (typeof n !== 'number' || !Number.isFinite(n) || n < 0) return '—';
  if (n < 1024) return `${Math.round(n)} B`;
  const units = ['KiB', 'MiB', 'GiB', 'TiB'];
  let v = n / 1024;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i += 1;
  }
  return `${v.toFixed(1)} ${units[i]}`;
}
