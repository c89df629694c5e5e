// The fleet view: a live table of devices that updates rows in place.
//
// Rows are created once per device and then only their changed cells are
// written, inside the animation frame the store batched for us. Re-sorting
// by a live value moves rows at most once a second, so a busy fleet does not
// shuffle under the reader's eyes; sorting by id never moves existing rows.

import { $, h, setText, setData, prependCapped } from './dom.js';
import { pct, ago, clock } from './format.js';

const COLUMNS = ['cpu', 'mem', 'disk', 'gpu'];
const RESORT_EVERY_MS = 1000;
const FEED_SHOWN = 30;

function barCell(kind) {
  const fill = h('span', { class: 'fill' });
  const value = h('span', { class: 'val' }, '—');
  const td = h('td', { class: `c-${kind}` }, h('span', { class: 'bar' }, fill, value));
  return { td, fill, value, last: undefined };
}

function updateBar(cell, v) {
  if (cell.last === v) return;
  cell.last = v;
  setText(cell.value, pct(v));
  const f = v === null ? 0 : Math.max(0, Math.min(100, v)) / 100;
  cell.fill.style.transform = `scaleX(${f})`;
  setData(cell.td, 'level', v === null ? 'none' : v > 90 ? 'hot' : v > 75 ? 'warm' : 'ok');
}

export class FleetView {
  constructor(store) {
    this.store = store;
    this.body = $('fleet-body');
    this.rows = new Map(); // id → row record
    this.order = []; // ids in DOM order
    this.sortKey = 'id';
    this.sortDir = 1;
    this.filter = '';
    this.lastSort = 0;
    this.needSort = true;
    this.visible = true;

    for (const btn of document.querySelectorAll('#fleet thead button[data-sort]')) {
      btn.addEventListener('click', () => this.sortBy(btn.dataset.sort));
    }
    $('filter').addEventListener('input', (ev) => {
      this.filter = ev.target.value.trim().toLowerCase();
      this.applyFilter();
    });
    this.body.addEventListener('click', (ev) => {
      const tr = ev.target.closest('tr[data-device-id]');
      if (tr && !ev.target.closest('a')) location.hash = `#/device/${encodeURIComponent(tr.dataset.deviceId)}`;
    });
    this.markSort();
  }

  sortBy(key) {
    if (this.sortKey === key) this.sortDir = -this.sortDir;
    else {
      this.sortKey = key;
      this.sortDir = key === 'id' || key === 'state' ? 1 : -1;
    }
    this.markSort();
    this.needSort = true;
    this.resort(true);
  }

  markSort() {
    for (const th of document.querySelectorAll('#fleet thead th')) {
      const key = th.querySelector('button')?.dataset.sort;
      th.setAttribute('aria-sort', key === this.sortKey ? (this.sortDir > 0 ? 'ascending' : 'descending') : 'none');
    }
  }

  row(d) {
    let r = this.rows.get(d.id);
    if (r) return r;
    const link = h('a', { href: `#/device/${encodeURIComponent(d.id)}` }, d.id);
    const cells = Object.fromEntries(COLUMNS.map((k) => [k, barCell(k)]));
    const seen = h('td', { class: 'c-seen' }, '—');
    const state = h('span', { class: 'state' }, '—');
    const tr = h(
      'tr',
      { dataset: { deviceId: d.id } },
      h('td', { class: 'c-id' }, link),
      ...COLUMNS.map((k) => cells[k].td),
      seen,
      h('td', { class: 'c-state' }, state),
    );
    r = { tr, cells, seen, state, stateText: '' };
    this.rows.set(d.id, r);
    tr.hidden = !this.matches(d.id);
    this.needSort = true;
    return r;
  }

  matches(id) {
    return this.filter === '' || id.toLowerCase().includes(this.filter);
  }

  applyFilter() {
    let shown = 0;
    for (const [id, r] of this.rows) {
      const ok = this.matches(id);
      if (r.tr.hidden === ok) r.tr.hidden = !ok;
      if (ok) shown += 1;
    }
    this.showCount(shown);
  }

  showCount(shown) {
    const total = this.rows.size;
    setText($('fleet-count'), shown === total ? `${total} devices` : `${shown} of ${total} devices`);
    $('fleet-empty').hidden = total > 0;
  }

  updateRow(d, now) {
    const r = this.row(d);
    for (const k of COLUMNS) updateBar(r.cells[k], d[k]);
    this.updateAge(d, r, now);
  }

  updateAge(d, r, now) {
    setText(r.seen, Number.isFinite(d.lastSeen) ? ago(now - d.lastSeen) : '—');
    const st = this.store.stateOf(d, now);
    if (r.stateText !== st) {
      r.stateText = st;
      setText(r.state, st);
      setData(r.tr, 'state', st);
      this.needSort ||= this.sortKey === 'state';
    }
  }

  sortValue(d) {
    switch (this.sortKey) {
      case 'seen':
        return d.lastSeen;
      case 'state':
        return { active: 0, stale: 1, silent: 2 }[this.store.stateOf(d)];
      default:
        return d[this.sortKey];
    }
  }

  resort(force = false) {
    const now = performance.now();
    if (!force && now - this.lastSort < RESORT_EVERY_MS) return;
    if (!this.needSort) return;
    this.lastSort = now;
    this.needSort = false;
    const ds = [...this.store.devices.values()];
    const dir = this.sortDir;
    if (this.sortKey === 'id') ds.sort((a, b) => dir * a.id.localeCompare(b.id));
    else {
      ds.sort((a, b) => {
        const va = this.sortValue(a);
        const vb = this.sortValue(b);
        // Missing values sink to the bottom whatever the direction.
        if (va === null || va === undefined) return vb === null || vb === undefined ? a.id.localeCompare(b.id) : 1;
        if (vb === null || vb === undefined) return -1;
        return dir * (va - vb) || a.id.localeCompare(b.id);
      });
    }
    const ids = ds.map((d) => d.id);
    if (ids.length === this.order.length && ids.every((id, i) => id === this.order[i])) return;
    // Move only what must move: walk the wanted order and insert each row
    // before the node currently at its place.
    let cursor = this.body.firstElementChild;
    for (const id of ids) {
      const tr = this.rows.get(id).tr;
      if (tr === cursor) cursor = cursor.nextElementSibling;
      else this.body.insertBefore(tr, cursor);
    }
    this.order = ids;
  }

  // Called once per animation frame with what changed.
  frame(dirty, now) {
    for (const id of dirty.devices) {
      const d = this.store.devices.get(id);
      if (d) this.updateRow(d, now);
    }
    if (dirty.added) {
      this.needSort = true;
      this.resort(true);
      this.applyFilter();
    } else if (dirty.devices.size > 0 && this.sortKey !== 'id') {
      this.needSort = true;
      this.resort();
    }
    if (dirty.alerts) this.renderAlerts();
    if (dirty.notifications) this.renderNotifications();
    if (dirty.attackers) this.renderAttackers();
  }

  // Once a second: ages and states move with time alone.
  tick(now) {
    for (const d of this.store.devices.values()) this.updateAge(d, this.row(d), now);
    this.resort();
  }

  renderAlerts() {
    const list = $('alerts-list');
    const shown = Number(list.dataset.seq || 0);
    for (const a of this.store.alerts) {
      if (a.seq <= shown) continue;
      const link = a.device ? h('a', { href: `#/device/${encodeURIComponent(a.device)}` }, a.device) : null;
      prependCapped(
        list,
        h('li', { class: `lvl-${a.level}` }, h('time', {}, clock(a.ts)), ' ', link, ' ', h('span', { class: 'msg' }, a.text)),
        FEED_SHOWN,
      );
      list.dataset.seq = String(a.seq);
    }
  }

  renderNotifications() {
    const list = $('notifications-list');
    const shown = Number(list.dataset.seq || 0);
    for (const n of this.store.notifications) {
      if (n.seq <= shown) continue;
      prependCapped(
        list,
        h(
          'li',
          { class: `lvl-${n.level}` },
          h('time', {}, clock(n.ts)),
          ' ',
          h('b', {}, n.source),
          ' ',
          h('span', { class: 'msg' }, n.text),
        ),
        FEED_SHOWN,
      );
      list.dataset.seq = String(n.seq);
    }
  }

  renderAttackers() {
    const list = $('attackers-list');
    const items = [...this.store.attackers.values()].sort((a, b) => (b.score ?? -1) - (a.score ?? -1)).slice(0, 50);
    list.replaceChildren(
      ...items.map((a) =>
        h(
          'li',
          { dataset: { attacker: a.uuid } },
          h('a', { href: `#/attacker/${encodeURIComponent(a.uuid)}` }, a.uuid),
          h('span', { class: 'score' }, a.score === null ? '—' : `score ${a.score.toFixed(2)}`),
          a.rotations ? h('span', { class: 'rot' }, `${a.rotations} rotation${a.rotations > 1 ? 's' : ''}`) : null,
        ),
      ),
    );
  }
}
