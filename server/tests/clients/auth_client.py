"""Checks shardlog's auth answers with stock Python grpcio (the C-core client).

Usage: auth_client.py PORT PROTO_ROOT
Tokens come from the environment (never argv): SHARDLOG_ALICE_TOKEN (may
produce to alice.*), SHARDLOG_COUNTED_TOKEN (limited to a few requests/s on
limited.*). Prints "python auth ok".
"""

import os
import sys
import tempfile
import time

import grpc
from grpc_tools import protoc


def load_stubs(proto_root):
    out = tempfile.mkdtemp(prefix="shardlog-py-auth-")
    args = ["protoc", f"-I{proto_root}", f"--python_out={out}", f"--grpc_python_out={out}",
            "shardlog/v1/log.proto"]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    sys.path.insert(0, out)
    from shardlog.v1 import log_pb2, log_pb2_grpc  # noqa: E402
    return log_pb2, log_pb2_grpc


def expect_error(call, code):
    try:
        call()
    except grpc.RpcError as error:
        assert error.code() == code, f"expected {code}, got {error.code()}: {error.details()}"
        return error
    raise AssertionError(f"expected {code}, call succeeded")


def bearer(token):
    return (("authorization", f"Bearer {token}"),)


def main():
    port, proto_root = sys.argv[1], sys.argv[2]
    alice_token = os.environ["SHARDLOG_ALICE_TOKEN"]
    counted_token = os.environ["SHARDLOG_COUNTED_TOKEN"]
    pb, rpc = load_stubs(proto_root)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    grpc.channel_ready_future(channel).result(timeout=10)
    log = rpc.LogStub(channel)

    # Health needs no token (load balancers); SERVING is field 1 = 1.
    check = channel.unary_unary("/grpc.health.v1.Health/Check")
    assert check(b"", timeout=10) == b"\x08\x01"

    error = expect_error(lambda: log.ListTopics(pb.ListTopicsRequest(), timeout=10),
                         grpc.StatusCode.UNAUTHENTICATED)
    assert "missing credentials" in error.details(), error.details()
    error = expect_error(
        lambda: log.ListTopics(pb.ListTopicsRequest(), metadata=bearer("not-a-known-token"),
                               timeout=10),
        grpc.StatusCode.UNAUTHENTICATED)
    assert "not-a-known-token" not in error.details(), error.details()

    record = pb.Record(value=b"x", timestamp_ms=1_700_000_000_000)
    log.Produce(pb.ProduceRequest(topic="alice.own", partition=0, records=[record]),
                metadata=bearer(alice_token), timeout=10)
    expect_error(lambda: log.Produce(pb.ProduceRequest(topic="bob.own", partition=0,
                                                       records=[record]),
                                     metadata=bearer(alice_token), timeout=10),
                 grpc.StatusCode.PERMISSION_DENIED)

    # Over the request rate: RESOURCE_EXHAUSTED with the retry-after-ms trailer.
    request = pb.ProduceRequest(topic="limited.requests", partition=0, records=[record])
    throttled = None
    for _ in range(40):
        try:
            log.Produce(request, metadata=bearer(counted_token), timeout=10)
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error
            throttled = error
            break
    assert throttled is not None, "40 quick calls stayed within a few requests/s"
    trailers = dict(throttled.trailing_metadata())
    retry_after_ms = int(trailers["retry-after-ms"])
    assert 0 < retry_after_ms <= 60_000, trailers
    assert f"retry after {retry_after_ms} ms" in throttled.details(), throttled.details()
    time.sleep(retry_after_ms / 1000)
    log.Produce(request, metadata=bearer(counted_token), timeout=10)
    print("python auth ok")


if __name__ == "__main__":
    main()
