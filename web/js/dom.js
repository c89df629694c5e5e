// DOM helpers. Text only: every string reaches the page through
// `textContent` or a text node, never as markup (the CSP's Trusted Types
// requirement makes any string-to-markup assignment throw anyway).

export function $(id) {
  const el = document.getElementById(id);
  if (!el) throw new Error(`missing #${id}`);
  return el;
}

// h('li', {class: 'x', dataset: {id}, title, on: {click}}, 'text', child)
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (v === undefined || v === null) continue;
    if (k === 'class') el.className = v;
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else if (k === 'on') for (const [ev, fn] of Object.entries(v)) el.addEventListener(ev, fn);
    else if (k === 'text') el.textContent = v;
    else if (k === 'href' || k === 'title' || k === 'type' || k === 'hidden') el[k] = v;
    else el.setAttribute(k, String(v));
  }
  for (const c of children) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

// Sets text only when it changed: a write of the same text still costs a
// style recalculation in some engines.
export function setText(el, text) {
  if (el.textContent !== text) el.textContent = text;
}

export function setData(el, key, value) {
  if (el.dataset[key] !== value) el.dataset[key] = value;
}

// Prepends `item` to a list, dropping the oldest beyond `cap`.
export function prependCapped(list, item, cap) {
  list.prepend(item);
  while (list.childElementCount > cap) list.lastElementChild.remove();
}
