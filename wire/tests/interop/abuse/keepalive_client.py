"""A legitimate grpcio client with aggressive keepalive (a PING every 100 ms, also without
calls) against the abuse limits: its calls and a quiet server stream must all succeed and
the connection must never be cut.

Usage: keepalive_client.py --port PORT [--seconds S]
Exit 0 when every call succeeded on one connection that was never cut.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import common  # noqa: E402

common.require_modules()

import grpc  # noqa: E402

# Keepalive far more eager than any default (grpcio: 2 h; grpc-js: off).
KEEPALIVE_MS = 100
CALL_PAUSE_S = 0.2


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--proto-root", default=common.default_proto_root())
    args = parser.parse_args()
    common.generate_stubs(args.proto_root)
    import empty_pb2
    import messages_pb2
    import test_pb2_grpc

    options = [("grpc.keepalive_time_ms", KEEPALIVE_MS),
               ("grpc.keepalive_timeout_ms", 5000),
               ("grpc.keepalive_permit_without_calls", 1),
               ("grpc.http2.max_pings_without_data", 0)]
    calls = 0
    try:
        with grpc.insecure_channel(f"127.0.0.1:{args.port}", options=options) as channel:
            # Any state after READY other than READY means the connection dropped.
            states = []
            channel.subscribe(states.append, try_to_connect=True)
            stub = test_pb2_grpc.TestServiceStub(channel)
            started = time.monotonic()
            while time.monotonic() - started < args.seconds:
                stub.EmptyCall(empty_pb2.Empty(), timeout=10)
                calls += 1
                time.sleep(CALL_PAUSE_S)
            # A server stream quiet for longer than the test's 2 s stall timeout.
            request = messages_pb2.StreamingOutputCallRequest(response_parameters=[
                messages_pb2.ResponseParameters(size=10),
                messages_pb2.ResponseParameters(size=10, interval_us=2_500_000)])
            received = sum(1 for _ in stub.StreamingOutputCall(request, timeout=20))
            if received != 2:
                raise RuntimeError(f"quiet stream gave {received} of 2 messages")
            stub.EmptyCall(empty_pb2.Empty(), timeout=10)
            ready_at = states.index(grpc.ChannelConnectivity.READY)
            dropped = [s for s in states[ready_at:] if s != grpc.ChannelConnectivity.READY]
            if dropped:
                raise RuntimeError(f"connection dropped: states {states}")
    except Exception as err:  # noqa: BLE001 - the failure is the report
        print(f"FAIL keepalive_client after {calls} calls: {err!r}")
        sys.exit(1)
    print(f"PASS keepalive_client: {calls + 1} calls and a quiet stream with a "
          f"{KEEPALIVE_MS} ms keepalive")


if __name__ == "__main__":
    main()
