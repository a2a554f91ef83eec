"""gRPC interop client cases (grpc/grpc doc/interop-test-descriptions.md) driven by grpcio.

Usage: interop_client.py --port PORT [--cases a,b,c]
Exit 0 when every case passed; prints one line per case.
"""

import argparse
import sys
import time

import common

common.require_modules()

import grpc  # noqa: E402

CASES = [
    "empty_unary", "large_unary", "client_streaming", "server_streaming", "ping_pong",
    "empty_stream", "custom_metadata", "status_code_and_message", "special_status_message",
    "unimplemented_method", "unimplemented_service", "cancel_after_begin",
    "cancel_after_first_response", "timeout_on_sleeping_server", "client_compressed_unary",
    "server_compressed_unary",
    # Not in the interop descriptions: the rest of TestService's contract.
    "half_duplex", "streaming_interval",
]
# Seconds a single case may take before grpcio gives up on it.
CASE_TIMEOUT_S = 20

REQUEST_SIZES = [27182, 8, 1828, 45904]
RESPONSE_SIZES = [31415, 9, 2653, 58979]
ECHO_INITIAL_KEY = "x-grpc-test-echo-initial"
ECHO_INITIAL_VALUE = "test_initial_metadata_value"
ECHO_TRAILING_KEY = "x-grpc-test-echo-trailing-bin"
ECHO_TRAILING_VALUE = b"\x0a\x0b\x0a\x0b\x0a\x0b"


class CaseFailed(Exception):
    pass


def check(cond, what):
    if not cond:
        raise CaseFailed(what)


def payload(pb, size):
    return pb.messages.Payload(body=b"\x00" * size)


def expect_code(call_fn, code, message=None):
    try:
        call_fn()
    except grpc.RpcError as err:
        check(err.code() == code, f"expected {code}, got {err.code()}: {err.details()!r}")
        if message is not None:
            check(err.details() == message, f"message {err.details()!r} != {message!r}")
        return err
    raise CaseFailed(f"expected {code}, the call succeeded")


class Stubs:
    def __init__(self):
        import empty_pb2
        import messages_pb2
        import test_pb2_grpc
        self.empty = empty_pb2
        self.messages = messages_pb2
        self.grpc = test_pb2_grpc


def simple_request(pb, **kw):
    return pb.messages.SimpleRequest(response_size=314159, payload=payload(pb, 271828), **kw)


def check_large(response):
    check(len(response.payload.body) == 314159, f"response body {len(response.payload.body)}")
    check(response.payload.body == b"\x00" * 314159, "response body is not all zeros")


def empty_unary(pb, stub):
    response = stub.EmptyCall(pb.empty.Empty(), timeout=CASE_TIMEOUT_S)
    check(response == pb.empty.Empty(), "non-empty response")


def large_unary(pb, stub):
    check_large(stub.UnaryCall(simple_request(pb), timeout=CASE_TIMEOUT_S))


def client_streaming(pb, stub):
    requests = (pb.messages.StreamingInputCallRequest(payload=payload(pb, n))
                for n in REQUEST_SIZES)
    response = stub.StreamingInputCall(requests, timeout=CASE_TIMEOUT_S)
    check(response.aggregated_payload_size == 74922,
          f"aggregated {response.aggregated_payload_size}")


def streaming_output_request(pb, sizes, request_size=None, **kw):
    params = [pb.messages.ResponseParameters(size=n) for n in sizes]
    request = pb.messages.StreamingOutputCallRequest(response_parameters=params, **kw)
    if request_size is not None:
        request.payload.CopyFrom(payload(pb, request_size))
    return request


def server_streaming(pb, stub):
    responses = stub.StreamingOutputCall(streaming_output_request(pb, RESPONSE_SIZES),
                                         timeout=CASE_TIMEOUT_S)
    sizes = [len(r.payload.body) for r in responses]
    check(sizes == RESPONSE_SIZES, f"response sizes {sizes}")


class Pipe:
    """A request iterator the test feeds one message at a time (for ping-pong)."""

    def __init__(self):
        import queue
        self.queue = queue.Queue()

    def add(self, item):
        self.queue.put(item)

    def close(self):
        self.queue.put(None)

    def __iter__(self):
        return self

    def __next__(self):
        item = self.queue.get()
        if item is None:
            raise StopIteration
        return item


def ping_pong(pb, stub):
    pipe = Pipe()
    responses = stub.FullDuplexCall(pipe, timeout=CASE_TIMEOUT_S)
    for request_size, response_size in zip(REQUEST_SIZES, RESPONSE_SIZES):
        pipe.add(streaming_output_request(pb, [response_size], request_size))
        response = next(responses)
        check(len(response.payload.body) == response_size,
              f"response size {len(response.payload.body)} != {response_size}")
    pipe.close()
    check(next(responses, None) is None, "extra response after half-close")


def empty_stream(pb, stub):
    responses = list(stub.FullDuplexCall(iter([]), timeout=CASE_TIMEOUT_S))
    check(responses == [], f"{len(responses)} responses to an empty stream")


ECHO_METADATA = ((ECHO_INITIAL_KEY, ECHO_INITIAL_VALUE), (ECHO_TRAILING_KEY, ECHO_TRAILING_VALUE))


def check_echo(initial, trailing):
    initial = dict(initial)
    trailing = dict(trailing)
    check(initial.get(ECHO_INITIAL_KEY) == ECHO_INITIAL_VALUE, f"initial metadata {initial}")
    check(trailing.get(ECHO_TRAILING_KEY) == ECHO_TRAILING_VALUE, f"trailing metadata {trailing}")


def custom_metadata(pb, stub):
    response, call = stub.UnaryCall.with_call(simple_request(pb), metadata=ECHO_METADATA,
                                              timeout=CASE_TIMEOUT_S)
    check_large(response)
    check_echo(call.initial_metadata(), call.trailing_metadata())

    call = stub.FullDuplexCall(iter([streaming_output_request(pb, [314159], 271828)]),
                               metadata=ECHO_METADATA, timeout=CASE_TIMEOUT_S)
    sizes = [len(r.payload.body) for r in call]
    check(sizes == [314159], f"full duplex sizes {sizes}")
    check_echo(call.initial_metadata(), call.trailing_metadata())


def status_code_and_message(pb, stub):
    message = "test status message"
    status = pb.messages.EchoStatus(code=2, message=message)
    expect_code(lambda: stub.UnaryCall(pb.messages.SimpleRequest(response_status=status),
                                       timeout=CASE_TIMEOUT_S),
                grpc.StatusCode.UNKNOWN, message)
    request = pb.messages.StreamingOutputCallRequest(response_status=status)
    expect_code(lambda: list(stub.FullDuplexCall(iter([request]), timeout=CASE_TIMEOUT_S)),
                grpc.StatusCode.UNKNOWN, message)


def special_status_message(pb, stub):
    message = "\t\ntest with whitespace\r\nand Unicode BMP \u263a and non-BMP \U0001f608\t\n"
    status = pb.messages.EchoStatus(code=2, message=message)
    expect_code(lambda: stub.UnaryCall(pb.messages.SimpleRequest(response_status=status),
                                       timeout=CASE_TIMEOUT_S),
                grpc.StatusCode.UNKNOWN, message)


def unimplemented_method(pb, stub):
    expect_code(lambda: stub.UnimplementedCall(pb.empty.Empty(), timeout=CASE_TIMEOUT_S),
                grpc.StatusCode.UNIMPLEMENTED)


def unimplemented_service(pb, channel):
    stub = pb.grpc.UnimplementedServiceStub(channel)
    expect_code(lambda: stub.UnimplementedCall(pb.empty.Empty(), timeout=CASE_TIMEOUT_S),
                grpc.StatusCode.UNIMPLEMENTED)


def cancel_after_begin(pb, stub):
    pipe = Pipe()
    future = stub.StreamingInputCall.future(pipe, timeout=CASE_TIMEOUT_S)
    future.cancel()
    pipe.close()
    check(future.cancelled(), "call not cancelled")
    check(future.code() == grpc.StatusCode.CANCELLED, f"code after cancel {future.code()}")


def cancel_after_first_response(pb, stub):
    pipe = Pipe()
    call = stub.FullDuplexCall(pipe, timeout=CASE_TIMEOUT_S)
    pipe.add(streaming_output_request(pb, [31415], 27182))
    response = next(call)
    check(len(response.payload.body) == 31415, f"first response {len(response.payload.body)}")
    call.cancel()
    check(call.code() == grpc.StatusCode.CANCELLED, f"code after cancel {call.code()}")
    pipe.close()


def timeout_on_sleeping_server(pb, stub):
    pipe = Pipe()
    call = stub.FullDuplexCall(pipe, timeout=0.001)
    pipe.add(streaming_output_request(pb, [], 27182))
    expect_code(lambda: list(call), grpc.StatusCode.DEADLINE_EXCEEDED)
    pipe.close()


def client_compressed_unary(pb, stub):
    # Probe: the server must refuse a request that claims compression but is not compressed.
    probe = simple_request(pb, expect_compressed=pb.messages.BoolValue(value=True))
    expect_code(lambda: stub.UnaryCall(probe, timeout=CASE_TIMEOUT_S),
                grpc.StatusCode.INVALID_ARGUMENT)
    compressed = simple_request(pb, expect_compressed=pb.messages.BoolValue(value=True))
    check_large(stub.UnaryCall(compressed, compression=grpc.Compression.Gzip,
                               timeout=CASE_TIMEOUT_S))
    plain = simple_request(pb, expect_compressed=pb.messages.BoolValue(value=False))
    check_large(stub.UnaryCall(plain, timeout=CASE_TIMEOUT_S))


def server_compressed_unary(pb, stub):
    # grpcio does not expose the per-message compressed flag; the raw HTTP/2 probe checks it.
    for flag in (True, False):
        request = simple_request(pb, response_compressed=pb.messages.BoolValue(value=flag))
        check_large(stub.UnaryCall(request, timeout=CASE_TIMEOUT_S))


def half_duplex(pb, stub):
    """HalfDuplexCall answers only after the client half-closes, all requests in order."""
    requests = [streaming_output_request(pb, [n]) for n in RESPONSE_SIZES]
    responses = stub.HalfDuplexCall(iter(requests), timeout=CASE_TIMEOUT_S)
    sizes = [len(r.payload.body) for r in responses]
    check(sizes == RESPONSE_SIZES, f"half duplex sizes {sizes}")


def streaming_interval(pb, stub):
    """interval_us delays each response (a lower bound only: never timed from above)."""
    interval_us = 20_000
    params = [pb.messages.ResponseParameters(size=1, interval_us=interval_us)] * 3
    request = pb.messages.StreamingOutputCallRequest(response_parameters=params)
    started = time.monotonic()
    responses = list(stub.StreamingOutputCall(request, timeout=CASE_TIMEOUT_S))
    elapsed_us = (time.monotonic() - started) * 1e6
    check(len(responses) == 3, f"{len(responses)} responses")
    check(elapsed_us >= 3 * interval_us, f"3 intervals of {interval_us} us took {elapsed_us:.0f} us")


def run_case(name, pb, channel):
    stub = pb.grpc.TestServiceStub(channel)
    if name == "unimplemented_service":
        unimplemented_service(pb, channel)
    else:
        globals()[name](pb, stub)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--proto-root", default=common.default_proto_root())
    args = parser.parse_args()
    common.generate_stubs(args.proto_root)
    pb = Stubs()
    failures = 0
    with grpc.insecure_channel(f"127.0.0.1:{args.port}") as channel:
        grpc.channel_ready_future(channel).result(timeout=CASE_TIMEOUT_S)
        for name in args.cases.split(","):
            started = time.monotonic()
            try:
                run_case(name, pb, channel)
                print(f"PASS {name} ({(time.monotonic() - started) * 1000:.0f} ms)")
            except Exception as err:  # noqa: BLE001 - every failure is reported per case
                failures += 1
                print(f"FAIL {name}: {err!r}")
    sys.stdout.flush()
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
