// Toasts: short-lived messages in a corner, coloured by level. Text only.

import { $, h } from './dom.js';

const MAX_SHOWN = 5;
const LIFETIME_MS = { info: 6000, success: 5000, warning: 9000, error: 12000 };

export function toast({ level = 'info', title = '', message = '', kind = 'notification' }) {
  const box = $('toasts');
  const close = h('button', { type: 'button', class: 'x', title: 'Dismiss', 'aria-label': 'Dismiss' }, '×');
  const el = h(
    'div',
    { class: `toast lvl-${level}`, role: level === 'error' ? 'alert' : 'status', dataset: { kind, level } },
    h('div', { class: 'toast-title' }, title),
    h('div', { class: 'toast-msg' }, message),
    close,
  );
  let timer = 0;
  const remove = () => {
    clearTimeout(timer);
    el.remove();
  };
  const arm = () => {
    clearTimeout(timer);
    timer = setTimeout(remove, LIFETIME_MS[level] ?? 6000);
  };
  close.addEventListener('click', remove);
  // Hovering keeps a toast up long enough to read.
  el.addEventListener('mouseenter', () => clearTimeout(timer));
  el.addEventListener('mouseleave', arm);
  box.prepend(el);
  while (box.childElementCount > MAX_SHOWN) box.lastElementChild.remove();
  arm();
  return el;
}
