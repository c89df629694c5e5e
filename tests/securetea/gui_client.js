// The SecureTea GUI's notification client, as its header component does it:
// io(apiRoot), then on 'newmessage' read msg.message. Prints one JSON line
// per thing seen, exits after `count` messages.
// Usage: node gui_client.js <socket.io-client dir> <url> <count>
'use strict';
const [moduleDir, url, count] = process.argv.slice(2);
const loaded = require(moduleDir);
// 2.x exports the function itself; 4.x also has it as `io`.
const io = typeof loaded === 'function' ? loaded : loaded.io;
const want = Number(count);
const seen = [];
const socket = io(url, { reconnection: false });
const print = (line) => process.stdout.write(JSON.stringify(line) + '\n');
// The GUI connects by long-polling, then upgrades to a WebSocket: report
// once on the WebSocket, with the Engine.IO protocol version in use.
let reported = false;
const report = () => {
  const engine = socket.io.engine;
  if (reported || engine.transport.name !== 'websocket') return;
  reported = true;
  print({ connected: true, transport: engine.transport.name, eio: String(engine.transport.query.EIO) });
};
socket.on('connect', () => {
  report();
  socket.io.engine.on('upgrade', report);
});
socket.on('newmessage', (msg) => {
  seen.push(msg);
  print({ newmessage: msg });
  if (seen.length >= want) {
    socket.close();
    process.exit(0);
  }
});
socket.on('connect_error', (e) => {
  print({ connect_error: String(e && e.message) });
  process.exit(2);
});
setTimeout(() => {
  print({ timeout: true });
  process.exit(3);
}, 30000);
