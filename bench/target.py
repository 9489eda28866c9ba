"""A minimal, fast HTTP/1.1 target for the benchmarks: answers 200 ``{}`` to everything and
records when each request arrived, so lateness is measured where a user would see it.

Run: ``python bench/target.py PORT OUTFILE``; on SIGTERM it writes ``task_id attempt arrival_s``
lines to OUTFILE. Written on raw asyncio protocols so that the target, not the scheduler, is never
the bottleneck of the measurement.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
from pathlib import Path

RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


class _Http(asyncio.Protocol):
    def __init__(self, records: list[tuple[bytes, bytes, float]]) -> None:
        self.records = records
        self.buf = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        now = time.time()
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end].lower()
            length = 0
            task, attempt = b"", b""
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name == b"content-length":
                    length = int(value)
                elif name == b"x-taskorch-task-id":
                    task = value.strip()
                elif name == b"x-taskorch-attempt":
                    attempt = value.strip()
            if len(self.buf) < end + 4 + length:
                return
            self.buf = self.buf[end + 4 + length :]
            self.records.append((task, attempt, now))
            self.transport.write(RESPONSE)  # type: ignore[attr-defined]


async def main(port: int, out: str) -> None:
    records: list[tuple[bytes, bytes, float]] = []
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Http(records), "127.0.0.1", port, backlog=4096)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    print("ready", flush=True)
    await stop.wait()
    server.close()
    lines = "".join(f"{t.decode()} {a.decode()} {at:.6f}\n" for t, a, at in records)
    Path(out).write_text(lines)


if __name__ == "__main__":
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    asyncio.run(main(int(sys.argv[1]), sys.argv[2]))
