"""The JSON access log: one line (orjson) per connection attempt and per refused action.

Fields: time, event (tls / connect / publish / subscribe / receive / will / disconnect), source (ip:port),
certificate_id, thing, client_id, action, resource, decision (allowed / refused / denied / throttled /
disconnected / closed), statement (the policy statement(s) that decided), kind (a short label, also the
metric label), reason (human text), and for MQTT 5 the reason code sent to the device (code).

A connect event also says how the device authenticated (auth: mtls, custom_authorizer, sigv4; ca_id for a
certificate; authorizer / principal / access_key for a token). A session's last event (disconnect, or the refusal
that closed it) carries ``flows``: each allowed (action, topic or filter) of the session with its count and packet
bytes. The gateway's start is one ``upstream`` event: its own identity towards the broker (auth mtls with the
certificate id and issuer, or password on a unix socket), the gateway -> broker hop.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import orjson

Sink = Callable[[dict], None]


def timestamp(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class AccessLog:
    """Writes records as JSON lines to a file (appended, 0640) or standard output, and to extra sinks.

    Lines are buffered and written by ``flush()`` (the server calls it a few times per second and on stop),
    so a burst of refusals costs one write, not one per line.
    """

    def __init__(self, target: str | Path | None = None, *, clock: Callable[[], float] = time.time,
                 max_buffer: int = 1 << 20) -> None:
        self.clock = clock
        self.max_buffer = max_buffer
        self.sinks: list[Sink] = []
        self._buffer: list[bytes] = []
        self._size = 0
        self._file: BinaryIO | None = None
        self._owns = False
        if target == "-":
            self._file = sys.stdout.buffer
        elif target is not None:
            path = Path(target)
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
            self._file = os.fdopen(fd, "ab", buffering=0)
            self._owns = True
        self.path = None if target in (None, "-") else Path(target)

    def write(self, record: dict) -> dict:
        line = {"time": timestamp(self.clock())}
        line.update(record)
        if self._file is not None:
            data = orjson.dumps(line) + b"\n"
            self._buffer.append(data)
            self._size += len(data)
            if self._size >= self.max_buffer:
                self.flush()
        for sink in self.sinks:
            sink(line)
        return line

    def flush(self) -> None:
        if not self._buffer or self._file is None:
            return
        data = b"".join(self._buffer)
        self._buffer.clear()
        self._size = 0
        try:
            self._file.write(data)
            self._file.flush()
        except OSError as exc:  # a full disk must not take the gateway down; say it once per flush
            print(f"iotgate gateway: access log write failed: {exc}", file=sys.stderr)

    def close(self) -> None:
        self.flush()
        if self._owns and self._file is not None:
            self._file.close()
        self._file = None
