// Entry point: wires the store, the views, the fleet stream and the router.

import { $, setText, setData } from './dom.js';
import { connLabel } from './format.js';
import { Auth, AuthRequired, WsStream, FLEET_TOPICS, CONFIG_PATH } from './transport.js';
import { Store } from './store.js';
import { FleetView } from './fleet.js';
import { DeviceView } from './device.js';
import { AttackerView } from './attacker.js';
import { UploadsPanel } from './uploads-panel.js';
import { toast } from './toasts.js';

async function loadConfig() {
  try {
    const resp = await fetch(CONFIG_PATH, { cache: 'no-store' });
    if (resp.ok) return await resp.json();
  } catch {
    // Defaults below.
  }
  return {};
}

function setupSignIn(auth, required) {
  const dialog = $('signin');
  const form = $('signin-form');
  const input = $('signin-key');
  const error = $('signin-error');
  const inBtn = $('signin-btn');
  const outBtn = $('signout-btn');
  const refresh = () => {
    const hasKey = auth.key !== '';
    outBtn.hidden = !hasKey;
    inBtn.hidden = hasKey || (!required && auth.serverMode !== 'tickets');
  };
  const open = () => {
    setText(error, '');
    input.value = '';
    if (!dialog.open) dialog.showModal();
    input.focus();
  };
  inBtn.addEventListener('click', open);
  outBtn.addEventListener('click', () => {
    auth.setKey('');
    refresh();
  });
  $('signin-cancel').addEventListener('click', () => dialog.close());
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const key = input.value.trim();
    if (!key) return;
    try {
      // Check the key before the streams use it.
      await auth.ticket(key);
      input.value = '';
      dialog.close();
      auth.setKey(key);
    } catch (err) {
      setText(error, err instanceof AuthRequired ? 'That key was refused.' : `Could not check the key: ${err.message}`);
    }
    refresh();
  });
  refresh();
  return { open, refresh };
}

async function main() {
  const config = await loadConfig();
  const auth = new Auth();
  const store = new Store(config);
  const fleet = new FleetView(store);
  const device = new DeviceView(store);
  const attacker = new AttackerView(auth);
  const uploads = new UploadsPanel(store.uploads);
  const signIn = setupSignIn(auth, config.auth_required === true);

  // One render per animation frame, however many events arrived.
  let queued = false;
  const render = () => {
    queued = false;
    const dirty = store.takeDirty();
    const now = store.now();
    fleet.frame(dirty, now);
    uploads.frame(dirty, now);
    device.frame(dirty, now);
    attacker.frame(now);
    if (dirty.counts || dirty.added || dirty.devices.size) renderCounts();
  };
  const schedule = () => {
    if (!queued) {
      queued = true;
      requestAnimationFrame(render);
    }
  };
  store.onDirty = schedule;
  attacker.onDirty = schedule;

  const renderCounts = () => {
    const c = store.counts();
    setText($('count-active'), String(c.active));
    setText($('count-stale'), String(c.stale));
    setText($('count-silent'), String(c.silent));
    setText($('count-rejects'), String(store.rejects));
  };

  // Connection state, always on screen.
  const conn = $('conn');
  let lastState = { state: 'connecting' };
  const showConn = (s) => {
    lastState = s;
    setData(conn, 'state', s.state);
    setText(conn, connLabel(s));
    if (s.state === 'signin') signIn.open();
    signIn.refresh();
  };

  const ws = new WsStream({
    auth,
    topics: FLEET_TOPICS,
    onState: showConn,
    onSnapshot: (events, { reconnect }) => {
      for (const env of events) {
        const t = store.apply(env, { live: false, reconnect });
        if (t) toast(t);
      }
    },
    onEvent: (env) => {
      const t = store.apply(env, { live: true });
      if (t) toast(t);
    },
    onLagged: (n) => {
      store.lagged += n;
      toast({ level: 'warning', title: 'Fell behind', message: `${n} event(s) were dropped for this page.`, kind: 'lagged' });
    },
    onError: (msg) => toast({ level: 'error', title: 'Stream error', message: msg, kind: 'stream' }),
  });

  // Once a second: ages, states, retry countdowns.
  setInterval(() => {
    const now = store.now();
    if (!$('view-fleet').hidden) {
      fleet.tick(now);
      uploads.tick(now);
    }
    device.tick(now);
    renderCounts();
    if (lastState.state === 'reconnecting') setText(conn, connLabel(lastState));
    if (lastState.state === 'live' && ws.lastMessageAt) {
      const quiet = Date.now() - ws.lastMessageAt;
      setText(conn, quiet > 30000 ? `Live · quiet for ${Math.round(quiet / 1000)}s` : 'Live');
    }
  }, 1000);

  // Router: #/, #/device/{id}, #/attacker/{uuid}.
  const route = () => {
    const parts = location.hash.replace(/^#\/?/, '').split('/');
    let arg = '';
    try {
      arg = decodeURIComponent(parts.slice(1).join('/'));
    } catch {
      arg = '';
    }
    const view = parts[0] === 'device' && arg ? 'device' : parts[0] === 'attacker' && arg ? 'attacker' : 'fleet';
    $('view-fleet').hidden = view !== 'fleet';
    $('view-device').hidden = view !== 'device';
    $('view-attacker').hidden = view !== 'attacker';
    document.body.dataset.view = view;
    if (view === 'device') device.show(arg);
    else device.hide();
    if (view === 'attacker') attacker.show(arg);
    else attacker.hide();
    if (view === 'fleet') fleet.tick(store.now());
    schedule();
  };
  window.addEventListener('hashchange', route);
  $('attacker-open').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const uuid = $('attacker-uuid').value.trim();
    if (uuid) location.hash = `#/attacker/${encodeURIComponent(uuid)}`;
  });
  route();
  ws.start();
  document.body.dataset.ready = 'true';
}

main();
