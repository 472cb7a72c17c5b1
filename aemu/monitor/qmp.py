"""The QMP server: QEMU Machine Protocol over asyncio streams (unix socket or TCP).

What ``monitor/qmp.c`` and ``qapi/qmp-dispatch.c`` do, for aemu's machine:

* **Greeting** on connect, in QEMU's shape, carrying aemu's version::

      {"QMP": {"version": {"qemu": {"micro": 0, "minor": 1, "major": 0}, "package": "aemu 0.1.0"},
               "capabilities": []}}

* **Negotiation**: until ``qmp_capabilities`` every other command is answered with
  ``CommandNotFound`` "Expecting capabilities negotiation with 'qmp_capabilities'"; events are sent
  only to negotiated clients.
* **Framing** is QEMU's streaming JSON parser (``qobject/json-streamer.c``), not lines: a message
  ends where its outermost ``{...}`` closes, so several messages may share a line and one message
  may span lines. An incomplete object (``{not json``) gets no reply until it is completed, as in
  QEMU. A malformed message is answered with ``GenericError`` "JSON parse error, ..." (no ``id``),
  a JSON value that is not an object with "QMP input must be a JSON object".
* **Replies** ``{"return": ..., "id": ...}`` / ``{"id": ..., "error": {"class", "desc"}}`` echo
  ``id`` (any JSON value; a number beyond a double's range, such as ``1e999``, is echoed as the
  text it was sent as, never as ``Infinity``); output lines end with CRLF like QEMU's monitor output.
* **Events** ``{"timestamp": {"seconds", "microseconds"}, "event": NAME, "data": {...}}`` (host
  wall-clock time, as QEMU's); an event is queued before the reply of the command that caused it.

Limits (per client unless said otherwise; none of them can be lifted by a client):

* ``MAX_MESSAGE_BYTES`` (1 MiB): a message (or unfinished prefix) longer than this gets a
  ``GenericError`` "JSON parse error, message exceeds 1048576 bytes" and the connection is closed,
  since the stream cannot be resynchronised. QEMU's own limit is 64 MiB per token.
* ``MAX_NESTING`` (64): deeper ``{``/``[`` nesting is answered the same way ("JSON nesting depth
  limit exceeded") and the connection closed; QEMU allows 1024.
* ``MAX_CLIENTS`` (64, server-wide). Idle connections cannot lock others out: when the server is
  full, a new connection evicts the client that has been quiet longest -- one that never sent
  ``qmp_capabilities`` before one that did -- provided it has sent nothing for ``EVICT_IDLE_S``
  (1 s) and is not in the middle of a command; its socket is simply closed. Only when every client
  has spoken within that second is the new connection closed at once, without a greeting. There
  is no idle timeout otherwise (QEMU has none): a quiet client keeps its place until room is needed.
* ``MAX_OUTPUT_BYTES`` (4 MiB): what a client that does not read may cost, counted as the bytes
  held for it -- output not yet handed to the transport plus the transport's write buffer -- and
  held as chunks of 64 KiB, not one object per message, so the count is the memory (within a
  chunk). Requests are read one at a time and a new one only when that count is below
  ``OUTPUT_HIGH_WATER`` (QEMU also stops reading a monitor with a full request queue), so replies
  cannot pile up; an event that would push it past ``MAX_OUTPUT_BYTES`` drops that client (its
  socket is closed). With every client slow, the server holds at most 64 x 4 MiB.
* Commands run one at a time server-wide (QEMU runs them in its main loop under the BQL); ``stop``
  waits at most :data:`STOP_TIMEOUT_S` wall seconds for the vCPUs to park.

Security: a client's input is only ever parsed as JSON and looked up in a fixed table of commands
with typed arguments; nothing it sends is evaluated, imported, or used as a file name, and no
command reads or writes files. The unix socket is created with mode 0600 (and removed on exit);
TCP binds loopback unless the option names a host.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import socket
import stat
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError

__all__ = [
    "EVICT_IDLE_S",
    "MAX_CLIENTS",
    "MAX_MESSAGE_BYTES",
    "MAX_NESTING",
    "MAX_OUTPUT_BYTES",
    "OUTPUT_HIGH_WATER",
    "JSONStreamer",
    "QMPAddress",
    "QMPError",
    "QMPServer",
    "StreamLimitError",
    "VerbatimNumber",
    "encode_message",
    "parse_qmp_option",
]

MAX_MESSAGE_BYTES = 1 << 20
MAX_NESTING = 64
MAX_CLIENTS = 64
MAX_OUTPUT_BYTES = 4 << 20
OUTPUT_HIGH_WATER = 256 << 10
READ_CHUNK = 64 << 10
WRITE_CHUNK = 64 << 10
#: Wall seconds a client must have been quiet before a new connection may evict it (server full).
EVICT_IDLE_S = 1.0
#: Wall seconds ``stop`` waits for the vCPUs to park (real-time runs).
STOP_TIMEOUT_S = 2.0


# -- errors ---------------------------------------------------------------------------------------

class QMPError(Exception):
    """A command's failure as QMP reports it: an error class and a human-readable ``desc``."""

    def __init__(self, desc: str, error_class: str = "GenericError") -> None:
        super().__init__(desc)
        self.desc = desc
        self.error_class = error_class

    def to_dict(self) -> dict[str, str]:
        """The ``error`` member of a reply."""
        return {"class": self.error_class, "desc": self.desc}


class StreamLimitError(QMPError):
    """The input broke a framing limit (size, nesting): reply once, then close the connection."""


# -- addresses: -qmp unix:PATH,server[,wait=off] / tcp:HOST:PORT,server[,wait=off] -------------------

@dataclass(frozen=True, slots=True)
class QMPAddress:
    """Where the server listens: ``kind`` "unix" (``path``) or "tcp" (``host``, ``port``)."""

    kind: str
    path: str = ""
    host: str = "127.0.0.1"
    port: int = 0
    #: QEMU's ``wait=on`` (the default): wait for a client before running.
    wait: bool = True

    def __str__(self) -> str:
        if self.kind == "unix":
            return f"unix:{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"tcp:{host}:{self.port}"


def _split_opts(text: str) -> list[str]:
    """Split QEMU option syntax on ``,`` where ``,,`` stands for a literal comma."""
    parts = [""]
    i = 0
    while i < len(text):
        c = text[i]
        if c == "," and text[i + 1:i + 2] == ",":
            parts[-1] += ","
            i += 2
            continue
        if c == ",":
            parts.append("")
        else:
            parts[-1] += c
        i += 1
    return parts


def _onoff(key: str, val: str) -> bool:
    if val in ("on", "yes", "true", ""):
        return True
    if val in ("off", "no", "false"):
        return False
    raise ConfigError(f"-qmp: {key}={val!r}; expected on or off")


def parse_qmp_option(text: str) -> QMPAddress:
    """Parse the value of ``-qmp`` (``unix:PATH,server[,wait=off]``, ``tcp:[HOST]:PORT,server[,wait=off]``)."""
    usage = "expected unix:PATH,server[,wait=off] or tcp:HOST:PORT,server[,wait=off]"
    head, *opts = _split_opts(text)
    server = False
    wait = True
    for opt in opts:
        key, _, val = opt.partition("=")
        if key == "server":
            server = _onoff(key, val)
        elif key == "wait":
            wait = _onoff(key, val)
        elif key == "nowait" and not val:
            wait = False
        else:
            raise ConfigError(f"-qmp: unknown option {opt!r}; {usage}")
    if not server:
        raise ConfigError(f"-qmp: {text!r}: aemu only listens (add ,server); {usage}")
    if head.startswith("unix:"):
        path = head[5:]
        if not path:
            raise ConfigError(f"-qmp: unix: needs a socket path; {usage}")
        return QMPAddress("unix", path=path, wait=wait)
    if head.startswith("tcp:"):
        rest = head[4:]
        m = re.fullmatch(r"(?:\[([0-9a-fA-F:.]+)\]|([^:\[\]]*)):(\d{1,5})", rest)
        if m is None:
            raise ConfigError(f"-qmp: {head!r}: {usage}")
        host = m.group(1) or m.group(2) or "127.0.0.1"
        port = int(m.group(3))
        if port > 65535:
            raise ConfigError(f"-qmp: port {port} is out of range (0-65535)")
        return QMPAddress("tcp", host=host, port=port, wait=wait)
    raise ConfigError(f"-qmp: {head!r}: {usage}")


# -- framing: QEMU's streaming JSON parser --------------------------------------------------------------

_IN_STRING = re.compile(rb'["\\]')
_STRUCTURAL = re.compile(rb'["{}\[\]]')
_BARE_END = re.compile(rb'[\s{}\[\]",:]')
_WS = frozenset(b" \t\r\n")


class _DuplicateKey(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise _DuplicateKey(k)
        out[k] = v
    return out


def _no_constants(name: str) -> Any:
    raise ValueError(f"invalid keyword '{name}'")


@dataclass(frozen=True, slots=True)
class VerbatimNumber:
    """A JSON number too large for a float (``1e999``), kept as its text so it is echoed verbatim.

    Python would read it as ``inf`` and write it back as ``Infinity``, which is not JSON. No
    command takes a float, so such a number is only ever echoed (as an ``id``) or refused as an
    argument of the wrong type.
    """

    text: str


def _float_or_verbatim(text: str) -> float | VerbatimNumber:
    value = float(text)
    return value if math.isfinite(value) else VerbatimNumber(text)


def parse_json(raw: bytes) -> Any:
    """One complete message -> its value; malformed input raises :class:`QMPError`."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise QMPError("JSON parse error, invalid UTF-8 sequence") from None
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constants,
                          parse_float=_float_or_verbatim)
    except _DuplicateKey as e:
        raise QMPError(f"JSON parse error, duplicate key '{e.args[0]}'") from None
    except json.JSONDecodeError as e:
        word = re.match(r"[A-Za-z_]\w*", text[e.pos:e.pos + 32]) if e.pos < len(text) else None
        if word is not None:
            raise QMPError(f"JSON parse error, invalid keyword '{word.group(0)}'") from None
        raise QMPError(f"JSON parse error, {e.msg[0].lower()}{e.msg[1:]}") from None
    except (ValueError, RecursionError) as e:  # huge integers, NaN/Infinity
        raise QMPError(f"JSON parse error, {e}") from None


class JSONStreamer:
    """Split a byte stream into JSON messages the way QEMU's json-streamer does.

    :meth:`feed` returns, in order, each complete message's value or the :class:`QMPError` that
    parsing it raised. A message is an outermost ``{...}``/``[...]`` or a top-level scalar (which
    ends at a delimiter). When the unfinished message passes ``max_bytes`` or nests deeper than
    ``max_depth`` the last item is a :class:`StreamLimitError`: the stream cannot be used after it.
    """

    __slots__ = ("max_bytes", "max_depth", "_buf", "_pos", "_depth", "_in_str", "_bare")

    def __init__(self, max_bytes: int = MAX_MESSAGE_BYTES, max_depth: int = MAX_NESTING) -> None:
        self.max_bytes = max_bytes
        self.max_depth = max_depth
        self._buf = bytearray()
        self._pos = 0
        self._depth = 0
        self._in_str = False
        self._bare = False

    @property
    def pending(self) -> int:
        """Bytes of an unfinished message held back."""
        return len(self._buf)

    def _emit(self, end: int, out: list[Any]) -> None:
        raw = bytes(self._buf[:end])
        del self._buf[:end]
        self._pos = 0
        try:
            out.append(parse_json(raw))
        except QMPError as e:
            out.append(e)

    def feed(self, data: bytes) -> list[Any]:
        buf = self._buf
        buf += data
        out: list[Any] = []
        pos = self._pos
        while pos < len(buf):
            if self._in_str:
                m = _IN_STRING.search(buf, pos)
                if m is None:
                    pos = len(buf)
                    break
                if buf[m.start()] == 0x5C:  # backslash: skip the escaped byte (maybe not here yet)
                    pos = m.start() + 2
                    continue
                self._in_str = False
                pos = m.start() + 1
                if self._depth == 0:  # a top-level string
                    self._emit(pos, out)
                    pos = 0
                continue
            if self._bare:
                m = _BARE_END.search(buf, pos)
                if m is None:
                    pos = len(buf)
                    break
                self._bare = False
                self._emit(m.start(), out)
                pos = 0
                continue
            if self._depth == 0:
                while pos < len(buf) and buf[pos] in _WS:
                    pos += 1
                del buf[:pos]
                pos = 0
                if not buf:
                    break
                c = buf[0]
                pos = 1
                if c in b"{[":
                    self._depth = 1
                elif c == 0x22:
                    self._in_str = True
                elif c in b"}]":
                    del buf[:1]
                    pos = 0
                    out.append(QMPError(f"JSON parse error, stray '{chr(c)}'"))
                else:
                    self._bare = True
                continue
            m = _STRUCTURAL.search(buf, pos)
            if m is None:
                pos = len(buf)
                break
            c = buf[m.start()]
            pos = m.start() + 1
            if c == 0x22:
                self._in_str = True
            elif c in b"{[":
                self._depth += 1
                if self._depth > self.max_depth:
                    self._pos = len(buf)
                    out.append(StreamLimitError("JSON nesting depth limit exceeded"))
                    return out
            else:
                self._depth -= 1
                if self._depth == 0:
                    self._emit(pos, out)
                    pos = 0
        self._pos = pos
        if len(buf) > self.max_bytes:
            out.append(StreamLimitError(f"JSON parse error, message exceeds {self.max_bytes} bytes"))
        return out


class _HasVerbatim(Exception):
    pass


def _no_verbatim(obj: Any) -> Any:
    if isinstance(obj, VerbatimNumber):
        raise _HasVerbatim
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def _encode_with_verbatim(obj: Any) -> str:
    """The slow path of :func:`encode_message`: walk the value, writing each VerbatimNumber's text."""
    if isinstance(obj, VerbatimNumber):
        return obj.text
    if isinstance(obj, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))}: {_encode_with_verbatim(v)}" for k, v in obj.items()) + "}"
    if isinstance(obj, (list, tuple)):
        return "[" + ", ".join(_encode_with_verbatim(v) for v in obj) + "]"
    if isinstance(obj, float) and not math.isfinite(obj):
        return "null"  # not JSON; no command returns one, but a reply must never be unreadable
    return json.dumps(obj, separators=(", ", ": "), ensure_ascii=True)


def encode_message(obj: Any) -> bytes:
    """A message as QEMU writes it: ``", "``/``": "`` separators, ASCII, CRLF-terminated; valid
    JSON always (a :class:`VerbatimNumber` is written as its text, a NaN or infinity as ``null``)."""
    try:
        text = json.dumps(obj, separators=(", ", ": "), ensure_ascii=True, allow_nan=False, default=_no_verbatim)
    except (_HasVerbatim, ValueError):
        text = _encode_with_verbatim(obj)
    return text.encode() + b"\r\n"


def event_message(name: str, data: dict[str, Any] | None = None) -> dict[str, Any]:
    """An event with QEMU's wall-clock timestamp."""
    now = time.time_ns() // 1000
    msg: dict[str, Any] = {"timestamp": {"seconds": now // 1_000_000, "microseconds": now % 1_000_000},
                           "event": name}
    if data is not None:
        msg["data"] = data
    return msg


# -- one connection ------------------------------------------------------------------------------------

class _Client:
    """One connected client: its negotiation state and its bounded output buffer.

    Output is kept as chunks of about :data:`WRITE_CHUNK` bytes (messages are appended to the
    last one), not as one object per message, whose overhead would make the memory held for a
    client that does not read half as much again as its byte count. A chunk goes to the transport
    only once the transport has drained below its high-water mark. :attr:`queued` counts both, so
    the cap is what the client really costs.
    """

    def __init__(self, server: QMPServer, writer: asyncio.StreamWriter, max_output: int) -> None:
        self.server = server
        self.writer = writer
        self.negotiated = False
        self.closed = False
        self.max_output = max_output
        self.peak_queued = 0
        #: Wall time (``time.monotonic()``) input last arrived; whether a request is being handled.
        self.last_input = time.monotonic()
        self.busy = False
        self._chunks: deque[bytes] = deque()  # full chunks, oldest first
        self._tail = bytearray()  # the chunk being filled
        self._held = 0  # bytes in _chunks and _tail
        self._more = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._task = asyncio.get_running_loop().create_task(self._write_loop(), name="qmp-writer")

    @property
    def queued(self) -> int:
        """Output bytes held for this client: not yet handed to the transport plus its write buffer."""
        if self.closed:
            return 0
        return self._held + self.writer.transport.get_write_buffer_size()

    def send(self, obj: Any, *, droppable: bool = False) -> None:
        """Queue a message. A ``droppable`` one (an event) that overflows the queue drops the client."""
        self.send_encoded(encode_message(obj), droppable=droppable)

    def send_encoded(self, data: bytes, *, droppable: bool = False) -> None:
        """Queue an encoded message (see :meth:`send`)."""
        if self.closed:
            return
        queued = self.queued + len(data)
        if droppable and queued > self.max_output:
            self.server.dropped_clients += 1
            self.close()
            return
        tail = self._tail
        tail += data
        if len(tail) >= WRITE_CHUNK:
            self._chunks.append(bytes(tail))
            tail.clear()
        self._held += len(data)
        if queued > self.peak_queued:
            self.peak_queued = queued
        if queued > OUTPUT_HIGH_WATER:
            self._room.clear()
        self._more.set()

    async def wait_room(self) -> None:
        """Backpressure: wait until the client has read enough of its replies."""
        await self._room.wait()

    async def flushed(self) -> bool:
        """Whether everything queued has been handed to the transport (does not wait)."""
        return not self._held

    async def _write_loop(self) -> None:
        w = self.writer
        try:
            while not self.closed:
                if not self._held:
                    self._more.clear()
                    await self._more.wait()
                    continue
                if self._chunks:
                    chunk = self._chunks.popleft()
                else:
                    chunk = bytes(self._tail)
                    self._tail.clear()
                self._held -= len(chunk)
                w.write(chunk)
                await w.drain()  # returns once the transport's buffer is below its high-water mark
                if self.queued <= OUTPUT_HIGH_WATER // 2:
                    self._room.set()
        except (ConnectionError, OSError):
            self.close()
        finally:
            self._room.set()

    def close(self) -> None:
        """Close the connection now (queued output is discarded)."""
        if self.closed:
            return
        self.closed = True
        self._room.set()
        self._more.set()
        self._chunks.clear()
        self._tail.clear()
        self._held = 0
        try:
            self.writer.transport.abort()
        except Exception:
            pass

    async def finish(self) -> None:
        """Wait for the writer task (after :meth:`close`)."""
        self._task.cancel()
        try:
            await self._task
        except BaseException:
            pass


# -- the server -----------------------------------------------------------------------------------------

#: dispatch(message, negotiated) -> (reply or None, negotiated now)
Dispatch = Callable[[Any, "_Client"], Any]


class QMPServer:
    """Listen on ``address`` and serve QMP to up to ``max_clients`` clients at once.

    ``handler`` is an :class:`aemu.monitor.commands.Monitor` (anything with ``greeting()`` and
    ``async handle(message, client) -> reply | None``). :meth:`emit_event` broadcasts an event to
    every negotiated client.
    """

    def __init__(self, handler: Any, address: QMPAddress, *, max_clients: int = MAX_CLIENTS,
                 max_output_bytes: int = MAX_OUTPUT_BYTES, max_message_bytes: int = MAX_MESSAGE_BYTES,
                 evict_idle_s: float = EVICT_IDLE_S) -> None:
        self.handler = handler
        self.address = address
        self.max_clients = max_clients
        self.evict_idle_s = evict_idle_s
        self.max_output_bytes = max_output_bytes
        self.max_message_bytes = max_message_bytes
        self.clients: set[_Client] = set()
        #: Set when the first client connects (``wait=on``).
        self.first_client = asyncio.Event()
        #: Clients dropped because their output queue overflowed; connections refused (too many).
        self.dropped_clients = 0
        self.refused_clients = 0
        #: Idle clients closed to make room for a new connection.
        self.evicted_clients = 0
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[Any]] = set()
        self._unix_ino: tuple[int, int] | None = None

    # -- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        """Bind and listen (unix: mode 0600; an existing socket file at the path is replaced)."""
        a = self.address
        if a.kind == "unix":
            sock = self._bind_unix(a.path)
            self._server = await asyncio.start_unix_server(self._on_connect, sock=sock, limit=READ_CHUNK)
        else:
            try:
                self._server = await asyncio.start_server(self._on_connect, a.host, a.port, limit=READ_CHUNK,
                                                          reuse_address=True)
            except OSError as e:  # port in use, an address not on this host, a name that does not resolve
                # asyncio wraps bind errors in its own sentence; say the system's reason once
                errno = e.errno or 0
                plain = errno > 0 and not isinstance(e, socket.gaierror)
                reason = os.strerror(errno) if plain else (e.strerror or str(e))
                raise ConfigError(f"-qmp: cannot listen on {a}: {reason}") from None

    def _bind_unix(self, path: str) -> socket.socket:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            pass
        else:
            if not stat.S_ISSOCK(st.st_mode):
                raise ConfigError(f"-qmp: {path!r} exists and is not a socket; not replacing it")
            os.unlink(path)  # a stale socket (QEMU replaces it too)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            sock.bind(path)
        except OSError as e:
            sock.close()
            raise ConfigError(f"-qmp: cannot listen on {path!r}: {e.strerror}") from None
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        st = os.lstat(path)
        self._unix_ino = (st.st_dev, st.st_ino)
        sock.listen(max(8, self.max_clients))
        sock.setblocking(False)
        return sock

    @property
    def bound(self) -> QMPAddress:
        """The address actually listened on (a TCP port 0 resolved)."""
        a = self.address
        if a.kind == "tcp" and self._server is not None and self._server.sockets:
            host, port = self._server.sockets[0].getsockname()[:2]
            return QMPAddress("tcp", host=host, port=port, wait=a.wait)
        return a

    async def close(self, *, flush_s: float = 0.5, linger_s: float = 0.0) -> None:
        """Stop listening, give queued output up to ``flush_s`` wall seconds, wait up to
        ``linger_s`` for clients to hang up by themselves, close every client, remove the unix
        socket file."""
        if self._server is not None:
            self._server.close()
        deadline = time.monotonic() + flush_s
        loop = asyncio.get_running_loop()
        virtual = hasattr(loop, "now_ns")
        while any(c.queued for c in self.clients) and time.monotonic() < deadline:
            await asyncio.sleep(0 if virtual else 0.002)
        deadline = time.monotonic() + linger_s
        while any(not c.closed for c in self.clients) and time.monotonic() < deadline:
            if virtual:  # block in a thread: virtual time must not run while we wait for a peer
                await loop.run_in_executor(None, time.sleep, 0.01)
            else:
                await asyncio.sleep(0.01)
        for c in list(self.clients):
            c.close()
        for t in list(self._handlers):
            t.cancel()
        if self._handlers:
            await asyncio.gather(*self._handlers, return_exceptions=True)
        self._server = None
        self._remove_unix_socket()

    def _remove_unix_socket(self) -> None:
        if self._unix_ino is None:
            return
        try:
            st = os.lstat(self.address.path)
            if (st.st_dev, st.st_ino) == self._unix_ino:
                os.unlink(self.address.path)
        except OSError:
            pass
        self._unix_ino = None

    # -- events ------------------------------------------------------------------------------------
    def emit_event(self, name: str, data: dict[str, Any] | None = None) -> None:
        """Send event ``name`` to every negotiated client (a client that cannot keep up is dropped)."""
        encoded = encode_message(event_message(name, data))
        for c in list(self.clients):
            if c.negotiated:
                c.send_encoded(encoded, droppable=True)

    # -- a connection ------------------------------------------------------------------------------
    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if self._server is None or task is None or (len(self.clients) >= self.max_clients
                                                    and not self._evict_idle()):
            self.refused_clients += 1
            writer.transport.abort()
            return
        self._handlers.add(task)
        client = _Client(self, writer, self.max_output_bytes)
        self.clients.add(client)
        self.first_client.set()
        try:
            await self._serve(client, reader)
            deadline = time.monotonic() + 0.2  # let a last reply (a limit error) go out
            while client.queued and time.monotonic() < deadline:
                await asyncio.sleep(0)
        except (ConnectionError, OSError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # a cancelled handler ends quietly (asyncio logs a server handler's CancelledError)
        finally:
            self.clients.discard(client)
            client.close()
            await client.finish()
            self._handlers.discard(task)

    def _evict_idle(self) -> bool:
        """Make room for a new connection: close the client quiet longest (one that never
        negotiated first), if it has been quiet ``evict_idle_s`` and is not mid-command."""
        now = time.monotonic()
        idle = [c for c in self.clients
                if not c.busy and not c.closed and now - c.last_input >= self.evict_idle_s]
        if not idle:
            return False
        victim = min(idle, key=lambda c: (c.negotiated, c.last_input))
        self.clients.discard(victim)
        victim.close()
        self.evicted_clients += 1
        return True

    async def _serve(self, client: _Client, reader: asyncio.StreamReader) -> None:
        client.send(self.handler.greeting())
        streamer = JSONStreamer(self.max_message_bytes)
        while not client.closed:
            data = await reader.read(READ_CHUNK)
            if not data:
                return
            client.last_input = time.monotonic()
            for msg in streamer.feed(data):
                if client.closed:
                    return
                if isinstance(msg, StreamLimitError):
                    client.send({"error": msg.to_dict()})
                    return  # the stream cannot be resynchronised: close
                if isinstance(msg, QMPError):
                    reply: Any = {"error": msg.to_dict()}
                else:
                    client.busy = True  # not evicted mid-command (waiting for it to be read is not busy)
                    try:
                        reply = await self.handler.handle(msg, client)
                    finally:
                        client.busy = False
                if reply is not None:
                    client.send(reply)
                await client.wait_room()
