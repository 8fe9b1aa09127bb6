// Preloaded into @modelcontextprotocol/server-everything (`node --require bind_loopback.cjs ...`).
// Why: its streamableHttp transport calls `app.listen(PORT)` with no host, which binds every
// interface; the tests must stay on 127.0.0.1. A listen(port[, callback]) call without a host gets
// 127.0.0.1 added; calls that name a host, a path or an options object pass unchanged.
"use strict";
const net = require("node:net");

const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function listenOnLoopback(...args) {
  const [port, next] = args;
  const portOnly = typeof port === "number" || (typeof port === "string" && /^\d+$/.test(port));
  if (portOnly && typeof next !== "string") {
    return listen.call(this, port, "127.0.0.1", ...args.slice(1));
  }
  return listen.apply(this, args);
};
