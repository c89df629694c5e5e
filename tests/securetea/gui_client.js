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
socket.on('connect', () => {
  // 2.x sets engine.transport late; name whichever transport is in use.
  print({ connected: true, transport: socket.io.engine.transport.name });
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
