"""HTTP/2 attack clients (hyperframe + hpack, frames written by hand) against the
gRPC server: each attack must get its connection cut (GOAWAY or close) within a bound.

Usage: attack_h2.py --port PORT --attack NAME [--duration S] [--connections N]
  [--cut-within S] [--expect-cut-after S]
Floods are repeated on fresh connections for --duration seconds (so a latency probe
running meanwhile sees sustained pressure); every round must be cut within
--cut-within seconds. Prints one PASS/FAIL line with the measured cut times; exit 0
when every round was cut in time.
"""

import argparse
import os
import selectors
import socket
import struct
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import common  # noqa: E402

common.require_modules()

import hpack  # noqa: E402
from hyperframe.frame import (ContinuationFrame, DataFrame, Frame, GoAwayFrame,  # noqa: E402
                              HeadersFrame, PingFrame, RstStreamFrame, SettingsFrame)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
SERVICE = "/grpc.testing.TestService"
ENHANCE_YOUR_CALM = 11
# Frames written per send in a flood, and the most frames one round may send.
FLOOD_BATCH_FRAMES = 200
FLOOD_FRAMES_MAX = 2_000_000
# PINGs sent with the connection preface in the handshake flood.
HANDSHAKE_FLOOD_PINGS = 2000
# Streams opened and reset per burst in the rapid-reset attack.
RESET_BURST_STREAMS = 200
# Pause between rounds, so the attacker does not starve the machine's two cores.
ROUND_PAUSE_S = 0.05
# Delay between the bytes of a trickled (slowloris) header block.
TRICKLE_INTERVAL_S = 0.1
# Messages of ZERO_WINDOW_MESSAGE_BYTES the zero-window attack asks for.
ZERO_WINDOW_MESSAGES = 64
ZERO_WINDOW_MESSAGE_BYTES = 64 * 1024
# Unary calls of UNARY_RESPONSE_BYTES each the unary zero-window attack makes.
UNARY_CALLS = 16
UNARY_RESPONSE_BYTES = 1024 * 1024


class AttackFailed(Exception):
    pass


def check(cond, what):
    if not cond:
        raise AttackFailed(what)


def grpc_frame(body):
    return struct.pack(">BI", 0, len(body)) + body


def varint(n):
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def streaming_output_request(messages, message_bytes):
    """StreamingOutputCallRequest{response_parameters: [{size}] * messages}."""
    params = b"\x08" + varint(message_bytes)  # ResponseParameters.size = 1
    one = b"\x12" + varint(len(params)) + params  # response_parameters = 2
    return one * messages


class Raw:
    """One client connection that writes frames by hand and reads frame headers."""

    def __init__(self, port, settings=None):
        self.port = port
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.encoder = hpack.Encoder()
        self.inbound = b""
        self.goaway = None
        self.closed = False
        self.resets = {}
        self.frames_seen = 0
        self.send_raw(PREFACE + SettingsFrame(0, settings or {}).serialize())

    def send_raw(self, data):
        try:
            self.sock.sendall(data)
        except OSError:
            self.closed = True

    def send(self, *frames):
        self.send_raw(b"".join(f.serialize() for f in frames))

    def headers_block(self, path):
        return self.encoder.encode([
            (":method", "POST"), (":scheme", "http"), (":path", path),
            (":authority", f"127.0.0.1:{self.port}"), ("content-type", "application/grpc"),
            ("te", "trailers")])

    def headers(self, sid, path, end_stream=False, end_headers=True):
        frame = HeadersFrame(sid, self.headers_block(path))
        if end_headers:
            frame.flags.add("END_HEADERS")
        if end_stream:
            frame.flags.add("END_STREAM")
        return frame

    def cut(self):
        return self.closed or self.goaway is not None

    def read(self, timeout):
        """Reads what arrives within `timeout` s; answers SETTINGS and PING like a live
        client would (never WINDOW_UPDATE). Returns False once nothing more can come."""
        if self.closed:
            return False
        self.sock.settimeout(max(timeout, 0.0001))
        try:
            data = self.sock.recv(65536)
        except (socket.timeout, BlockingIOError):
            return True
        except OSError:
            self.closed = True
            return False
        if not data:
            self.closed = True
            return False
        self.inbound += data
        self.parse()
        return True

    def parse(self):
        while len(self.inbound) >= 9:
            length = int.from_bytes(self.inbound[:3], "big")
            if len(self.inbound) < 9 + length:
                return
            kind, flags = self.inbound[3], self.inbound[4]
            sid = int.from_bytes(self.inbound[5:9], "big") & 0x7FFFFFFF
            payload = self.inbound[9:9 + length]
            self.inbound = self.inbound[9 + length:]
            self.frames_seen += 1
            if kind == 0x4 and not flags & 0x1:  # SETTINGS -> ACK
                ack = SettingsFrame(0)
                ack.flags.add("ACK")
                self.send(ack)
            elif kind == 0x6 and not flags & 0x1:  # PING -> ACK
                pong = PingFrame(0, payload)
                pong.flags.add("ACK")
                self.send(pong)
            elif kind == 0x3:  # RST_STREAM
                self.resets[sid] = int.from_bytes(payload[:4], "big")
            elif kind == 0x7:  # GOAWAY
                self.goaway = int.from_bytes(payload[4:8], "big")

    def wait_until(self, cond, timeout):
        deadline = time.monotonic() + timeout
        while not cond() and time.monotonic() < deadline:
            if not self.read(min(0.05, deadline - time.monotonic())):
                break
        return cond()

    def wait_cut(self, timeout):
        return self.wait_until(self.cut, timeout)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def flood_round(port, cut_within, opening, make_batch):
    """Opens a connection, sends `opening`, then batches from `make_batch` until the
    server cuts the connection. Returns the time to the cut in ms."""
    conn = Raw(port)
    conn.send(*opening(conn))
    started = time.monotonic()
    sent = 0
    while not conn.cut() and sent < FLOOD_FRAMES_MAX and time.monotonic() - started < cut_within:
        batch = make_batch(conn)
        conn.send(*batch)
        sent += len(batch)
        conn.read(0)
    conn.wait_cut(max(0.0, cut_within - (time.monotonic() - started)))
    elapsed_ms = (time.monotonic() - started) * 1000
    conn.close()
    check(conn.cut(), f"connection survived {sent} frames over {elapsed_ms:.0f} ms")
    return elapsed_ms, conn.goaway, sent


def empty_data_flood(port, args):
    path = f"{SERVICE}/StreamingInputCall"
    return sustain(args, lambda: flood_round(
        port, args.cut_within,
        lambda conn: [conn.headers(1, path)],
        lambda conn: [DataFrame(1, b"") for _ in range(FLOOD_BATCH_FRAMES)]))


def ping_flood(port, args):
    return sustain(args, lambda: flood_round(
        port, args.cut_within, lambda conn: [],
        lambda conn: [PingFrame(0, b"12345678") for _ in range(FLOOD_BATCH_FRAMES)]))


def settings_flood(port, args):
    return sustain(args, lambda: flood_round(
        port, args.cut_within, lambda conn: [],
        lambda conn: [SettingsFrame(0, {}) for _ in range(FLOOD_BATCH_FRAMES)]))


def handshake_flood(port, args):
    """PINGs in the same write as the connection preface: cut during the handshake,
    at once rather than at the handshake timeout."""
    def one_round():
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        pings = b"".join(PingFrame(0, b"12345678").serialize()
                         for _ in range(HANDSHAKE_FLOOD_PINGS))
        started = time.monotonic()
        try:
            sock.sendall(PREFACE + SettingsFrame(0, {}).serialize() + pings)
        except OSError:
            pass
        sock.settimeout(args.cut_within)
        closed = False
        try:
            while sock.recv(65536):
                pass
            closed = True
        except socket.timeout:
            pass
        except OSError:
            closed = True
        elapsed_ms = (time.monotonic() - started) * 1000
        sock.close()
        check(closed, f"flooded handshake not cut after {elapsed_ms:.0f} ms")
        return elapsed_ms, None, HANDSHAKE_FLOOD_PINGS
    return sustain(args, one_round)


def continuation_flood(port, args):
    def opening(conn):
        block = conn.headers_block(f"{SERVICE}/EmptyCall")
        return [HeadersFrame(1, block)]  # no END_HEADERS: CONTINUATION must follow

    def batch(conn):
        # Literal header field without indexing, new name: never-ending headers.
        junk = b"\x00\x05x-pad\x05abcde"
        return [ContinuationFrame(1, junk) for _ in range(FLOOD_BATCH_FRAMES)]

    return sustain(args, lambda: flood_round(port, args.cut_within, opening, batch))


def rapid_reset(port, args):
    path = f"{SERVICE}/EmptyCall"

    def batch(conn):
        frames = []
        for _ in range(RESET_BURST_STREAMS):
            sid = conn.next_sid
            conn.next_sid += 2
            frames.append(conn.headers(sid, path))
            frames.append(RstStreamFrame(sid, 8))  # CANCEL
        return frames

    def opening(conn):
        conn.next_sid = 1
        return []

    return sustain(args, lambda: flood_round(port, args.cut_within, opening, batch))


def slowloris(port, args):
    """A HEADERS frame trickled one byte at a time: the request-header timeout
    must cut it although bytes keep arriving."""
    def one_round():
        conn = Raw(port)
        conn.wait_until(lambda: conn.frames_seen > 0, 5)
        data = conn.headers(1, f"{SERVICE}/EmptyCall", end_stream=True).serialize()
        started = time.monotonic()
        # Never the last byte: the block stays incomplete however long we go on.
        for i in range(len(data) - 1):
            if conn.cut() or time.monotonic() - started > args.cut_within:
                break
            conn.send_raw(data[i:i + 1])
            conn.read(TRICKLE_INTERVAL_S)
        conn.wait_cut(max(0.0, args.cut_within - (time.monotonic() - started)))
        elapsed_ms = (time.monotonic() - started) * 1000
        conn.close()
        check(conn.cut(), f"trickled header block not cut after {elapsed_ms:.0f} ms")
        check(elapsed_ms >= args.expect_cut_after * 1000,
              f"cut after {elapsed_ms:.0f} ms, before the header timeout")
        check(conn.goaway in (None, ENHANCE_YOUR_CALM), f"GOAWAY code {conn.goaway}")
        return elapsed_ms, conn.goaway, 0
    return sustain(args, one_round)


def zero_window(port, args):
    """Stream window 0, a streaming call asking for 4 MiB, and never a WINDOW_UPDATE:
    the stall timeout must reset the stream and cut the connection."""
    def one_round():
        conn = Raw(port, {SettingsFrame.INITIAL_WINDOW_SIZE: 0})
        body = grpc_frame(streaming_output_request(ZERO_WINDOW_MESSAGES,
                                                   ZERO_WINDOW_MESSAGE_BYTES))
        data = DataFrame(1, body)
        data.flags.add("END_STREAM")
        conn.send(conn.headers(1, f"{SERVICE}/StreamingOutputCall"), data)
        started = time.monotonic()
        conn.wait_cut(args.cut_within)
        elapsed_ms = (time.monotonic() - started) * 1000
        conn.close()
        check(conn.cut(), f"zero-window reader not cut after {elapsed_ms:.0f} ms "
                          f"(resets {conn.resets})")
        check(1 in conn.resets or conn.closed, f"stream not reset: {conn.resets}")
        check(elapsed_ms >= args.expect_cut_after * 1000,
              f"cut after {elapsed_ms:.0f} ms, before the stall timeout")
        return elapsed_ms, conn.goaway, 0
    return sustain(args, one_round)


def zero_window_unary(port, args):
    """Stream window 0 and many unary calls asking for 1 MiB responses each, never a
    WINDOW_UPDATE: the server must not queue the responses (memory) and must reset the
    stalled streams and cut the connection."""
    def one_round():
        conn = Raw(port, {SettingsFrame.INITIAL_WINDOW_SIZE: 0})
        # SimpleRequest{response_size: UNARY_RESPONSE_BYTES}
        body = grpc_frame(b"\x10" + varint(UNARY_RESPONSE_BYTES))
        frames = []
        for i in range(UNARY_CALLS):
            sid = 1 + 2 * i
            data = DataFrame(sid, body)
            data.flags.add("END_STREAM")
            frames += [conn.headers(sid, f"{SERVICE}/UnaryCall"), data]
        conn.send(*frames)
        started = time.monotonic()
        conn.wait_cut(args.cut_within)
        elapsed_ms = (time.monotonic() - started) * 1000
        conn.close()
        check(conn.cut(), f"zero-window unary reader not cut after {elapsed_ms:.0f} ms")
        check(elapsed_ms >= args.expect_cut_after * 1000,
              f"cut after {elapsed_ms:.0f} ms, before the stall timeout")
        return elapsed_ms, conn.goaway, 0
    return sustain(args, one_round)


def idle_connections(port, args):
    """Opens --connections connections that finish the handshake and then say
    nothing; the idle timeout must close every one of them."""
    selector = selectors.DefaultSelector()
    conns = []
    for _ in range(args.connections):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        ack = SettingsFrame(0)
        ack.flags.add("ACK")
        sock.sendall(PREFACE + SettingsFrame(0, {}).serialize() + ack.serialize())
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
        conns.append(sock)
    started = time.monotonic()
    print(f"OPENED {len(conns)}", flush=True)
    open_socks = set(conns)
    while open_socks and time.monotonic() - started < args.cut_within:
        for key, _ in selector.select(timeout=0.1):
            sock = key.fileobj
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                selector.unregister(sock)
                open_socks.discard(sock)
                sock.close()
    elapsed_ms = (time.monotonic() - started) * 1000
    for sock in open_socks:
        sock.close()
    check(not open_socks, f"{len(open_socks)} of {len(conns)} idle connections still open "
                          f"after {elapsed_ms:.0f} ms")
    check(elapsed_ms >= args.expect_cut_after * 1000,
          f"closed after {elapsed_ms:.0f} ms, before the idle timeout")
    return f"{len(conns)} idle connections all closed within {elapsed_ms:.0f} ms"


def sustain(args, one_round):
    """Repeats `one_round` for --duration seconds (at least once)."""
    started = time.monotonic()
    cuts_ms, codes, frames = [], set(), 0
    while True:
        elapsed_ms, code, sent = one_round()
        cuts_ms.append(elapsed_ms)
        codes.add(code)
        frames += sent
        if time.monotonic() - started >= args.duration:
            break
        time.sleep(ROUND_PAUSE_S)
    return (f"{len(cuts_ms)} connections cut, max {max(cuts_ms):.0f} ms after the attack "
            f"began, {frames} frames sent, GOAWAY codes {sorted(codes, key=str)}")


ATTACKS = [rapid_reset, handshake_flood, continuation_flood, empty_data_flood, ping_flood, settings_flood,
           zero_window, zero_window_unary, slowloris, idle_connections]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--attack", required=True, choices=[a.__name__ for a in ATTACKS])
    parser.add_argument("--duration", type=float, default=0.0)
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--cut-within", type=float, default=5.0)
    parser.add_argument("--expect-cut-after", type=float, default=0.0)
    args = parser.parse_args()
    attack = {a.__name__: a for a in ATTACKS}[args.attack]
    try:
        print(f"PASS {args.attack}: {attack(args.port, args)}")
    except Exception as err:  # noqa: BLE001 - the failure is the report
        print(f"FAIL {args.attack}: {err!r}")
        sys.exit(1)


if __name__ == "__main__":
    main()
