// Drives shardlog's Log service with stock Node @grpc/grpc-js.
// Usage: node log_client.js PORT PROTO_ROOT TOPIC
// Reads back what the Python client wrote to TOPIC (byte-identical), then
// produces and fetches its own records; prints "node ok".
'use strict';

const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const assert = require('assert');
const path = require('path');

const [port, protoRoot, topic] = process.argv.slice(2);
const definition = protoLoader.loadSync(path.join(protoRoot, 'shardlog/v1/log.proto'), {
  keepCase: true, longs: Number, defaults: true, includeDirs: [protoRoot],
});
const { Log } = grpc.loadPackageDefinition(definition).shardlog.v1;
const log = new Log(`127.0.0.1:${port}`, grpc.credentials.createInsecure());
const deadline = () => ({ deadline: Date.now() + 10000 });
const call = (method, request) => new Promise((resolve, reject) =>
  log[method](request, deadline(), (error, response) => (error ? reject(error) : resolve(response))));

function valueOf(i) {
  const bytes = Buffer.alloc((i * 13) % 700);
  for (let j = 0; j < bytes.length; j++) bytes[j] = (i * 7 + j) % 256;
  return bytes;
}

async function fetchAll(partition) {
  const records = [];
  let offset = 0;
  for (;;) {
    const response = await call('Fetch', { topic, partition, offset });
    if (response.records.length === 0) return records;
    records.push(...response.records);
    offset = response.next_offset;
  }
}

async function main() {
  const written = await fetchAll(1);
  assert.strictEqual(written.length, 60);
  written.forEach((record, i) => {
    assert.strictEqual(record.offset, i);
    assert.ok(Buffer.from(record.value).equals(valueOf(i)), `python record ${i} differs`);
    assert.strictEqual(Buffer.from(record.key).toString(), `k${i}`);
  });

  const mine = Array.from({ length: 30 }, (_, i) => ({
    key: Buffer.from(`node-${i}`), value: valueOf(i + 1000), timestamp_ms: 1700000000000 + i,
    headers: [{ key: 'lang', value: Buffer.from('js') }],
  }));
  const produced = await call('Produce', { topic, partition: 0, records: mine });
  const base = produced.base_offset;
  assert.strictEqual(produced.record_count, 30);
  const stored = (await fetchAll(0)).filter((r) => r.offset >= base && r.offset < base + 30);
  assert.strictEqual(stored.length, 30);
  stored.forEach((record, i) => {
    assert.ok(Buffer.from(record.value).equals(mine[i].value), `node record ${i} differs`);
    assert.strictEqual(record.headers[0].key, 'lang');
  });

  await assert.rejects(call('Produce', { topic: 'no-such-topic', records: mine.slice(0, 1) }),
    (error) => error.code === grpc.status.NOT_FOUND);
  await assert.rejects(call('Fetch', { topic, partition: 5, offset: 0 }),
    (error) => error.code === grpc.status.NOT_FOUND);
  log.close();
  console.log('node ok');
}

main().catch((error) => { console.error(error); process.exit(1); });
