"""Abuse of the native transport: what a hostile or broken client can make the server spend.

Each case runs against `mimo serve --frontend native` as a subprocess (its CPU and memory read
from /proc), except the last two: TensorFlow beside the transport in one process, and the HTTP
port at the Transport level. Raw HTTP/2 goes through the `h2` package (python-hyper) or frames
built by hand where a conforming client library would refuse to send them.

The thresholds are several times what a healthy transport measures here and far below what a
broken one shows (the C++ transport: 16.7 s of CPU for one 16 MB header block, no accept after
running out of descriptors); the measured figures are printed (`pytest -s`).
"""

from __future__ import annotations

import collections
import http.client
import json
import math
import os
import queue
import resource
import select
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import h2.config
import h2.connection
import h2.events
import h2.settings
import hpack
import pytest
from hyperframe.frame import Frame, GoAwayFrame, HeadersFrame, RstStreamFrame, SettingsFrame

from helpers import free_port, sample_inputs
from mimo.protos import codec
from mimo.protos import grpc_service_pb2 as pb
from mimo.protos import grpc_service_pb2_grpc as pb_grpc
from mimo.serving.transports import native as native_server

TESTS = Path(__file__).resolve().parents[1]
if str(TESTS / "e2e") not in sys.path:  # the e2e modules import each other as top-level modules
    sys.path.insert(0, str(TESTS / "e2e"))
from test_serve_operations import _serve, _stop  # noqa: E402
from test_serve_process import wait_ready  # noqa: E402

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not native_server.available(),
                       reason=f"native transport not built: {native_server.IMPORT_ERROR} (make native)"),
]

SERVICE = "/inference.GRPCInferenceService"
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
MB = 1024 * 1024
CLK_TCK = os.sysconf("SC_CLK_TCK")

# The transport's limits these tests lean on (native/src/lib.rs defaults, as NativeServer builds it).
STREAM_UNSENT_BYTES = 4 * MB  # a stream's response bytes that may wait for a client that does not read
KSERVE_STREAM_WINDOW = 128  # requests ModelStreamInfer runs ahead of its answers (serving/frontends/kserve_grpc.py)


# -- the server under test, and what it spends --------------------------------------------------


class Served:
    """A `mimo serve --frontend native` subprocess; its output is drained so it never blocks."""

    def __init__(self, repo: Path, nofile: int | None = None):
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.process = _serve(repo, self.port, "--metrics-port", "0", "--frontend", "native",
                              "--log-level", "WARNING")
        if nofile is not None:  # before the server opens anything much: it is still importing
            hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
            resource.prlimit(self.process.pid, resource.RLIMIT_NOFILE, (nofile, hard))
        self.output: collections.deque = collections.deque(maxlen=200)
        try:
            wait_ready(self.address, self.process)
        except BaseException:
            _stop(self.process)
            raise
        self._drain = threading.Thread(target=self._read_output, daemon=True)
        self._drain.start()

    def _read_output(self) -> None:
        try:
            for line in self.process.stdout:
                self.output.append(line)
        except (OSError, ValueError):  # closed by _stop's communicate()
            pass

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def cpu(self) -> float:
        """utime + stime of the whole process (all threads), in seconds."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15 of proc(5)

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmRSS")

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def stop(self) -> None:
        if self.alive():
            _stop(self.process)


def _mlp_only(root: Path, exported_repo: Path) -> Path:
    """A repository holding only mlp (the `mlp_repo` pattern of test_serve_operations.py)."""
    repo = root / "repo"
    (repo / "mlp").mkdir(parents=True)
    shutil.copy(exported_repo / "mlp" / "model.json", repo / "mlp" / "model.json")
    (repo / "mlp" / "1").symlink_to(exported_repo / "mlp" / "1")
    return repo


@pytest.fixture(scope="module")
def mlp_only(tmp_path_factory, exported_repo) -> Path:
    return _mlp_only(tmp_path_factory.mktemp("abuse"), exported_repo)


@pytest.fixture(scope="module")
def served(mlp_only):
    """One server for the cases that do not change its limits."""
    server = Served(mlp_only)
    yield server
    server.stop()


def _request(exported_repo: Path, request_id: str = "") -> pb.ModelInferRequest:
    return codec.encode_infer_request("mlp", sample_inputs(exported_repo, "mlp", 1), request_id=request_id)


def _infer_ok(address: str, exported_repo: Path, timeout: float = 10) -> None:
    """A valid ModelInfer on mlp on a new channel (so a new connection) answers."""
    channel = grpc.insecure_channel(address)
    try:
        reply = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(_request(exported_repo), timeout=timeout)
        assert reply.model_name == "mlp"
        assert codec.decode_infer_response(reply)["probs"].shape == (1, 10)
    finally:
        channel.close()


def _success_count(address: str) -> int:
    channel = grpc.insecure_channel(address)
    try:
        stats = pb_grpc.GRPCInferenceServiceStub(channel).ModelStatistics(
            pb.ModelStatisticsRequest(name="mlp"), timeout=10)
        return stats.model_stats[0].inference_stats.success.count
    finally:
        channel.close()


def _settled_success_count(address: str, timeout: float = 15) -> int:
    """The success count once it stops moving (in-flight requests finished)."""
    deadline = time.monotonic() + timeout
    last = _success_count(address)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = _success_count(address)
        if now == last:
            return now
        last = now
    return last


def _close_all(sockets) -> None:
    for s in sockets:
        try:
            s.close()
        except OSError:
            pass


# -- raw HTTP/2 by hand ---------------------------------------------------------------------------

HEADERS, RST_STREAM, SETTINGS, CONTINUATION = 0x1, 0x3, 0x4, 0x9
END_STREAM, ACK, END_HEADERS = 0x1, 0x1, 0x4
CANCEL = 0x8


def _frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def _hpack_int(value: int, prefix_bits: int, first: int = 0) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first | value])
    out, value = bytearray([first | limit]), value - limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _literal_never_indexed(name: bytes, value: bytes) -> bytes:
    """One header as an hpack literal, never indexed, new name, no Huffman (RFC 7541 6.2.3)."""
    return b"\x10" + _hpack_int(len(name), 7) + name + _hpack_int(len(value), 7) + value


def _grpc_headers(address: str, method: str) -> list[tuple[str, str]]:
    return [(":method", "POST"), (":scheme", "http"), (":path", f"{SERVICE}/{method}"), (":authority", address),
            ("content-type", "application/grpc"), ("te", "trailers")]


class FrameReader:
    """Reads and describes what the server sends on a raw connection, in a thread of its own."""

    def __init__(self, sock: socket.socket, on_tick=None):
        self.sock = sock
        self.frames: list[str] = []
        self.goaway: GoAwayFrame | None = None
        self.closed = ""
        self.settings = threading.Event()
        self._on_tick = on_tick
        self._stop = threading.Event()
        self._decoder = hpack.Decoder()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        buffer = b""
        while not self._stop.is_set():
            if self._on_tick:
                self._on_tick()
            try:
                ready, _, _ = select.select([self.sock], [], [], 0.05)
                if not ready:
                    continue
                data = self.sock.recv(1 << 16)
            except OSError as exc:
                self.closed = f"closed ({type(exc).__name__})"
                return
            if not data:
                self.closed = "closed (EOF)"
                return
            buffer += data
            while len(buffer) >= 9:
                frame, length = Frame.parse_frame_header(memoryview(buffer[:9]))
                if len(buffer) < 9 + length:
                    break
                frame.parse_body(memoryview(buffer[9:9 + length]))
                buffer = buffer[9 + length:]
                self._describe(frame)

    def _describe(self, frame) -> None:
        if isinstance(frame, GoAwayFrame):
            self.goaway = frame
            self.frames.append(f"GOAWAY(error={frame.error_code}, last_stream={frame.last_stream_id}, "
                               f"{bytes(frame.additional_data)[:80]!r})")
        elif isinstance(frame, RstStreamFrame):
            self.frames.append(f"RST_STREAM(stream={frame.stream_id}, error={frame.error_code})")
        elif isinstance(frame, HeadersFrame):
            try:
                headers = self._decoder.decode(bytes(frame.data))
            except Exception as exc:  # noqa: BLE001 - a description only
                headers = f"undecodable: {exc}"
            self.frames.append(f"HEADERS(stream={frame.stream_id}, {headers})")
        elif isinstance(frame, SettingsFrame):
            if "ACK" not in frame.flags:
                self.settings.set()
            self.frames.append("SETTINGS" + (" ACK" if "ACK" in frame.flags else ""))
        else:
            self.frames.append(type(frame).__name__)

    def stop(self, timeout: float = 5) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def wait_closed(self, timeout: float) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def summary(self) -> str:
        counts = collections.Counter(self.frames)
        shown = ", ".join(f"{frame} x{n}" if n > 1 else frame for frame, n in counts.items())
        return f"{shown or 'nothing'}; {self.closed or 'connection still open'}"


def _raw_connection(address: str) -> socket.socket:
    host, port = address.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.sendall(PREFACE + _frame(SETTINGS, 0, 0))
    return sock


# -- 1. descriptors run out, and come back ------------------------------------------------------


def test_running_out_of_descriptors_does_not_spin_and_the_server_accepts_again(tmp_path, exported_repo):
    limit, flood = 256, 400
    server = Served(_mlp_only(tmp_path, exported_repo), nofile=limit)
    sockets: list[socket.socket] = []
    try:
        at_start = server.fds()
        for _ in range(flood):  # past the server's accept: they wait in the kernel's backlog
            sockets.append(socket.create_connection(("127.0.0.1", server.port), timeout=5))
        deadline = time.monotonic() + 15
        while server.fds() < limit - 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        exhausted = server.fds()
        assert exhausted >= limit - 2, f"the server never ran out of descriptors ({exhausted} of {limit})"
        time.sleep(0.5)
        before = server.cpu()
        time.sleep(2.0)
        spent = server.cpu() - before
        assert server.alive(), "".join(server.output)
        print(f"\n[fd exhaustion] limit {limit}: {at_start} descriptors at start, {exhausted} with {flood} "
              f"connections open; CPU over 2 s exhausted: {spent:.3f} s")
        assert spent < 0.5, f"the accept loop spins while out of descriptors: {spent:.2f} s CPU in 2 s"

        _close_all(sockets)
        closed = time.monotonic()
        sockets.clear()
        last: Exception | None = None
        while time.monotonic() - closed < 20:
            try:
                _infer_ok(server.address, exported_repo, timeout=10)
                break
            except grpc.RpcError as exc:
                last = exc
                time.sleep(0.1)
        else:
            raise AssertionError(f"no call answered within 20 s of the descriptors coming back: {last}")
        recovery = time.monotonic() - closed
        print(f"[fd exhaustion] a new ModelInfer answered {recovery:.2f} s after the connections closed; "
              f"{server.fds()} descriptors then")
        assert recovery < 10
        assert server.alive()
    finally:
        _close_all(sockets)
        server.stop()


# -- 2. one enormous header block ---------------------------------------------------------------


def test_a_16_mb_header_block_costs_little_and_the_server_goes_on(served, exported_repo):
    block = hpack.Encoder().encode(_grpc_headers(served.address, "ServerLive"), huffman=False)
    block += _literal_never_indexed(b"x-enormous", b"a" * (16 * MB))
    chunks = [block[i:i + 16384] for i in range(0, len(block), 16384)]
    frames = [_frame(HEADERS, 0, 1, chunks[0])]
    frames += [_frame(CONTINUATION, END_HEADERS if i == len(chunks) - 1 else 0, 1, chunk)
               for i, chunk in enumerate(chunks[1:], start=1)]

    rss_before, cpu_before = served.rss_mb(), served.cpu()
    peak = [rss_before]
    sock = _raw_connection(served.address)
    reader = FrameReader(sock, on_tick=lambda: peak.append(served.rss_mb()))
    sent, error = 0, "none"
    started = time.monotonic()
    try:
        sock.settimeout(5)
        for frame in frames:
            try:
                sock.sendall(frame)
            except (BrokenPipeError, ConnectionResetError, socket.timeout) as exc:
                error = type(exc).__name__  # the server gave up on us: what it should do
                break
            sent += len(frame)
            if time.monotonic() - started > 30:
                break
        reader.wait_closed(3)  # the server's answer, if any, and its close
        peak.append(served.rss_mb())
        spent = served.cpu() - cpu_before
        growth = max(peak) - rss_before
    finally:
        reader.stop()
        sock.close()
    print(f"\n[16 MB header block] sent {sent / MB:.1f} of {sum(map(len, frames)) / MB:.1f} MB "
          f"({len(frames)} frames; send error: {error}); server answered: {reader.summary()}; "
          f"server CPU {spent:.3f} s; RSS growth {growth:.1f} MB (peak)")
    assert served.alive(), "".join(served.output)
    # Measured: under 0.01 s and 0.2 MB (h2 refuses the CONTINUATION flood after a few frames);
    # the C++ transport spent 16.7 s, and buffering the block would cost 16 MB.
    assert spent < 1.0, f"the header block cost the server {spent:.2f} s of CPU"
    assert growth < 8, f"the header block grew the server by {growth:.1f} MB"
    _infer_ok(served.address, exported_repo)


# -- 3. a stream whose client never reads -------------------------------------------------------


class UnreadStream:
    """A ModelStreamInfer stream written as fast as the server grants flow-control window, on a
    connection whose client advertises a 1-byte receive window and never sends WINDOW_UPDATE."""

    def __init__(self, address: str, message: bytes, cap: int, stall_s: float = 1.5, deadline_s: float = 20):
        host, port = address.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=10)
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        self.conn.local_settings = h2.settings.Settings(
            client=True, initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1})
        self.conn.initiate_connection()
        self.stream = self.conn.get_next_available_stream_id()
        self.conn.send_headers(self.stream, _grpc_headers(address, "ModelStreamInfer"))
        self.sock.sendall(self.conn.data_to_send())
        self.written, self.stalled, self.ended = 0, False, ""
        self._write(message, cap, stall_s, deadline_s)

    def _write(self, message: bytes, cap: int, stall_s: float, deadline_s: float) -> None:
        total, sent = cap * len(message), 0  # bytes: a message may span DATA frames
        started = last_progress = time.monotonic()
        while sent < total and not self.ended:
            now = time.monotonic()
            if now - started > deadline_s:
                return
            room = min(self.conn.local_flow_control_window(self.stream), self.conn.max_outbound_frame_size,
                       total - sent)
            if room > 0:
                offset = sent % len(message)
                chunk = (message[offset:] + message * (room // len(message) + 1))[:room]
                self.conn.send_data(self.stream, chunk)
                self.sock.sendall(self.conn.data_to_send())
                sent += room
                self.written = sent // len(message)
                last_progress = now
                continue
            if now - last_progress > stall_s:
                self.stalled = True  # no window for stall_s: the server stopped reading this stream
                return
            ready, _, _ = select.select([self.sock], [], [], 0.05)
            if ready:
                data = self.sock.recv(1 << 16)
                if not data:
                    self.ended = "connection closed"
                    return
                for event in self.conn.receive_data(data):
                    if isinstance(event, (h2.events.StreamReset, h2.events.ConnectionTerminated,
                                          h2.events.StreamEnded)):
                        self.ended = repr(event)
                self.sock.sendall(self.conn.data_to_send())  # SETTINGS and PING acks, never WINDOW_UPDATE

    def close(self) -> None:
        self.sock.close()


def test_a_stream_that_is_never_read_holds_the_server_to_its_windows(served, exported_repo):
    # A 16 KB request id, echoed in every response: responses big enough that the transport's
    # unsent-bytes limit, not the client's patience, is what stops the server computing.
    request = _request(exported_repo, request_id="u" * 16_000)
    channel = grpc.insecure_channel(served.address)
    try:  # one real answer: its size bounds what the unsent-bytes limit lets the server compute
        replies = list(pb_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer(iter([request]), timeout=10))
    finally:
        channel.close()
    assert len(replies) == 1 and not replies[0].error_message
    payload = request.SerializeToString()
    message = b"\x00" + struct.pack(">I", len(payload)) + payload
    response_bytes = replies[0].ByteSize()
    # Per stream the server may compute: its look-ahead (128: the servicer's window on the task
    # path; on the bulk path the transport's read window, each message acknowledged once its
    # answer is sent), the responses that fit under the transport's unsent-bytes limit (4 MiB /
    # 16 KB: 261), and slack for the ones in between (what tonic and h2 took): 64. Measured here:
    # 390 a stream, against 3000 from a server without back-pressure.
    bound = KSERVE_STREAM_WINDOW + math.ceil(STREAM_UNSENT_BYTES / response_bytes) + 64
    cap, count = 3_000, 4  # cap: what a client could write to a server that reads without bound

    computed_before = _settled_success_count(served.address)
    rss_before = served.rss_mb()
    streams: list[UnreadStream] = []
    try:
        for _ in range(count):
            streams.append(UnreadStream(served.address, message, cap))
        written = sum(s.written for s in streams)
        computed = _settled_success_count(served.address) - computed_before
        growth = served.rss_mb() - rss_before
        print(f"\n[unread streams] {count} streams, request {len(message)} B, response {response_bytes} B: "
              f"written {[s.written for s in streams]} (cap {cap}), stalled {[s.stalled for s in streams]}; "
              f"server computed {computed} (bound {count} x {bound} = {count * bound} from the response size); "
              f"RSS growth {growth:.1f} MB")
        for stream in streams:
            assert not stream.ended, f"the server ended an open stream: {stream.ended}"
            assert stream.stalled and stream.written < cap, \
                f"the server kept granting window to a stream it cannot answer: {stream.written} written"
        assert computed <= count * bound
        # What the flow-control windows hold stays unread.
        assert computed < written, f"the server read everything written ({computed} of {written}): no back-pressure"
        assert growth < 100, f"{count} unread streams grew the server by {growth:.0f} MB"
        _infer_ok(served.address, exported_repo)  # another client, while they stay open
    finally:
        for stream in streams:
            stream.close()
    assert served.alive()


# -- 4. rapid reset ---------------------------------------------------------------------------------


def test_a_rapid_reset_flood_is_cheap_and_the_server_goes_on(served, exported_repo):
    total, batch = 3000, 50
    encoder = hpack.Encoder()
    headers = _grpc_headers(served.address, "ServerLive")
    cpu_before = served.cpu()
    sock = _raw_connection(served.address)
    reader = FrameReader(sock)
    sent, error = 0, "none"
    try:
        assert reader.settings.wait(10), "no SETTINGS from the server"
        sock.sendall(_frame(SETTINGS, ACK, 0))
        sock.settimeout(5)
        while sent < total and reader.goaway is None and not reader.closed:
            chunk = b""
            for stream in range(2 * sent + 1, 2 * (sent + batch) + 1, 2):
                chunk += _frame(HEADERS, END_HEADERS, stream, encoder.encode(headers))
                chunk += _frame(RST_STREAM, 0, stream, struct.pack(">I", CANCEL))
            try:
                sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError, socket.timeout) as exc:
                error = type(exc).__name__
                break
            sent += batch
        reader.wait_closed(2)
        time.sleep(0.5)  # let the server finish what the flood queued
        spent = served.cpu() - cpu_before
    finally:
        reader.stop()
        sock.close()
    goaway = reader.goaway
    print(f"\n[rapid reset] {sent} streams opened and reset before "
          f"{'the server closed the connection' if reader.closed or goaway or error != 'none' else 'the end'} "
          f"(send error: {error}; GOAWAY last stream: {goaway.last_stream_id if goaway else '-'}); "
          f"server answered: {reader.summary()}; server CPU {spent:.3f} s")
    assert served.alive(), "".join(served.output)
    assert spent < 1.0, f"the reset flood cost the server {spent:.2f} s of CPU"  # measured: under 0.01 s
    _infer_ok(served.address, exported_repo)


# -- 5. many idle connections ----------------------------------------------------------------------


def test_600_idle_connections_cost_little_memory_and_no_cpu(served, exported_repo):
    count = 600
    rss_before = served.rss_mb()
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sockets.append(_raw_connection(served.address))
        pending = {s: b"" for s in sockets}  # until the server's SETTINGS: it took the connection
        deadline = time.monotonic() + 30
        while pending and time.monotonic() < deadline:
            ready, _, _ = select.select(list(pending), [], [], 0.5)
            for s in ready:
                data = s.recv(4096)
                assert data, "the server closed an idle connection"
                pending[s] += data
                if len(pending[s]) >= 9 and pending[s][3] == SETTINGS:
                    del pending[s]
        assert not pending, f"{len(pending)} of {count} connections never got the server's SETTINGS"
        time.sleep(0.5)
        growth = served.rss_mb() - rss_before
        _infer_ok(served.address, exported_repo)
        time.sleep(0.2)
        before = served.cpu()
        time.sleep(2.0)
        idle_cpu = served.cpu() - before
        print(f"\n[idle connections] {count} h2 connections open: RSS growth {growth:.1f} MB "
              f"({growth * 1024 / count:.1f} KB each); CPU over 2 s idle {idle_cpu:.3f} s")
        assert growth < 64, f"{count} idle connections grew the server by {growth:.0f} MB"  # measured: 11 MB
        assert idle_cpu < 0.3, f"{count} idle connections cost {idle_cpu:.2f} s of CPU in 2 s"
    finally:
        _close_all(sockets)
    assert served.alive()


# -- 6. TensorFlow beside the transport -----------------------------------------------------------

ONE_PROCESS = r"""
import sys

order, repo, tests = sys.argv[1], sys.argv[2], sys.argv[3]
sys.path.insert(0, tests)


def tensorflow_op():
    import tensorflow as tf
    assert float(tf.reduce_sum(tf.constant([1.0, 2.0])).numpy()) == 3.0


if order == "tensorflow-first":
    tensorflow_op()
from mimo.serving import _transport  # noqa: F401
import grpc
from helpers import sample_inputs, start_server
from mimo.protos import codec
from mimo.protos import grpc_service_pb2_grpc as pb_grpc

thread = start_server(repo, frontend="native")
assert type(thread.server._server).__name__ == "NativeServer"
if order == "transport-first":
    assert "tensorflow" not in sys.modules, "the server imported TensorFlow itself"
    tensorflow_op()
channel = grpc.insecure_channel(thread.address)
request = codec.encode_infer_request("mlp", sample_inputs(repo, "mlp", 1))
reply = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
assert reply.model_name == "mlp", reply
channel.close()
thread.stop()
print("OK")
"""


@pytest.mark.parametrize("order", ["tensorflow-first", "transport-first"])
def test_tensorflow_and_the_transport_share_a_process_in_either_order(mlp_only, order):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", ONE_PROCESS, order, str(mlp_only), str(TESTS)],
                          capture_output=True, text=True, timeout=300, env=env)
    print(f"\n[tensorflow {order}] exit {done.returncode} in {time.monotonic() - started:.1f} s")
    assert done.returncode == 0 and done.stdout.strip().endswith("OK"), done.stdout[-2000:] + done.stderr[-4000:]


# -- compressed requests ----------------------------------------------------------------------------


def test_gzip_requests_are_served_and_a_decompression_bomb_stops_at_the_message_limit(served, exported_repo):
    """grpc clients may compress requests (grpc++ took them; so does the transport). A message that
    inflates past --max-message-mb (64 MB here) is refused while inflating, not after."""
    channel = grpc.insecure_channel(served.address, compression=grpc.Compression.Gzip)
    try:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        reply = stub.ModelInfer(_request(exported_repo), timeout=10)
        assert codec.decode_infer_response(reply)["probs"].shape == (1, 10)
        bomb = _request(exported_repo)
        bomb.raw_input_contents.append(bytes(70 << 20))  # 70 MB of zeros: about 70 KB compressed
        rss = served.rss_mb()
        with pytest.raises(grpc.RpcError) as refused:
            stub.ModelInfer(bomb, timeout=30)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, refused.value
        assert "size limit" in refused.value.details() or "larger" in refused.value.details()
        grown = served.rss_mb() - rss
        print(f"\n[gzip bomb] refused: {refused.value.details()!r}; server RSS +{grown:.1f} MB")
        assert grown < 150, f"the server held {grown:.0f} MB for a refused message"
    finally:
        channel.close()
    _infer_ok(served.address, exported_repo)


# -- 7. the HTTP port, at the Transport level -------------------------------------------------------


class EchoDriver:
    """Python's side of a bare Transport: answers every HTTP request with what it asked (201, a
    header of its own) except /hold, which it keeps unanswered; records GONE events."""

    def __init__(self, transport):
        from mimo.serving import _transport as t

        self.t, self.transport = t, transport
        self.requests: queue.Queue = queue.Queue()
        self.held: queue.Queue = queue.Queue()
        self.gone: queue.Queue = queue.Queue()
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        poller = select.poll()
        poller.register(self.transport.fileno(), select.POLLIN)
        while not self._stop.is_set():
            if not poller.poll(50):
                continue
            try:
                for kind, call, method, payload, metadata, timeout, peer in self.transport.drain():
                    if kind == self.t.GONE:
                        self.gone.put(call)
                    elif kind == self.t.HTTP:
                        self._answer(call, method, payload, metadata, peer)
            except BaseException as exc:  # noqa: BLE001 - surfaced by the tests
                self.errors.append(exc)

    def _answer(self, call, method, payload, metadata, peer) -> None:
        name, path = metadata[0]
        assert name == ":path", metadata
        self.requests.put((call, method, path, payload, dict(metadata[1:]), peer))
        if path.startswith("/hold"):
            self.held.put(call)
            return
        body = json.dumps({"method": method, "path": path, "body": payload.decode("latin-1")}).encode()
        self.transport.respond(call, 201, [("content-type", "application/json"), ("x-echo", "mimo")], body)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


@pytest.fixture
def bare_transport():
    from mimo.serving import _transport as t

    transport = t.Transport("127.0.0.1:0", 1024, set(), 16)
    grpc_port = transport.start()
    http_port = transport.start_http("127.0.0.1:0")
    driver = EchoDriver(transport)
    yield transport, driver, grpc_port, http_port
    driver.stop()
    transport.shutdown(0.5)
    assert not driver.errors, driver.errors


def _http(port: int, method: str, path: str, body=None, headers=None, **kwargs):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request(method, path, body=body, headers=headers or {}, **kwargs)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def test_the_http_port_hands_requests_to_python_and_sends_its_answers(bare_transport):
    transport, driver, _, http_port = bare_transport
    status, headers, body = _http(http_port, "GET", "/v2/models/mlp?verbose=1", headers={"x-test": "42"})
    assert status == 201 and headers.get("x-echo") == "mimo", (status, headers)
    assert json.loads(body) == {"method": "GET", "path": "/v2/models/mlp?verbose=1", "body": ""}
    _, method, path, payload, metadata, peer = driver.requests.get(timeout=5)
    assert (method, path, payload) == ("GET", "/v2/models/mlp?verbose=1", b"")
    assert metadata.get("x-test") == "42" and peer.startswith("ipv4:127.0.0.1:")

    sent = bytes(range(256)) * 3  # 768 bytes, under the 1024-byte limit
    status, headers, body = _http(http_port, "POST", "/v2/models/mlp/infer", body=sent)
    assert status == 201 and headers.get("x-echo") == "mimo"
    assert json.loads(body) == {"method": "POST", "path": "/v2/models/mlp/infer", "body": sent.decode("latin-1")}
    assert driver.requests.get(timeout=5)[3] == sent


def test_the_http_port_refuses_a_body_over_the_limit_with_413(bare_transport):
    _, driver, _, http_port = bare_transport
    for kwargs in ({}, {"encode_chunked": True}):  # announced by Content-Length, or found while reading
        body = b"x" * 2000 if not kwargs else iter([b"x" * 600, b"x" * 600])
        status, headers, answer = _http(http_port, "POST", "/big", body=body, **kwargs)
        assert status == 413, (kwargs, status, answer)
        assert "error" in json.loads(answer) and "1024" in json.loads(answer)["error"]
    assert driver.requests.empty(), "an oversized body reached Python"


def test_the_grpc_port_answers_http1_with_415_saying_it_is_grpc(bare_transport):
    _, driver, grpc_port, _ = bare_transport
    status, headers, body = _http(grpc_port, "GET", "/")
    assert status == 415, (status, body)
    assert "gRPC" in json.loads(body)["error"]
    assert driver.requests.empty()


def test_an_http_client_gone_before_the_answer_is_a_gone_event(bare_transport):
    _, driver, _, http_port = bare_transport
    sock = socket.create_connection(("127.0.0.1", http_port), timeout=10)
    try:
        sock.sendall(b"GET /hold HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        call = driver.held.get(timeout=10)
    finally:
        sock.close()
    assert driver.gone.get(timeout=10) == call


def test_shutdown_returns_promptly_with_a_connection_open(bare_transport):
    transport, _, _, http_port = bare_transport
    connection = http.client.HTTPConnection("127.0.0.1", http_port, timeout=10)
    try:
        connection.request("GET", "/keep-alive")
        assert connection.getresponse().read()  # the keep-alive connection stays open
        started = time.monotonic()
        transport.shutdown(1.0)
        took = time.monotonic() - started
    finally:
        connection.close()
    print(f"\n[transport] shutdown(1.0) with an idle keep-alive connection took {took:.3f} s")
    assert took < 2.0
