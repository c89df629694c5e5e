// The "Uploads" panel: one row per lab host (from `store.uploads`), sorted
// by host id, created once and then only its changed cells written. A host
// whose last upload was refused has its row marked `data-outcome="refused"`.
//
// Hooks for tests: `tr[data-upload-host="{host}"]` with `data-outcome`
// (stored | duplicate | refused) and cells `.u-episode`, `.u-status`
// (`data-http`), `.u-size`, `.u-when`, `.u-stored`, `.u-duplicate`,
// `.u-refused`, `.u-refusal` (`.u-refusal-status`, `.u-refusal-reason`).

import { $, h, setText, setData } from './dom.js';
import { ago, bytes } from './format.js';

const CELLS = ['episode', 'status', 'size', 'when', 'stored', 'duplicate', 'refused'];

export class UploadsPanel {
  constructor(uploads) {
    this.uploads = uploads;
    this.body = $('uploads-body');
    this.rows = new Map(); // host → row record
  }

  row(host) {
    let r = this.rows.get(host);
    if (r) return r;
    const cells = Object.fromEntries(CELLS.map((k) => [k, h('td', { class: `u-${k}` }, '—')]));
    for (const k of ['size', 'stored', 'duplicate', 'refused']) cells[k].classList.add('num');
    const refusalStatus = h('span', { class: 'u-refusal-status' });
    const refusalReason = h('span', { class: 'u-refusal-reason' });
    const tr = h(
      'tr',
      { dataset: { uploadHost: host } },
      h('td', { class: 'u-host c-id' }, host),
      ...CELLS.map((k) => cells[k]),
      h('td', { class: 'u-refusal' }, refusalStatus, ' ', refusalReason),
    );
    r = { tr, cells, refusalStatus, refusalReason };
    this.rows.set(host, r);
    return r;
  }

  update(u, now) {
    const r = this.row(u.host);
    const last = u.last;
    setData(r.tr, 'outcome', last ? last.outcome : 'none');
    setText(r.cells.episode, last?.episode ?? '—');
    setText(r.cells.status, last ? last.status : '—');
    setData(r.cells.status, 'http', last?.httpStatus == null ? '' : String(last.httpStatus));
    setText(r.cells.size, last?.size == null ? '—' : bytes(last.size));
    setText(r.cells.when, last ? ago(now - last.ts) : '—');
    setText(r.cells.stored, String(u.stored));
    setText(r.cells.duplicate, String(u.duplicate));
    setText(r.cells.refused, String(u.refused));
    const refusal = u.lastRefusal;
    const code = refusal?.httpStatus == null ? '' : ` ${refusal.httpStatus}`;
    setText(r.refusalStatus, refusal ? `${refusal.status}${code}` : '—');
    const reason = refusal?.reason ?? '';
    setText(r.refusalReason, reason);
    if (r.refusalReason.title !== reason) r.refusalReason.title = reason;
  }

  // Called once per animation frame with what changed.
  frame(dirty, now) {
    if (!dirty.uploads) return;
    const list = this.uploads.list();
    const wanted = new Set(list.map((u) => u.host));
    for (const [host, r] of this.rows) {
      if (!wanted.has(host)) {
        r.tr.remove();
        this.rows.delete(host);
      }
    }
    // Walk the wanted order, inserting each row before the node at its
    // place: rows already in order are not touched.
    let cursor = this.body.firstElementChild;
    for (const u of list) {
      this.update(u, now);
      const tr = this.rows.get(u.host).tr;
      if (tr === cursor) cursor = cursor.nextElementSibling;
      else this.body.insertBefore(tr, cursor);
    }
    const n = this.rows.size;
    setText($('uploads-count'), n === 1 ? '1 host' : `${n} hosts`);
    $('uploads-empty').hidden = n > 0;
  }

  // Once a second: the ages.
  tick(now) {
    for (const u of this.uploads.hosts.values()) {
      const r = this.rows.get(u.host);
      if (r) setText(r.cells.when, u.last ? ago(now - u.last.ts) : '—');
    }
  }
}
