"""Raw HTTP/2 probes of the gRPC server with Python h2/hyperframe: the misbehaving and
edge-case traffic that stock clients never send.

Usage: probe_h2.py --port PORT [--probes a,b]
After every probe a fresh connection must still get a normal EmptyCall answered.
Exit 0 when every probe passed; prints one line per probe.
"""

import argparse
import gzip
import socket
import struct
import sys
import time

import common

common.require_modules()

import h2.config  # noqa: E402
import h2.connection  # noqa: E402
import h2.events  # noqa: E402
import h2.exceptions  # noqa: E402
import h2.settings  # noqa: E402
from hyperframe.frame import ContinuationFrame, HeadersFrame  # noqa: E402

TIMEOUT_S = 20
TEST_SERVICE = "/grpc.testing.TestService"
# Bytes of the oversized message: 5 MiB, over the 4 MiB default limit.
HUGE_MESSAGE_BYTES = 5 * 1024 * 1024
# Body bytes of the huge message actually sent in the prefix-only probe.
HUGE_PREFIX_BODY_BYTES = 16 * 1024
# Header block far over the advertised max_header_list_size (8-16 KiB).
OVERSIZED_HEADER_BYTES = 256 * 1024
# Streams opened and reset at once in the rapid-reset probe, and bursts tried.
RESET_BURST_STREAMS = 500
RESET_BURSTS_MAX = 20


class ProbeFailed(Exception):
    pass


def check(cond, what):
    if not cond:
        raise ProbeFailed(what)


def frame(body, compressed=False):
    return struct.pack(">BI", 1 if compressed else 0, len(body)) + body


def request_headers(path, port, extra=()):
    return [(":method", "POST"), (":scheme", "http"), (":path", path),
            (":authority", f"127.0.0.1:{port}"), ("content-type", "application/grpc"),
            ("te", "trailers")] + list(extra)


class Conn:
    """One HTTP/2 client connection driven by hand."""

    def __init__(self, port):
        self.port = port
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S)
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=True, header_encoding="utf-8"))
        self.h2.initiate_connection()
        self.h2.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 2**31 - 1})
        self.h2.increment_flow_control_window(2**30)
        self.flush()
        self.responses = {}   # stream id -> dict(headers, data, trailers, ended, reset)
        self.goaway = None
        self.closed = False

    def flush(self):
        data = self.h2.data_to_send()
        if data:
            self.sock.sendall(data)

    def stream(self, sid):
        return self.responses.setdefault(sid, {
            "headers": None, "data": b"", "trailers": None, "ended": False, "reset": None,
            "trailers_only": False})

    def pump(self, until, timeout=TIMEOUT_S):
        """Reads events until `until()` holds; False on timeout or connection close."""
        deadline = time.monotonic() + timeout
        while not until():
            if self.closed:
                return False
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                return False
            except ConnectionResetError:
                self.closed = True
                continue
            if not data:
                self.closed = True
                continue
            try:
                events = self.h2.receive_data(data)
            except h2.exceptions.ProtocolError:
                self.closed = True
                continue
            self.handle(events)
            try:
                self.flush()
            except (BrokenPipeError, ConnectionResetError):
                # The server closed while our acknowledgements were in flight.
                self.closed = True
        return True

    def handle(self, events):
        for event in events:
            if isinstance(event, h2.events.ResponseReceived):
                s = self.stream(event.stream_id)
                s["headers"] = dict(event.headers)
                s["trailers_only"] = event.stream_ended is not None
                if s["trailers_only"]:
                    s["trailers"] = dict(event.headers)
            elif isinstance(event, h2.events.DataReceived):
                self.stream(event.stream_id)["data"] += event.data
                self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.TrailersReceived):
                self.stream(event.stream_id)["trailers"] = dict(event.headers)
            elif isinstance(event, h2.events.StreamEnded):
                self.stream(event.stream_id)["ended"] = True
            elif isinstance(event, h2.events.StreamReset):
                self.stream(event.stream_id)["reset"] = event.error_code
            elif isinstance(event, h2.events.ConnectionTerminated):
                self.goaway = event.error_code

    def send_body(self, sid, body, end_stream=True):
        """Sends `body` within flow control; stops early if the stream closes."""
        offset = 0
        while offset < len(body):
            try:
                window = self.h2.local_flow_control_window(sid)
            except h2.exceptions.StreamClosedError:
                return offset
            if self.stream_done(sid):
                return offset
            if window == 0:
                if not self.pump(lambda: self.stream_done(sid) or self.h2.local_flow_control_window(sid) > 0):
                    return offset
                continue
            n = min(window, self.h2.max_outbound_frame_size, len(body) - offset)
            self.h2.send_data(sid, body[offset:offset + n])
            offset += n
            self.flush()
        if end_stream and not self.stream_done(sid):
            try:
                self.h2.end_stream(sid)
                self.flush()
            except h2.exceptions.StreamClosedError:
                pass
        return offset

    def stream_done(self, sid):
        s = self.responses.get(sid)
        return s is not None and (s["ended"] or s["reset"] is not None)

    def call(self, path, body, extra=(), end_stream=True):
        sid = self.h2.get_next_available_stream_id()
        self.h2.send_headers(sid, request_headers(path, self.port, extra))
        self.flush()
        self.stream(sid)
        self.send_body(sid, body, end_stream)
        return sid

    def wait(self, sid, timeout=TIMEOUT_S):
        check(self.pump(lambda: self.stream_done(sid), timeout),
              f"stream {sid} got no complete answer (closed={self.closed}, goaway={self.goaway})")
        return self.responses[sid]

    def close(self):
        try:
            self.h2.close_connection()
            self.flush()
        except OSError:
            pass
        self.sock.close()


def status_of(response):
    trailers = response["trailers"] or {}
    return trailers.get("grpc-status")


def normal_call_still_served(port):
    conn = Conn(port)
    response = conn.wait(conn.call(f"{TEST_SERVICE}/EmptyCall", frame(b"")))
    conn.close()
    check(status_of(response) == "0", f"normal EmptyCall after probe: {response}")
    check(response["data"] == frame(b""), f"EmptyCall body {response['data']!r}")


def unknown_method(port):
    conn = Conn(port)
    response = conn.wait(conn.call(f"{TEST_SERVICE}/NoSuchMethod", frame(b"")))
    conn.close()
    check(response["trailers_only"], f"not Trailers-Only: {response}")
    check(response["headers"].get(":status") == "200", f"HTTP status {response['headers']}")
    check(status_of(response) == "12", f"grpc-status {status_of(response)}")


def huge_message_prefix_only(port):
    """The server must answer 8 from the length prefix alone: it never needs (or
    waits to buffer) the 5 MiB body, which this probe never sends."""
    conn = Conn(port)
    body = struct.pack(">BI", 0, HUGE_MESSAGE_BYTES) + b"\x00" * HUGE_PREFIX_BODY_BYTES
    sid = conn.call(f"{TEST_SERVICE}/UnaryCall", body, end_stream=False)
    response = conn.wait(sid)
    conn.close()
    check(status_of(response) == "8", f"grpc-status {status_of(response)}: {response}")


def huge_message_full(port):
    conn = Conn(port)
    sid = conn.call(f"{TEST_SERVICE}/UnaryCall", frame(b"\x00" * HUGE_MESSAGE_BYTES))
    response = conn.wait(sid)
    conn.close()
    check(status_of(response) == "8", f"grpc-status {status_of(response)}: {response}")


def unknown_encoding(port):
    conn = Conn(port)
    sid = conn.call(f"{TEST_SERVICE}/EmptyCall", frame(b"\x01\x02", compressed=True),
                    extra=[("grpc-encoding", "snappy-x")])
    response = conn.wait(sid)
    conn.close()
    check(status_of(response) == "12", f"grpc-status {status_of(response)}: {response}")
    accept = (response["trailers"] or {}).get("grpc-accept-encoding", "") + "," + \
        (response["headers"] or {}).get("grpc-accept-encoding", "")
    check("gzip" in accept, f"grpc-accept-encoding missing: {response}")


def bad_protobuf(port):
    conn = Conn(port)
    # Field 2 (response_size) declared as a length-delimited field overrunning the body.
    sid = conn.call(f"{TEST_SERVICE}/UnaryCall", frame(b"\x12\xff\xff\xff\x0f\x00"))
    response = conn.wait(sid)
    conn.close()
    check(status_of(response) == "13", f"grpc-status {status_of(response)}: {response}")


def server_compressed_flag(port):
    """server_compressed_unary's flag check, which grpcio cannot observe."""
    # SimpleRequest{response_size: 1000, response_compressed: {value: true}}
    request = b"\x10\xe8\x07" + b"\x32\x02\x08\x01"
    conn = Conn(port)
    sid = conn.call(f"{TEST_SERVICE}/UnaryCall", frame(request),
                    extra=[("grpc-accept-encoding", "gzip")])
    response = conn.wait(sid)
    conn.close()
    check(status_of(response) == "0", f"grpc-status {status_of(response)}: {response}")
    check(response["headers"].get("grpc-encoding") == "gzip", f"headers {response['headers']}")
    data = response["data"]
    check(len(data) >= 5 and data[0] == 1, f"compressed flag not set: {data[:5]!r}")
    plain = gzip.decompress(data[5:])
    # SimpleResponse{payload: {body: 1000 zeros}}: 1000 zero bytes inside.
    check(b"\x00" * 1000 in plain, "decompressed payload lacks the 1000-byte body")


def rapid_reset(port):
    conn = Conn(port)
    for _ in range(RESET_BURSTS_MAX):
        try:
            for _ in range(RESET_BURST_STREAMS):
                sid = conn.h2.get_next_available_stream_id()
                conn.h2.send_headers(sid, request_headers(f"{TEST_SERVICE}/EmptyCall", port))
                conn.h2.reset_stream(sid, error_code=8)  # CANCEL
            conn.flush()
        except (OSError, h2.exceptions.ProtocolError):
            break
        conn.pump(lambda: conn.goaway is not None, timeout=0.2)
        if conn.goaway is not None or conn.closed:
            break
    conn.pump(lambda: conn.goaway is not None, timeout=5)
    conn.close()
    # The server sends GOAWAY then closes; if the close reaches us as a TCP
    # reset (our unread bursts were still in its buffer) the GOAWAY can be lost.
    check(conn.goaway is not None or conn.closed,
          f"connection survived {RESET_BURSTS_MAX} bursts of {RESET_BURST_STREAMS} resets")
    return f"GOAWAY {conn.goaway!r}, closed={conn.closed}"


def oversized_header_block(port):
    conn = Conn(port)
    sid = conn.h2.get_next_available_stream_id()
    headers = request_headers(f"{TEST_SERVICE}/EmptyCall", port)
    # Many distinct headers so HPACK cannot compress them away.
    headers += [(f"x-pad-{i:05d}", "v" * 100) for i in range(OVERSIZED_HEADER_BYTES // 110)]
    try:
        conn.h2.send_headers(sid, headers, end_stream=True)
        conn.flush()
    except (OSError, h2.exceptions.ProtocolError) as err:
        raise ProbeFailed(f"could not send the header block: {err!r}")
    conn.pump(lambda: conn.goaway is not None or conn.closed, timeout=TIMEOUT_S)
    conn.close()
    check(conn.goaway is not None or conn.closed,
          f"connection survived a {OVERSIZED_HEADER_BYTES}-byte header block: "
          f"{conn.responses.get(sid)}")
    return f"GOAWAY {conn.goaway!r}, closed={conn.closed}"


PROBES = [unknown_method, huge_message_prefix_only, huge_message_full, unknown_encoding,
          bad_protobuf, server_compressed_flag, rapid_reset, oversized_header_block]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--probes", default=",".join(p.__name__ for p in PROBES))
    args = parser.parse_args()
    by_name = {p.__name__: p for p in PROBES}
    failures = 0
    for name in args.probes.split(","):
        started = time.monotonic()
        try:
            detail = by_name[name](args.port)
            normal_call_still_served(args.port)
            detail = f", {detail}" if detail else ""
            print(f"PASS {name} ({(time.monotonic() - started) * 1000:.0f} ms{detail})")
        except Exception as err:  # noqa: BLE001 - every failure is reported per probe
            failures += 1
            print(f"FAIL {name}: {err!r}")
    sys.stdout.flush()
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
