// Bootstrap that runs inside a sandboxed Node.js function process (no dependencies).
//
// taskorch.functions copies this file into the function's folder and starts it as
// `node bootstrap.js MODE HANDLER FUNCTION_NAME MEMORY_MB ENTRY` with the folder as cwd.
// It loads ENTRY (index.js as CommonJS, index.mjs as an ES module), answers {"ready": ...}
// once, then (MODE "serve") reads one JSON request per line from stdin and writes one JSON
// response per line to stdout: {"id", "event", "request_id", "deadline_ms"} ->
// {"id", "ok": true, "result", "cpu_s"} or {"id", "ok": false, "error": "TypeError: x", "trace"}.
'use strict';

const path = require('path');
const readline = require('readline');
const { pathToFileURL } = require('url');

const [mode, handlerName, functionName, memoryMb, entry] = process.argv.slice(2);

// The protocol owns stdout. Everything the handler prints (console.log writes through
// process.stdout.write) is sent to stderr, which the host keeps as the function's log.
const protocolWrite = process.stdout.write.bind(process.stdout);
process.stdout.write = process.stderr.write.bind(process.stderr);

function send(message) {
  protocolWrite(JSON.stringify(message) + '\n');
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

function cpuSeconds() {
  const usage = process.cpuUsage();
  return (usage.user + usage.system) / 1e6;
}

async function serve(fn) {
  const lines = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
  for await (const line of lines) {
    const request = JSON.parse(line);
    let reply;
    try {
      const result = await call(fn, request.event, context(request));
      // undefined is not JSON: a handler that returns nothing answers null, as on Lambda.
      reply = JSON.stringify({ id: request.id, ok: true, result: result ?? null, cpu_s: cpuSeconds() });
    } catch (err) {
      reply = JSON.stringify({ id: request.id, ok: false, error: describe(err), trace: trace(err) });
    }
    protocolWrite(reply + '\n');
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
