"""Connects stock Python grpcio (its own TLS stack, BoringSSL) to shardlog's
TLS listener and checks the Log service answers, or that the server refuses.

Usage: tls_client.py PORT PROTO_ROOT CA_PEM CERT_PEM|- KEY_PEM|- TOPIC ok|refused
With CERT/KEY the client presents a certificate (mTLS). Prints "tls client ok"
or "tls client refused" when the outcome is the expected one.
"""

import sys
import tempfile

import grpc
from grpc_tools import protoc


def load_stubs(proto_root):
    out = tempfile.mkdtemp(prefix="shardlog-tls-py-")
    args = ["protoc", f"-I{proto_root}", f"--python_out={out}", f"--grpc_python_out={out}",
            "shardlog/v1/log.proto"]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    sys.path.insert(0, out)
    from shardlog.v1 import log_pb2, log_pb2_grpc  # noqa: E402
    return log_pb2, log_pb2_grpc


def read(path):
    if path == "-":
        return None
    with open(path, "rb") as file:
        return file.read()


def main():
    port, proto_root, ca, cert, key, topic, expect = sys.argv[1:8]
    pb, rpc = load_stubs(proto_root)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=read(ca), private_key=read(key), certificate_chain=read(cert))
    channel = grpc.secure_channel(f"127.0.0.1:{port}", credentials)
    log = rpc.LogStub(channel)
    try:
        log.CreateTopic(pb.CreateTopicRequest(topic=topic, partition_count=1), timeout=10)
        response = log.Produce(pb.ProduceRequest(
            topic=topic, partition=0, records=[pb.Record(key=b"k", value=b"over tls")]), timeout=10)
        assert response.record_count == 1, response
        fetched = log.Fetch(pb.FetchRequest(topic=topic, partition=0, offset=0), timeout=10)
        assert [r.value for r in fetched.records] == [b"over tls"], fetched
        outcome = "ok"
    except grpc.RpcError as error:
        if expect == "ok":
            raise
        assert error.code() == grpc.StatusCode.UNAVAILABLE, (error.code(), error.details())
        outcome = "refused"
    assert outcome == expect, f"expected {expect}, got {outcome}"
    print(f"tls client {outcome}")


if __name__ == "__main__":
    main()
