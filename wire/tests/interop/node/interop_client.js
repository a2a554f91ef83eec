// gRPC interop client cases (grpc/grpc doc/interop-test-descriptions.md) driven by
// @grpc/grpc-js against shardlog's stack. Usage: node interop_client.js --port PORT
// Exit 0 when every case passed; prints one line per case.
'use strict';

const path = require('path');

const INSTALL_HINT = 'npm ci --prefix wire/tests/interop/node';
let grpc;
let protoLoader;
try {
  grpc = require('@grpc/grpc-js');
  protoLoader = require('@grpc/proto-loader');
} catch (err) {
  console.error(`MISSING node modules (${err.message}): run \`${INSTALL_HINT}\``);
  process.exit(3);
}

const CASES = [
  'empty_unary', 'large_unary', 'client_streaming', 'server_streaming', 'ping_pong',
  'custom_metadata', 'status_code_and_message', 'unimplemented_method',
];
const CASE_TIMEOUT_MS = 20000;
const REQUEST_SIZES = [27182, 8, 1828, 45904];
const RESPONSE_SIZES = [31415, 9, 2653, 58979];
const ECHO_INITIAL_KEY = 'x-grpc-test-echo-initial';
const ECHO_INITIAL_VALUE = 'test_initial_metadata_value';
const ECHO_TRAILING_KEY = 'x-grpc-test-echo-trailing-bin';
const ECHO_TRAILING_VALUE = Buffer.from([0x0a, 0x0b, 0x0a, 0x0b, 0x0a, 0x0b]);

function check(cond, what) {
  if (!cond) throw new Error(what);
}

function deadline() {
  return { deadline: Date.now() + CASE_TIMEOUT_MS };
}

function zeros(size) {
  return { body: Buffer.alloc(size) };
}

function unary(client, method, request, metadata = new grpc.Metadata()) {
  return new Promise((resolve, reject) => {
    const call = client[method](request, metadata, deadline(), (err, response) => {
      if (err) reject(err); else resolve({ response, call });
    });
    call.on('metadata', (md) => { call.initialMetadata = md; });
    call.on('status', (status) => { call.trailingMetadata = status.metadata; });
  });
}

function collect(call) {
  return new Promise((resolve, reject) => {
    const responses = [];
    call.on('metadata', (md) => { call.initialMetadata = md; });
    call.on('data', (r) => responses.push(r));
    call.on('error', reject);
    call.on('status', (status) => {
      call.trailingMetadata = status.metadata;
      if (status.code === grpc.status.OK) resolve(responses);
    });
  });
}

async function expectCode(promise, code, message) {
  try {
    await promise;
  } catch (err) {
    check(err.code === code, `expected code ${code}, got ${err.code}: ${err.details}`);
    if (message !== undefined) check(err.details === message, `message ${err.details}`);
    return;
  }
  throw new Error(`expected code ${code}, the call succeeded`);
}

function largeRequest() {
  return { response_size: 314159, payload: zeros(271828) };
}

function checkLarge(response) {
  check(response.payload.body.length === 314159, `body ${response.payload.body.length}`);
  check(response.payload.body.every((b) => b === 0), 'body is not all zeros');
}

function outputRequest(sizes, requestSize) {
  const request = { response_parameters: sizes.map((size) => ({ size })) };
  if (requestSize !== undefined) request.payload = zeros(requestSize);
  return request;
}

function checkEcho(call) {
  const initial = call.initialMetadata.get(ECHO_INITIAL_KEY);
  check(initial.length === 1 && initial[0] === ECHO_INITIAL_VALUE, `initial ${initial}`);
  const trailing = call.trailingMetadata.get(ECHO_TRAILING_KEY);
  check(trailing.length === 1 && ECHO_TRAILING_VALUE.equals(trailing[0]), `trailing ${trailing}`);
}

function echoMetadata() {
  const md = new grpc.Metadata();
  md.set(ECHO_INITIAL_KEY, ECHO_INITIAL_VALUE);
  md.set(ECHO_TRAILING_KEY, ECHO_TRAILING_VALUE);
  return md;
}

const cases = {
  async empty_unary(client) {
    const { response } = await unary(client, 'EmptyCall', {});
    check(Object.keys(response).length === 0, 'non-empty response');
  },
  async large_unary(client) {
    checkLarge((await unary(client, 'UnaryCall', largeRequest())).response);
  },
  async client_streaming(client) {
    const response = await new Promise((resolve, reject) => {
      const call = client.StreamingInputCall(deadline(), (err, r) => (err ? reject(err) : resolve(r)));
      for (const size of REQUEST_SIZES) call.write({ payload: zeros(size) });
      call.end();
    });
    check(response.aggregated_payload_size === 74922, `aggregated ${response.aggregated_payload_size}`);
  },
  async server_streaming(client) {
    const responses = await collect(client.StreamingOutputCall(outputRequest(RESPONSE_SIZES), deadline()));
    const sizes = responses.map((r) => r.payload.body.length);
    check(JSON.stringify(sizes) === JSON.stringify(RESPONSE_SIZES), `sizes ${sizes}`);
  },
  async ping_pong(client) {
    const call = client.FullDuplexCall(deadline());
    const pending = [];
    call.on('data', (r) => pending.shift()(r));
    const done = new Promise((resolve, reject) => {
      call.on('error', reject);
      call.on('status', (s) => (s.code === grpc.status.OK ? resolve() : reject(s)));
    });
    for (let i = 0; i < REQUEST_SIZES.length; i += 1) {
      const response = new Promise((resolve) => pending.push(resolve));
      call.write(outputRequest([RESPONSE_SIZES[i]], REQUEST_SIZES[i]));
      const size = (await response).payload.body.length;
      check(size === RESPONSE_SIZES[i], `response ${i} size ${size}`);
    }
    call.end();
    await done;
  },
  async custom_metadata(client) {
    const { response, call } = await unary(client, 'UnaryCall', largeRequest(), echoMetadata());
    checkLarge(response);
    checkEcho(call);
    const duplex = client.FullDuplexCall(echoMetadata(), deadline());
    const responses = collect(duplex);
    duplex.write(outputRequest([314159], 271828));
    duplex.end();
    const sizes = (await responses).map((r) => r.payload.body.length);
    check(sizes.length === 1 && sizes[0] === 314159, `duplex sizes ${sizes}`);
    checkEcho(duplex);
  },
  async status_code_and_message(client) {
    const message = 'test status message';
    const status = { code: 2, message };
    await expectCode(unary(client, 'UnaryCall', { response_status: status }), 2, message);
    const duplex = client.FullDuplexCall(deadline());
    const responses = collect(duplex);
    duplex.write({ response_status: status });
    duplex.end();
    await expectCode(responses, 2, message);
  },
  async unimplemented_method(client) {
    await expectCode(unary(client, 'UnimplementedCall', {}), grpc.status.UNIMPLEMENTED);
  },
};

async function main() {
  const portArg = process.argv.indexOf('--port');
  check(portArg > 0, 'usage: interop_client.js --port PORT');
  const port = process.argv[portArg + 1];
  const protoRoot = path.resolve(__dirname, '..', '..', '..', 'proto');
  const definition = protoLoader.loadSync('grpc/testing/test.proto', {
    includeDirs: [protoRoot], keepCase: true, longs: Number, enums: Number, defaults: true,
  });
  const testing = grpc.loadPackageDefinition(definition).grpc.testing;
  const client = new testing.TestService(`127.0.0.1:${port}`, grpc.credentials.createInsecure());
  let failures = 0;
  for (const name of CASES) {
    const started = Date.now();
    try {
      await cases[name](client);
      console.log(`PASS ${name} (${Date.now() - started} ms)`);
    } catch (err) {
      failures += 1;
      console.log(`FAIL ${name}: ${err && (err.stack || JSON.stringify(err))}`);
    }
  }
  client.close();
  process.exit(failures ? 1 : 0);
}

main();
