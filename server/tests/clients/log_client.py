"""Drives shardlog's Log service with stock Python grpcio (the C-core client).

Usage: log_client.py PORT PROTO_ROOT TOPIC
Produces deterministic records to TOPIC, fetches them back byte-identical,
checks error codes and a Subscribe, and prints "python ok".
Stubs are generated at run time with grpc_tools.protoc (nothing committed).
"""

import sys
import tempfile

import grpc
from grpc_tools import protoc


def load_stubs(proto_root):
    out = tempfile.mkdtemp(prefix="shardlog-py-")
    args = ["protoc", f"-I{proto_root}", f"--python_out={out}", f"--grpc_python_out={out}",
            "shardlog/v1/log.proto"]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    sys.path.insert(0, out)
    from shardlog.v1 import log_pb2, log_pb2_grpc  # noqa: E402
    return log_pb2, log_pb2_grpc


def value_of(i):
    """The value of record i: every byte value appears, lengths vary."""
    return bytes((i * 7 + j) % 256 for j in range(i * 13 % 700))


def expect_code(call, code):
    try:
        call()
    except grpc.RpcError as error:
        assert error.code() == code, f"expected {code}, got {error.code()}: {error.details()}"
        return error.details()
    raise AssertionError(f"expected {code}, call succeeded")


def main():
    port, proto_root, topic = sys.argv[1], sys.argv[2], sys.argv[3]
    pb, rpc = load_stubs(proto_root)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    grpc.channel_ready_future(channel).result(timeout=10)
    log = rpc.LogStub(channel)

    log.CreateTopic(pb.CreateTopicRequest(topic=topic, partition_count=2), timeout=10)
    records = [
        pb.Record(key=f"k{i}".encode(), value=value_of(i), timestamp_ms=1_700_000_000_000 + i,
                  headers=[pb.Header(key="source", value=bytes([i % 256, 0, 255]))])
        for i in range(60)
    ]
    for start in range(0, 60, 20):
        response = log.Produce(pb.ProduceRequest(topic=topic, partition=1,
                                                 records=records[start:start + 20]), timeout=10)
        assert (response.partition, response.base_offset, response.record_count) == (1, start, 20), response

    fetched, offset = [], 0
    while True:
        response = log.Fetch(pb.FetchRequest(topic=topic, partition=1, offset=offset), timeout=10)
        if not response.records:
            break
        fetched.extend(response.records)
        offset = response.next_offset
    assert len(fetched) == 60, len(fetched)
    for i, (got, sent) in enumerate(zip(fetched, records)):
        assert got.offset == i
        assert got.key == sent.key and got.value == sent.value, f"record {i} differs"
        assert got.timestamp_ms == sent.timestamp_ms
        assert list(got.headers) == list(sent.headers)

    expect_code(lambda: log.Produce(pb.ProduceRequest(topic="no-such-topic", records=records[:1]), timeout=10),
                grpc.StatusCode.NOT_FOUND)
    expect_code(lambda: log.Produce(pb.ProduceRequest(topic=topic, partition=0), timeout=10),
                grpc.StatusCode.INVALID_ARGUMENT)
    expect_code(lambda: log.Fetch(pb.FetchRequest(topic=topic, partition=1, offset=1000), timeout=10),
                grpc.StatusCode.OUT_OF_RANGE)
    expect_code(lambda: log.CreateTopic(pb.CreateTopicRequest(topic="../etc", partition_count=1), timeout=10),
                grpc.StatusCode.INVALID_ARGUMENT)

    stream = log.Subscribe(pb.SubscribeRequest(topic=topic, partition=1, offset=55), timeout=10)
    first = next(stream)
    assert first.records[0].offset == 55 and first.records[0].value == value_of(55)
    stream.cancel()

    produced = log.ProduceStream(iter([pb.ProduceRequest(topic=topic, partition=0, records=[r])
                                       for r in records[:10]]), timeout=10)
    assert [r.base_offset for r in produced] == list(range(10))
    summary = log.Append(iter([pb.ProduceRequest(topic=topic, partition=0, records=records[:5])] * 4), timeout=10)
    assert (summary.request_count, summary.record_count) == (4, 20), summary
    print("python ok")


if __name__ == "__main__":
    main()
