// Bootstrap that runs inside a sandboxed Node.js function process (no dependencies).
//
// taskorch.functions copies this file into the function's folder and starts it as
// `node bootstrap.js MODE HANDLER FUNCTION_NAME MEMORY_MB FRAME_FD ENTRY` with the folder as cwd.
// It loads ENTRY (index.js as CommonJS, index.mjs as an ES module), answers {"ready": ...}
// once, then (MODE "serve") reads one JSON request per line from stdin and writes one JSON
// response per line to FRAME_FD (a pipe of its own; 1 is stdout):
// {"id", "event", "request_id", "deadline_ms"} -> {"id", "ok": true, "result"} or
// {"id", "ok": false, "error": "TypeError: x", "trace"}. stdout and stderr are the log.
'use strict';

const fs = require('fs');
const path = require('path');
const readline = require('readline');
const { pathToFileURL } = require('url');

const [mode, handlerName, functionName, memoryMb, frameFdArg, entry] = process.argv.slice(2);
const frameFd = Number(frameFdArg);
// A result is at most 6 MB of JSON, AWS Lambda's limit for a response (the same in every runtime).
const MAX_RESULT_BYTES = 6 * 1024 * 1024;
const TOO_LARGE =
  `ResultTooLarge: the result is larger than ${MAX_RESULT_BYTES / 1024 / 1024} MB of JSON ` +
  '(the limit of a function\'s answer): return less, or store it elsewhere and return where';

// libuv makes stdout and stderr non-blocking when they are pipes, so a handler's own
// fs.writeSync(1 or 2, ...) would fail with EAGAIN whenever the log pipe is full: writes to the
// log block instead, as to a file.
for (const stream of [process.stdout, process.stderr]) {
  if (stream._handle && typeof stream._handle.setBlocking === 'function') {
    stream._handle.setBlocking(true);
  }
}
if (frameFd === 1) {
  // Answers on stdout (a build's check): what the handler prints goes to stderr.
  process.stdout.write = process.stderr.write.bind(process.stderr);
}

const sleeper = new Int32Array(new SharedArrayBuffer(4));

// Writes all of `text` to the frame pipe, waiting out EAGAIN (should someone make it
// non-blocking) rather than failing the call.
function writeFrame(text) {
  const data = Buffer.from(text + '\n', 'utf8');
  let offset = 0;
  while (offset < data.length) {
    try {
      offset += fs.writeSync(frameFd, data, offset, data.length - offset);
    } catch (err) {
      if (err.code !== 'EAGAIN') throw err;
      Atomics.wait(sleeper, 0, 0, 1);
    }
  }
}

function send(message) {
  writeFrame(JSON.stringify(message));
}

class ResultTooLarge extends Error {}

// JSON.stringify with a running lower bound of the output's size, checked as it goes: a result
// far over the limit (a 400 MB string) is refused before it is copied, not after. The exact
// size is checked once serialized.
function serialize(value) {
  let total = 0;
  return JSON.stringify(value, function count(key, item) {
    if (item === undefined || typeof item === 'function' || typeof item === 'symbol') return item;
    total += Array.isArray(this) ? 1 : key.length + 4; // a comma, or "key": and a comma
    if (typeof item === 'string') total += item.length + 2;
    else total += 1;
    if (total > MAX_RESULT_BYTES) throw new ResultTooLarge();
    return item;
  });
}

function describe(err) {
  if (err instanceof Error) {
    return err.message ? `${err.name}: ${err.message}` : err.name;
  }
  return `Error: ${String(err)}`;
}

function trace(err) {
  const text = err instanceof Error && err.stack ? err.stack : String(err);
  return text.slice(-8000);
}

async function load() {
  const file = path.join(process.cwd(), entry);
  const mod = entry.endsWith('.mjs') ? await import(pathToFileURL(file).href) : require(file);
  const fn = mod[handlerName];
  if (fn === undefined) {
    throw new TypeError(`${entry} does not export ${JSON.stringify(handlerName)}`);
  }
  if (typeof fn !== 'function') {
    throw new TypeError(`${entry}: export ${JSON.stringify(handlerName)} is not a function`);
  }
  return fn;
}

function context(request) {
  return {
    functionName,
    functionVersion: '$LATEST',
    memoryLimitInMB: memoryMb,
    awsRequestId: request.request_id,
    invokedFunctionArn: '',
    callbackWaitsForEmptyEventLoop: true,
    getRemainingTimeInMillis: () => Math.max(0, request.deadline_ms - Date.now()),
  };
}

function call(fn, event, ctx) {
  if (fn.length >= 3) {
    // Lambda's callback style: handler(event, context, callback).
    return new Promise((resolve, reject) => {
      const done = (err, result) => (err ? reject(err) : resolve(result));
      const returned = fn(event, ctx, done);
      if (returned && typeof returned.then === 'function') returned.then(resolve, reject);
    });
  }
  return fn(event, ctx);
}

async function serve(fn) {
  const lines = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
  for await (const line of lines) {
    const request = JSON.parse(line);
    let reply;
    try {
      const result = await call(fn, request.event, context(request));
      // undefined is not JSON: a handler that returns nothing answers null, as on Lambda.
      reply = `{"id":${JSON.stringify(request.id)},"ok":true,"result":${serialize(result ?? null) ?? 'null'}}`;
      if (Buffer.byteLength(reply, 'utf8') > MAX_RESULT_BYTES) throw new ResultTooLarge();
    } catch (err) {
      const error = err instanceof ResultTooLarge ? TOO_LARGE : describe(err);
      const stack = err instanceof ResultTooLarge ? '' : trace(err);
      reply = JSON.stringify({ id: request.id, ok: false, error, trace: stack });
    }
    writeFrame(reply);
  }
}

async function main() {
  let fn;
  try {
    fn = await load();
  } catch (err) {
    send({ ready: false, error: describe(err), trace: trace(err) });
    process.exitCode = 1;
    return;
  }
  send({ ready: true });
  if (mode === 'serve') await serve(fn);
}

main();
