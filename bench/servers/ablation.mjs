/**
 * Ablation server for hunting the core's hot spots (bench/ablation.mjs): config.variant
 * 'bare' | 'bareBuffer' (body sent as bytes after writeHead) | 'iterate' (oncely's body reader
 * alone) | 'rearm' (read the body with oncely's reader and re-arm
 * it, no engine) | 'capture' (rearm + a no-op Execution-like capture of the response) | 'oncely' | 'oncelyNoTimer' (Engine.callStore's timeout bypassed).
 */
import { createServer } from 'node:http';
import { captureResponse, NodeRequest } from '../../dist/adapters/_node-http.js';
import { withIdempotency } from '../../dist/adapters/node.js';
import { MemoryStore } from '../../dist/index.js';
import { closeServer, listen, runChild } from '../lib/child.mjs';
import { bareHandler, order } from '../lib/handler.mjs';

runChild(async ({ variant }) => {
  let listener;
  if (variant === 'bare') listener = bareHandler;
  else if (variant === 'bareBuffer') {
    // The bare handler, but the body goes out as a Uint8Array after writeHead, as oncely's
    // writeResponse sends replays: head and body become two chunks of one writev.
    listener = (req, res) => {
      const chunks = [];
      req.on('data', (chunk) => chunks.push(chunk));
      req.on('end', () => {
        const body = new TextEncoder().encode(
          JSON.stringify(order(JSON.parse(Buffer.concat(chunks).toString()))),
        );
        res.writeHead(201, { 'content-type': 'application/json', 'content-length': body.byteLength });
        res.end(body);
      });
    };
  } else if (variant === 'iterate') {
    // oncely's body reader (req.iterator + readLimited + re-arm), answering from those bytes
    // without reading the re-armed body again.
    listener = (req, res) => {
      new NodeRequest(req, req).readBody(1 << 20).then((bytes) => {
        const body = JSON.stringify(order(JSON.parse(Buffer.from(bytes).toString())));
        res.writeHead(201, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
        res.end(body);
      });
    };
  } else if (variant === 'rearm') {
    listener = (req, res) => {
      new NodeRequest(req, req).readBody(1 << 20).then(() => bareHandler(req, res));
    };
  } else if (variant === 'capture') {
    const execution = {
      maxResponseBytes: 1 << 20,
      streams: () => false,
      complete: async (response) => response,
      completeWithoutBody: async () => {},
      fail: async () => {},
    };
    listener = (req, res) => {
      new NodeRequest(req, req).readBody(1 << 20).then(() => {
        captureResponse(res, execution);
        bareHandler(req, res);
      });
    };
  } else if (variant === 'oncely') listener = withIdempotency(bareHandler, { store: new MemoryStore() });
  else if (variant === 'oncelyNoTimer') {
    // oncely with Engine.callStore's per-call timeout (setTimeout + Promise.race) bypassed.
    listener = withIdempotency(bareHandler, { store: new MemoryStore() });
    listener.engine.callStore = (_operation, call) => call();
  } else throw new Error(`unknown variant ${variant}`);
  const server = createServer(listener);
  return { listen: () => listen(server), close: () => closeServer(server) };
});
