// The per-device view: live chart of CPU/RAM/disk, the device's alerts and
// its raw event log.

import { $, h, setText, setData, prependCapped } from './dom.js';
import { pct, ago, clock, brief } from './format.js';
import { LineChart } from './chart.js';
import { HISTORY_MS } from './store.js';

const LOG_SHOWN = 200;
const CHART_WINDOW_MS = Math.min(HISTORY_MS, 5 * 60 * 1000);

export const SERIES = [
  { key: 'cpu', label: 'CPU', color: '#5aa9ff' },
  { key: 'mem', label: 'RAM', color: '#c38cff' },
  { key: 'disk', label: 'Disk', color: '#ffb454' },
];

export class DeviceView {
  constructor(store) {
    this.store = store;
    this.id = null;
    this.chart = new LineChart($('device-chart'), { series: SERIES, windowMs: CHART_WINDOW_MS });
    this.logSeq = 0;
    this.alertSeq = 0;
    const legend = $('device-legend');
    legend.replaceChildren(
      ...SERIES.map((s) => h('span', { class: `key key-${s.key}` }, h('i', {}), s.label)),
    );
  }

  show(id) {
    this.id = id;
    this.logSeq = 0;
    this.alertSeq = 0;
    setText($('device-title'), id);
    $('device-log').replaceChildren();
    $('device-alerts').replaceChildren();
    this.render(this.store.now());
  }

  hide() {
    this.id = null;
  }

  frame(dirty, now) {
    if (this.id !== null && dirty.devices.has(this.id)) this.render(now);
  }

  tick(now) {
    if (this.id !== null) this.render(now);
  }

  render(now) {
    const d = this.store.devices.get(this.id);
    const known = Boolean(d);
    $('device-unknown').hidden = known;
    if (!d) {
      setText($('device-state'), 'unknown');
      setData($('device-state'), 'state', 'unknown');
      this.chart.draw({ t: [] }, now);
      return;
    }
    const st = this.store.stateOf(d, now);
    setText($('device-state'), st);
    setData($('device-state'), 'state', st);
    setText($('device-cpu'), pct(d.cpu));
    setText($('device-mem'), pct(d.mem));
    setText($('device-disk'), pct(d.disk));
    setText($('device-gpu'), pct(d.gpu));
    setText($('device-seen'), Number.isFinite(d.lastSeen) ? ago(now - d.lastSeen) : '—');
    this.chart.draw(d.hist, now);

    const alerts = $('device-alerts');
    for (const a of d.alerts) {
      if (a.seq <= this.alertSeq) continue;
      prependCapped(
        alerts,
        h('li', { class: `lvl-${a.level}` }, h('time', {}, clock(a.ts)), ' ', h('span', { class: 'msg' }, a.text)),
        LOG_SHOWN,
      );
      this.alertSeq = a.seq;
    }
    $('device-alerts-empty').hidden = d.alerts.length > 0;

    const log = $('device-log');
    for (const entry of d.log) {
      if (entry.seq <= this.logSeq) continue;
      const env = entry.env;
      prependCapped(
        log,
        h(
          'li',
          { dataset: { event: env.event } },
          h('time', {}, clock(env.ts)),
          h('span', { class: 'ev' }, env.event),
          h('code', {}, brief(env.payload, 400)),
        ),
        LOG_SHOWN,
      );
      this.logSeq = entry.seq;
    }
  }
}
