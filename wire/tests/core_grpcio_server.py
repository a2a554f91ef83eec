"""A grpcio (C core) server for wire's client tests: generic handlers over
google.protobuf.Any, so no generated code is needed. Prints its port on the
first line of stdout, then serves until killed or stdin closes."""

import sys
import threading
import time
from concurrent import futures

import grpc
from google.protobuf import any_pb2


def parse(data):
    message = any_pb2.Any()
    message.ParseFromString(data)
    return message


def unary(request, context):
    metadata = dict(context.invocation_metadata())
    initial = []
    trailing = []
    if "x-echo" in metadata:
        initial.append(("x-echo", metadata["x-echo"]))
        trailing.append(("x-echo-trailer", metadata["x-echo"]))
    if "x-echo-bin" in metadata:
        initial.append(("x-echo-bin", metadata["x-echo-bin"]))
        trailing.append(("x-trailer-bin", metadata["x-echo-bin"]))
    context.send_initial_metadata(initial)
    context.set_trailing_metadata(trailing)
    return parse(request).SerializeToString()


def fail(request, context):
    message = parse(request)
    code = next(c for c in grpc.StatusCode if c.value[0] == int(message.type_url))
    context.abort(code, message.value.decode("utf-8"))


def sleep(request, context):
    deadline = time.monotonic() + 30
    while context.is_active() and time.monotonic() < deadline:
        time.sleep(0.01)
    return request


def server_stream(request, context):
    message = parse(request)
    for index in range(int(message.type_url)):
        yield any_pb2.Any(type_url="item", value=bytes([index % 256]) * 100).SerializeToString()


def client_stream(requests, context):
    count = 0
    total_bytes = 0
    for request in requests:
        count += 1
        total_bytes += len(parse(request).value)
    return any_pb2.Any(type_url=f"{count}:{total_bytes}").SerializeToString()


def bidi(requests, context):
    for request in requests:
        yield request


HANDLERS = {
    "Unary": grpc.unary_unary_rpc_method_handler(unary),
    "Fail": grpc.unary_unary_rpc_method_handler(fail),
    "Sleep": grpc.unary_unary_rpc_method_handler(sleep),
    "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
    "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream),
    "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
}


def main():
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=8),
        compression=grpc.Compression.Gzip if "--gzip" in sys.argv else None,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("echo.Echo", HANDLERS),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)
    # Exit when the test closes our stdin (or dies).
    threading.Thread(target=lambda: (sys.stdin.read(), server.stop(0)), daemon=True).start()
    server.wait_for_termination()


if __name__ == "__main__":
    main()
