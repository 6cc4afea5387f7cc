#!/usr/bin/env python3
"""The soak's backend: `backend.py SOCKET BADLOG`, a Unix-socket echo server that checks
every transfer (see soakclient.py for the protocol).

Per connection, transfer after transfer until EOF:
  client -> "XFER ID LEN SHA256\n" then LEN bytes
  backend -> the LEN bytes echoed as they arrive, then "END ID LEN SHA256 OK\n", where LEN
             and SHA256 are what the backend itself received (BAD instead of OK when that
             differs from the header).
A transfer the backend finds corrupted is also appended to BADLOG at once, so it counts
even when the connection is cut before the client reads the verdict. A transfer cut
short (EOF before LEN bytes) is not a mismatch: the client sees it as interrupted.

Reads commands on standard input, one a line: "pause SECONDS" stops reading every
connection for that long (new ones are accepted, not read). Prints "READY" once it
listens; exits when standard input closes.
"""

import asyncio
import hashlib
import os
import re
import signal
import socket
import sys

HEADER = re.compile(rb"^XFER (\S{1,64}) (\d{1,10}) ([0-9a-f]{64})\n$")
CHUNK = 65536


class Backend:
    def __init__(self, path, badlog):
        self.path = path
        self.bad = open(badlog, "a", buffering=1)
        self.reading = asyncio.Event()
        self.reading.set()
        self.resume_at = 0.0

    def report_bad(self, xid, why):
        self.bad.write("BAD %s %s\n" % (xid, why))

    async def read(self, reader, n):
        await self.reading.wait()
        return await reader.read(n)

    async def transfer(self, reader, writer, line):
        m = HEADER.match(line)
        if m is None:
            # Nothing a client sends looks like this: the bytes were damaged on the way.
            self.report_bad("-", "malformed header %r" % line[:80])
            writer.write(b"ERR malformed header\n")
            return False
        xid, want, want_sha = m.group(1), int(m.group(2)), m.group(3).decode()
        h = hashlib.sha256()
        got = 0
        while got < want:
            d = await self.read(reader, min(CHUNK, want - got))
            if not d:
                return False  # cut short: the client counts it as interrupted
            h.update(d)
            got += len(d)
            writer.write(d)
            await writer.drain()
        sha = h.hexdigest()
        verdict = b"OK" if sha == want_sha else b"BAD"
        if sha != want_sha:
            self.report_bad(xid.decode(errors="replace"), "sha256 %s, header says %s"
                            % (sha, want_sha))
        writer.write(b"END %s %d %s %s\n" % (xid, got, sha.encode(), verdict))
        await writer.drain()
        return True

    async def serve(self, reader, writer):
        try:
            while True:
                await self.reading.wait()
                line = await reader.readline()
                if not line:
                    break
                if not line.endswith(b"\n"):
                    break  # EOF inside a header: cut short
                if not await self.transfer(reader, writer, line):
                    break
            writer.close()
            await writer.wait_closed()
        except (ConnectionError, OSError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            writer.transport.abort()

    async def pause(self, seconds):
        loop = asyncio.get_running_loop()
        self.resume_at = max(self.resume_at, loop.time() + seconds)
        self.reading.clear()
        while loop.time() < self.resume_at:
            await asyncio.sleep(self.resume_at - loop.time())
        self.reading.set()

    async def commands(self):
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while True:
            line = await reader.readline()
            if not line:
                os._exit(0)  # the soak is gone
            words = line.split()
            if len(words) == 2 and words[0] == b"pause":
                asyncio.ensure_future(self.pause(float(words[1])))

    async def main(self):
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(self.path)
        os.chmod(self.path, 0o666)  # sluice's workers run as nobody
        sock.listen(1024)
        server = await asyncio.start_unix_server(self.serve, sock=sock, limit=CHUNK)
        print("READY", flush=True)
        async with server:
            await self.commands()


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: backend.py SOCKET BADLOG")
    signal.signal(signal.SIGTERM, lambda *a: os._exit(0))
    asyncio.run(Backend(sys.argv[1], sys.argv[2]).main())


if __name__ == "__main__":
    main()
