// An HTTP server that holds its state in memory only, as most Node.js services do: each
// request increments a counter; the reply says the count, when this process started and its
// pid. A restore keeps all three; a fresh start would begin again at 1 with a new start time.
"use strict";
const http = require("http");

const started = Date.now();
let hits = 0;
const server = http.createServer((req, res) => {
  hits += 1;
  res.setHeader("Content-Type", "application/json");
  res.end(JSON.stringify({ hits, started, pid: process.pid }) + "\n");
});
server.listen(8080, "127.0.0.1", () => {
  console.log(`listening pid ${process.pid}`);
});
