// Connects stock Node @grpc/grpc-js (Node's OpenSSL) to shardlog's TLS
// listener and checks the Log service answers, or that the server refuses.
// Usage: node tls_client.js PORT PROTO_ROOT CA_PEM CERT_PEM|- KEY_PEM|- TOPIC ok|refused
// With CERT/KEY the client presents a certificate (mTLS). Prints
// "tls client ok" or "tls client refused" when the outcome is the expected one.
'use strict';

const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const assert = require('assert');
const fs = require('fs');
const path = require('path');

const [port, protoRoot, ca, cert, key, topic, expect] = process.argv.slice(2);
const read = (file) => (file === '-' ? null : fs.readFileSync(file));
const definition = protoLoader.loadSync(path.join(protoRoot, 'shardlog/v1/log.proto'), {
  keepCase: true, longs: Number, defaults: true, includeDirs: [protoRoot],
});
const { Log } = grpc.loadPackageDefinition(definition).shardlog.v1;
const credentials = grpc.credentials.createSsl(read(ca), read(key), read(cert));
const log = new Log(`127.0.0.1:${port}`, credentials);
const call = (method, request) => new Promise((resolve, reject) =>
  log[method](request, { deadline: Date.now() + 10000 },
    (error, response) => (error ? reject(error) : resolve(response))));

async function main() {
  let outcome;
  try {
    await call('CreateTopic', { topic, partition_count: 1 });
    const produced = await call('Produce', {
      topic, partition: 0, records: [{ key: Buffer.from('k'), value: Buffer.from('over tls') }],
    });
    assert.strictEqual(produced.record_count, 1);
    const fetched = await call('Fetch', { topic, partition: 0, offset: 0 });
    assert.deepStrictEqual(fetched.records.map((r) => Buffer.from(r.value).toString()), ['over tls']);
    outcome = 'ok';
  } catch (error) {
    if (expect === 'ok' || error.code === undefined) throw error;
    assert.strictEqual(error.code, grpc.status.UNAVAILABLE, `${error.code}: ${error.details}`);
    outcome = 'refused';
  }
  assert.strictEqual(outcome, expect, `expected ${expect}, got ${outcome}`);
  console.log(`tls client ${outcome}`);
  log.close();
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
