// A Socket.io 4.8 relay with the relay semantics of the Chatify reference
// server, minus everything that is not transport (no accounts, no store):
//
//   client --42["join", user]------------------------> server   (names the connection)
//   client --451-["send", {to, body: <binary>}] + bin--> server
//   server --451-["message", {from, body: <binary>}] + bin--> the connection named `to`
//
// or, as a MERN chat sends a message (JSON, the envelope as a base64 string):
//
//   client --42["send", {to, body: "<base64>"}]--------> server
//   server --42["message", {from, body: "<base64>"}]----> the connection named `to`
//
// Bodies are Chatify E2EE envelopes, carried as Socket.io binary attachments
// (Buffers) or strings, relayed as they came; the relay never looks inside
// them. This is how a MERN + Socket.io chat (the paper's stack) forwards a
// message to its recipient's socket, measured here by the same load
// generator as the Rust servers.
//
// Usage: node server.js [--port N] [--host H]; prints
// "listening on ws://HOST:PORT" once ready (port 0 picks a free port).

"use strict";

const http = require("node:http");
const { Server } = require("socket.io");

function arg(name, fallback) {
  const i = process.argv.indexOf(name);
  return i > 0 && i + 1 < process.argv.length ? process.argv[i + 1] : fallback;
}

const host = arg("--host", "127.0.0.1");
const port = Number(arg("--port", "0"));
if (!Number.isInteger(port) || port < 0 || port > 65535) {
  console.error(`invalid --port ${arg("--port", "")}`);
  process.exit(2);
}

const httpServer = http.createServer();
const io = new Server(httpServer, {
  transports: ["websocket"],
  // Larger than Chatify's largest frame (256 KiB).
  maxHttpBufferSize: 1 << 20,
  serveClient: false,
});

// user name -> socket (one device per user, as in the harness workload)
const sockets = new Map();

io.on("connection", (socket) => {
  let me = null;
  socket.on("join", (user) => {
    if (typeof user !== "string" || user.length === 0 || user.length > 64) {
      socket.disconnect(true);
      return;
    }
    me = user;
    sockets.set(user, socket);
  });
  socket.on("send", (msg) => {
    if (
      me === null ||
      !msg ||
      typeof msg.to !== "string" ||
      !(Buffer.isBuffer(msg.body) || typeof msg.body === "string")
    ) {
      return;
    }
    const target = sockets.get(msg.to);
    if (target) {
      target.emit("message", { from: me, body: msg.body });
    }
  });
  socket.on("disconnect", () => {
    if (me !== null && sockets.get(me) === socket) {
      sockets.delete(me);
    }
  });
});

httpServer.listen(port, host, () => {
  const a = httpServer.address();
  console.log(`listening on ws://${a.address}:${a.port}`);
});

for (const signal of ["SIGTERM", "SIGINT"]) {
  process.on(signal, () => {
    io.close();
    httpServer.close(() => process.exit(0));
  });
}
