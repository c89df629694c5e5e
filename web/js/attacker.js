// The per-attacker view: the SSE stream of /v1/attackers/{uuid}/events as a
// timeline (observations by primitive, score changes, fingerprint rotations).

import { $, h, setText, setData, prependCapped } from './dom.js';
import { clock, brief, levels, connLabel } from './format.js';
import { LineChart } from './chart.js';
import { SseStream, ATTACKER_EVENTS, attackerEventsPath } from './transport.js';


const TIMELINE_SHOWN = 300;
const SEEN_CAP = 5000;
const SCORE_WINDOW_MS = 10 * 60 * 1000;

function num(v) {
  return typeof v === 'number' && Number.isFinite(v) ? v : null;
}

function primitiveOf(env) {
  if (typeof env.payload?.primitive === 'string') return env.payload.primitive;
  const lv = levels(env.topic);
  return lv[2] === 'observation' && lv.length > 3 ? lv.slice(3).join('/') : '';
}

export class AttackerView {
  constructor(auth) {
    this.auth = auth;
    this.uuid = null;
    this.stream = null;
    this.chart = new LineChart($('attacker-chart'), {
      series: [{ key: 'score', label: 'Score', color: '#ff6b6b' }],
      windowMs: SCORE_WINDOW_MS,
      yMax: 1,
      yLabel: (v) => String(v),
    });
    this.dirty = false;
    this.onDirty = () => {};
    this.reset();
  }

  reset() {
    this.seen = new Set();
    this.primitives = new Map(); // primitive → {count, ts}
    this.score = null;
    this.rotations = 0;
    this.observations = 0;
    this.scores = { t: [], score: [] };
    this.pending = []; // envelopes not yet on screen
    $('attacker-timeline').replaceChildren();
    $('primitives-body').replaceChildren();
  }

  show(uuid) {
    if (this.uuid === uuid && this.stream) return;
    this.hide();
    this.uuid = uuid;
    this.reset();
    setText($('attacker-title'), uuid);
    this.stream = new SseStream({
      auth: this.auth,
      path: attackerEventsPath(uuid),
      events: ATTACKER_EVENTS,
      onState: (s) => {
        const el = $('attacker-conn');
        setData(el, 'state', s.state);
        setText(el, connLabel(s));
      },
      onSnapshot: (events, { reset }) => {
        if (reset) this.reset();
        for (const env of events) this.add(env);
      },
      onEvent: (env) => this.add(env),
      onLagged: (n) => this.note(`${n} event(s) dropped: this page fell behind`),
      onError: (msg) => this.note(`Stream error: ${msg}`),
    });
    this.stream.start();
  }

  hide() {
    this.stream?.destroy();
    this.stream = null;
    this.uuid = null;
  }

  note(text) {
    prependCapped($('attacker-timeline'), h('li', { class: 'note' }, text), TIMELINE_SHOWN);
  }

  add(env) {
    if (typeof env.id === 'string') {
      if (this.seen.has(env.id)) return;
      this.seen.add(env.id);
      if (this.seen.size > SEEN_CAP) this.seen.delete(this.seen.values().next().value);
    }
    const ts = num(env.ts) ?? Date.now();
    if (env.event === 'observation') {
      this.observations += 1;
      const p = primitiveOf(env) || '(none)';
      const entry = this.primitives.get(p) ?? { count: 0, ts: 0 };
      entry.count += 1;
      entry.ts = Math.max(entry.ts, ts);
      this.primitives.set(p, entry);
    } else if (env.event === 'attacker.scored') {
      const s = num(env.payload?.score);
      if (s !== null) {
        this.score = s;
        this.scores.t.push(ts);
        this.scores.score.push(s);
        if (this.scores.t.length > 2000) {
          this.scores.t.shift();
          this.scores.score.shift();
        }
      }
    } else if (env.event === 'fingerprint.rotated') {
      this.rotations += 1;
    }
    this.pending.push(env);
    this.dirty = true;
    this.onDirty();
  }

  frame(now) {
    if (!this.dirty || this.uuid === null) return;
    this.dirty = false;
    const timeline = $('attacker-timeline');
    for (const env of this.pending) {
      const kind = env.event === 'observation' ? 'observation' : env.event === 'attacker.scored' ? 'score' : 'rotation';
      const label =
        kind === 'observation'
          ? primitiveOf(env) || 'observation'
          : kind === 'score'
            ? `score ${num(env.payload?.score)?.toFixed(2) ?? '?'}`
            : 'fingerprint rotated';
      prependCapped(
        timeline,
        h(
          'li',
          { class: `k-${kind}`, dataset: { event: env.event, topic: env.topic } },
          h('time', {}, clock(env.ts)),
          h('span', { class: 'ev' }, label),
          h('code', {}, brief(env.payload, 400)),
        ),
        TIMELINE_SHOWN,
      );
    }
    this.pending = [];
    setText($('attacker-score'), this.score === null ? '—' : this.score.toFixed(2));
    setText($('attacker-rotations'), String(this.rotations));
    setText($('attacker-observations'), String(this.observations));
    const rows = [...this.primitives.entries()].sort((a, b) => b[1].count - a[1].count);
    $('primitives-body').replaceChildren(
      ...rows.map(([p, e]) => h('tr', {}, h('td', {}, p), h('td', { class: 'num' }, String(e.count)), h('td', {}, clock(e.ts)))),
    );
    const yMax = Math.max(1, ...this.scores.score.map((s) => Math.ceil(s)));
    this.chart.draw(this.scores, now, yMax);
  }
}
