"""TLS test clients for cases the command-line tools cannot express: Python's ssl module
over sockets and over memory BIOs (close_notify then raw bytes), hand-made handshake
records (half, truncated, SSLv3, SSLv2), many concurrent transfers with asyncio.
"""

import asyncio
import errno
import hashlib
import os
import random
import selectors
import socket
import ssl
import struct
import threading
import time

import sluicetest as st


def context(cafile, version=None, alpn=None):
    """A verifying client context (hostname "localhost"); version pins one TLS version."""
    ctx = ssl.create_default_context(cafile=cafile)
    if version is not None:
        ctx.minimum_version = version
        ctx.maximum_version = version
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx


def connect(port, cafile, host="127.0.0.1", timeout=10, version=None, alpn=None):
    """A TLS connection, handshake done. suppress_ragged_eofs=False: a raw EOF raises
    SSLEOFError, a close_notify reads as b""."""
    raw = socket.create_connection((host, port), timeout=timeout)
    try:
        return context(cafile, version, alpn).wrap_socket(
            raw, server_hostname="localhost", suppress_ragged_eofs=False)
    except BaseException:
        raw.close()
        raise


def read_to_close(s, timeout):
    """Read an SSLSocket until it ends. Returns (data, how), how one of "close_notify",
    "eof" (no close_notify), "reset", "timeout", "ssl-error: ..."."""
    deadline = time.monotonic() + timeout
    data = bytearray()
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return bytes(data), "timeout"
        s.settimeout(left)
        try:
            d = s.recv(65536)
        except ssl.SSLZeroReturnError:
            return bytes(data), "close_notify"
        except ssl.SSLEOFError:
            return bytes(data), "eof"
        except (socket.timeout, TimeoutError):
            return bytes(data), "timeout"
        except ConnectionResetError:
            return bytes(data), "reset"
        except ssl.SSLError as e:
            return bytes(data), "ssl-error: %s" % e
        if not d:
            return bytes(data), "close_notify"
        data += d


def wait_closed(sock, timeout):
    """Wait for the peer to close a raw socket, discarding what it sends (alerts).
    Returns (how, elapsed, received) with how "eof", "reset" or "timeout"."""
    t0 = time.monotonic()
    got = bytearray()
    while True:
        left = t0 + timeout - time.monotonic()
        if left <= 0:
            return "timeout", time.monotonic() - t0, bytes(got)
        sock.settimeout(left)
        try:
            d = sock.recv(65536)
        except (socket.timeout, TimeoutError):
            return "timeout", time.monotonic() - t0, bytes(got)
        except ConnectionResetError:
            return "reset", time.monotonic() - t0, bytes(got)
        if not d:
            return "eof", time.monotonic() - t0, bytes(got)
        got += d


class BioClient:
    """TLS over a raw socket through memory BIOs: every byte on the wire is under the
    test's control (send close_notify, then raw bytes on the same socket)."""

    def __init__(self, port, cafile, host="127.0.0.1", timeout=10, version=None):
        self.timeout = timeout
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.inc = ssl.MemoryBIO()
        self.out = ssl.MemoryBIO()
        self.obj = context(cafile, version).wrap_bio(self.inc, self.out,
                                                     server_hostname="localhost")
        self.raw_eof = False

    def flush(self):
        d = self.out.read()
        if d:
            self.sock.sendall(d)
        return len(d)

    def _fill(self, deadline):
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("BioClient: timed out")
        self.sock.settimeout(left)
        d = self.sock.recv(65536)
        if d:
            self.inc.write(d)
        else:
            self.raw_eof = True
            self.inc.write_eof()

    def handshake(self):
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                self.obj.do_handshake()
                self.flush()
                return
            except ssl.SSLWantReadError:
                self.flush()
                self._fill(deadline)

    def send(self, data):
        """Encrypt and send data now (as many records as OpenSSL makes)."""
        self.obj.write(data)
        self.flush()

    def encrypt(self, data):
        """Encrypt data into the outgoing buffer without sending it yet."""
        self.obj.write(data)

    def close_notify(self, send=True):
        """Queue our close_notify (and send it, with anything queued, unless send=False)."""
        try:
            self.obj.unwrap()
        except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
            pass
        if send:
            self.flush()

    def pending_wire(self):
        """Bytes queued by encrypt()/close_notify(send=False), taken from the BIO."""
        return self.out.read()

    def send_raw(self, data):
        self.sock.sendall(data)

    def read_to_close(self, timeout):
        """Like read_to_close() for a socket: (data, how)."""
        deadline = time.monotonic() + timeout
        data = bytearray()
        while True:
            try:
                d = self.obj.read(65536)
                if not d:
                    return bytes(data), "close_notify"
                data += d
                continue
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLZeroReturnError:
                return bytes(data), "close_notify"
            except ssl.SSLEOFError:
                return bytes(data), "eof"
            except ssl.SSLError as e:
                return bytes(data), "ssl-error: %s" % e
            try:
                self._fill(deadline)
            except (TimeoutError, socket.timeout):
                return bytes(data), "timeout"
            except ConnectionResetError:
                return bytes(data), "reset"

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


# --- hand-made handshake bytes -------------------------------------------------------


def client_hello(server_hostname="localhost"):
    """A real ClientHello record (all of it) as Python's ssl would send it."""
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    ctx = ssl.create_default_context()
    obj = ctx.wrap_bio(inc, out, server_hostname=server_hostname)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    hello = out.read()
    assert hello[0] == 0x16 and hello[5] == 0x01, "not a ClientHello record"
    return hello


def half_client_hello():
    """The first half of a real ClientHello record: the server must wait for the rest."""
    h = client_hello()
    return h[: len(h) // 2]


def truncated_client_hello():
    """A ClientHello record and message whose lengths are consistent but whose body is
    cut after the random: a complete but malformed message (decode error at once)."""
    h = client_hello()
    body = h[9:9 + 2 + 32 + 1]  # legacy_version, random, session id length byte only
    msg = b"\x01" + struct.pack(">I", len(body))[1:] + body
    return b"\x16\x03\x01" + struct.pack(">H", len(msg)) + msg


def sslv3_client_hello():
    """An SSLv3 ClientHello (record and client_version 3.0), as an old client sends."""
    body = b"\x03\x00" + os.urandom(32) + b"\x00"  # version, random, no session id
    suites = b"\x00\x2f\x00\x35\x00\x0a\x00\x05\x00\x04\x00\xff"
    body += struct.pack(">H", len(suites)) + suites + b"\x01\x00"  # null compression
    msg = b"\x01" + struct.pack(">I", len(body))[1:] + body
    return b"\x16\x03\x00" + struct.pack(">H", len(msg)) + msg


def sslv2_client_hello():
    """An SSLv2-format ClientHello (2-byte header, MSG-CLIENT-HELLO, version 3.0)."""
    specs = b"\x01\x00\x80\x07\x00\xc0\x00\x00\x2f\x00\x00\x35"
    challenge = os.urandom(16)
    msg = (b"\x01\x03\x00" + struct.pack(">HHH", len(specs), 0, len(challenge)) + specs
           + challenge)
    return struct.pack(">H", 0x8000 | len(msg)) + msg


def random_garbage(n=1024):
    """Random bytes that cannot be mistaken for the start of a TLS or SSLv2 record (a
    record type 0x14..0x18 or version byte 3 could make a server wait for more bytes)."""
    rnd = random.SystemRandom()
    while True:
        b = bytearray(rnd.getrandbits(8) for _ in range(n))
        if 0x14 <= b[0] <= 0x18 or b[0] & 0x80 or b[1] == 0x03:
            continue
        return bytes(b)


# --- many concurrent transfers with the backend's SHA protocol --------------------------


async def sha_transfer(port, cafile, up, down, host="127.0.0.1", start=None, ready=None,
                       chunk=65536):
    """One connection speaking the backend's "SHA UP DOWN" protocol both ways at once.
    If start (an asyncio.Event) is given, wait for it after the handshake (ready() is
    called then). Returns a dict: up/down sizes and checksums on both ends, how it ended.
    """
    ctx = context(cafile)
    reader, writer = await asyncio.open_connection(host, port, ssl=ctx,
                                                   server_hostname="localhost",
                                                   limit=1 << 20)
    res = {"ok": False}
    try:
        if ready is not None:
            ready()
        if start is not None:
            await start.wait()
        writer.write(b"SHA %d %d\n" % (up, down))

        async def send():
            h = hashlib.sha256()
            for c in st.random_bytes_chunks(up, chunk):
                h.update(c)
                writer.write(c)
                await writer.drain()
            res["up_sent"], res["up_sha"] = up, h.hexdigest()

        async def recv():
            h = hashlib.sha256()
            n = 0
            while n < down:
                d = await reader.read(min(262144, down - n))
                if not d:
                    break
                h.update(d)
                n += len(d)
            res["down_got"], res["down_sha"] = n, h.hexdigest()
            res["trailer"] = (await reader.readline()).decode(errors="replace")
            tail = await reader.read()
            res["after_trailer"] = len(tail)

        await asyncio.gather(send(), recv())
        w = res["trailer"].split()
        if len(w) == 5 and w[0] == "RESULT":
            res["be_up_got"], res["be_up_sha"] = int(w[1]), w[2]
            res["be_down_sent"], res["be_down_sha"] = int(w[3]), w[4]
            res["ok"] = (res["be_up_got"] == up and res["be_up_sha"] == res["up_sha"]
                         and res["be_down_sent"] == down and res["down_got"] == down
                         and res["be_down_sha"] == res["down_sha"]
                         and res["after_trailer"] == 0)
    finally:
        writer.close()
        try:
            await asyncio.wait_for(writer.wait_closed(), 5)
        except Exception:
            pass
    return res


def run_sha_transfers(specs, cafile, timeout, all_at_once=True):
    """Run transfers concurrently. specs: list of (port, up, down[, host]). With
    all_at_once every connection completes its handshake before any data moves, so all
    are open at the same time. Returns (results, max_open) where a result is a dict or
    an exception."""

    async def main():
        start = asyncio.Event()
        state = {"ready": 0, "open": 0, "max_open": 0}
        n = len(specs)

        def ready():
            state["ready"] += 1
            if state["ready"] == n:
                start.set()

        async def one(spec):
            port, up, down = spec[:3]
            host = spec[3] if len(spec) > 3 else "127.0.0.1"
            state["open"] += 1
            state["max_open"] = max(state["max_open"], state["open"])
            try:
                return await sha_transfer(port, cafile, up, down, host,
                                          start if all_at_once else None, ready)
            finally:
                state["open"] -= 1

        async def guarded():
            tasks = [asyncio.ensure_future(one(s)) for s in specs]
            done, pending = await asyncio.wait(tasks, timeout=timeout)
            for t in pending:
                t.cancel()
            out = []
            for t in tasks:
                if t in pending:
                    out.append(TimeoutError("transfer did not finish in %.0f s" % timeout))
                elif t.exception() is not None:
                    out.append(t.exception())
                else:
                    out.append(t.result())
            return out

        results = await guarded()
        return results, state["max_open"]

    return asyncio.run(main())


def open_many(port, n, host="127.0.0.1", payload=None, timeout=10):
    """n raw TCP connections (optionally each sending payload); returns the sockets."""
    socks = []
    for _ in range(n):
        s = socket.create_connection((host, port), timeout=timeout)
        if payload:
            s.sendall(payload)
        socks.append(s)
    return socks


def watch_closes(socks, until, on_close=None):
    """Poll raw sockets until time.monotonic() >= until or all are closed by the peer.
    Returns {sock: monotonic time it was seen closed}."""
    sel = selectors.DefaultSelector()
    closed = {}
    for s in socks:
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
    try:
        while len(closed) < len(socks):
            left = until - time.monotonic()
            if left <= 0:
                break
            for key, _ in sel.select(min(left, 0.5)):
                s = key.fileobj
                try:
                    d = s.recv(65536)
                except BlockingIOError:
                    continue
                except OSError as e:
                    if e.errno not in (errno.ECONNRESET, errno.EPIPE):
                        raise
                    d = b""
                if not d:
                    closed[s] = time.monotonic()
                    sel.unregister(s)
                    if on_close:
                        on_close(s)
    finally:
        sel.close()
    return closed


# --- clients that stop after the server's first flight (handshake permits) --------------


class StalledHello:
    """A raw TCP client that sends a real ClientHello and then only reads: it learns
    whether the server answered with a ServerHello (the server took a handshake permit
    and did TLS work), and never sends its Finished, so the server's handshake stays
    open until the client closes or handshake-timeout fires.
    reply: None (nothing yet), "server_hello", "alert" or "other" (the first record);
    closed: None, "eof" or "reset" (the server closed the connection)."""

    def __init__(self, port, host="127.0.0.1", timeout=10):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.sendall(client_hello())
        self.sock.setblocking(False)
        self.buf = b""
        self.reply = None
        self.reply_at = None  # time.monotonic() when the first record was complete enough
        self.closed = None
        self.closed_at = None

    @property
    def got_hello(self):
        return self.reply == "server_hello"

    def _classify(self):
        b = self.buf
        if len(b) < 6:
            return None
        if b[0] == 0x16 and b[1] == 0x03 and b[5] == 0x02:
            return "server_hello"
        if b[0] == 0x15:
            return "alert"
        return "other"

    def on_readable(self):
        if self.closed:
            return
        try:
            d = self.sock.recv(65536)
        except BlockingIOError:
            return
        except ConnectionResetError:
            self.closed, self.closed_at = "reset", time.monotonic()
            return
        if not d:
            self.closed, self.closed_at = "eof", time.monotonic()
            return
        if len(self.buf) < 64:
            self.buf += d
        if self.reply is None:
            self.reply = self._classify()
            if self.reply is not None:
                self.reply_at = time.monotonic()

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def stalled_hellos(port, n, host="127.0.0.1", timeout=10):
    """n StalledHello clients, all connected and their ClientHellos sent."""
    return [StalledHello(port, host, timeout) for _ in range(n)]


def poll_hellos(clients, until, stop=None):
    """Read from StalledHello clients until time.monotonic() >= until, or stop(clients)
    returns true. Clients keep reading after a ServerHello (the rest of the server's
    flight, then an EOF or reset if the server closes). Returns the clients."""
    sel = selectors.DefaultSelector()
    for c in clients:
        if not c.closed:
            sel.register(c.sock, selectors.EVENT_READ, c)
    try:
        while True:
            if stop is not None and stop(clients):
                break
            left = until - time.monotonic()
            if left <= 0 or not sel.get_map():
                break
            for key, _ in sel.select(min(left, 0.2)):
                c = key.data
                c.on_readable()
                if c.closed:
                    sel.unregister(c.sock)
    finally:
        sel.close()
    return clients


def hello_summary(clients):
    """A short text: how many got a ServerHello, other replies, closes, nothing."""
    hello = sum(1 for c in clients if c.got_hello)
    other = sum(1 for c in clients if c.reply not in (None, "server_hello"))
    closed = sum(1 for c in clients if c.closed and not c.got_hello)
    silent = sum(1 for c in clients if c.reply is None and not c.closed)
    return ("%d ServerHello, %d other reply, %d closed without one, %d nothing"
            % (hello, other, closed, silent))


# --- plain HTTPS requests, one at a time or as a steady stream -------------------------


def request(port, cafile, path="/", host="127.0.0.1", timeout=10):
    """One HTTPS GET over a new connection (handshake, request, read to close).
    Returns (ok, body_or_error): ok is True when the body came back whole."""
    try:
        s = connect(port, cafile, host=host, timeout=timeout)
    except ConnectionRefusedError:
        return False, "refused"
    except ConnectionResetError:
        return False, "reset"
    except (socket.timeout, TimeoutError):
        return False, "timeout"
    except (OSError, ssl.SSLError) as e:
        return False, "%s: %s" % (type(e).__name__, e)
    try:
        s.sendall(b"GET %s HTTP/1.0\r\nHost: localhost\r\n\r\n" % path.encode())
        data, how = read_to_close(s, timeout)
    except OSError as e:
        return False, "%s: %s" % (type(e).__name__, e)
    finally:
        s.close()
    if how not in ("close_notify", "eof") or not data.startswith(b"HTTP/1.1 200 OK"):
        return False, "%s after %r" % (how, data[:80])
    return True, data.split(b"\r\n\r\n", 1)[-1]


class Stream:
    """A steady stream of new connections: every interval seconds a new HTTPS request
    starts on its own thread, whatever happened to the earlier ones. Each result is a
    dict: start, end (time.monotonic()), ok, err, body."""

    def __init__(self, port, cafile, interval=0.02, timeout=10, path="/stream"):
        self.port, self.cafile, self.interval = port, cafile, interval
        self.timeout, self.path = timeout, path
        self.results = []
        self.threads = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.runner = threading.Thread(target=self._run, daemon=True)

    def start(self):
        self.runner.start()
        return self

    def _one(self, res):
        ok, what = request(self.port, self.cafile, self.path, timeout=self.timeout)
        res["end"] = time.monotonic()
        res["ok"] = ok
        res["err"] = None if ok else what
        res["body"] = what if ok else None

    def _run(self):
        nxt = time.monotonic()
        while not self.stopping.is_set():
            res = {"start": time.monotonic(), "end": None, "ok": None, "err": None}
            th = threading.Thread(target=self._one, args=(res,), daemon=True)
            with self.lock:
                self.results.append(res)
                self.threads.append(th)
            th.start()
            nxt += self.interval
            self.stopping.wait(max(0.0, nxt - time.monotonic()))

    def stop(self, wait=None):
        """Stop starting new requests; wait (default: timeout + 5 s) for those in flight.
        Returns the results."""
        self.stopping.set()
        self.runner.join()
        deadline = time.monotonic() + (wait if wait is not None else self.timeout + 5)
        for th in self.threads:
            th.join(max(0.0, deadline - time.monotonic()))
        return self.results

    def started_between(self, t0, t1=None):
        with self.lock:
            return [r for r in self.results
                    if r["start"] >= t0 and (t1 is None or r["start"] < t1)]
