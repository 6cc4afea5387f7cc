"""The soak's TLS client side: checked transfers through sluice to backend.py.

A transfer: the client sends "XFER ID LEN SHA256\n" and LEN bytes (a slice of a random
pool), the backend echoes the bytes as they come and ends with "END ID LEN SHA256 OK\n"
(what it received itself). The client compares every echoed byte with what it sent, at
its offset, and the trailer with the header, so a corrupted, truncated, reordered or
duplicated byte in either direction, or bytes of another connection, is a mismatch:
  - a byte that differs from the one sent at that offset (either direction: a byte
    damaged on the way up comes back damaged);
  - a trailer whose ID, length or checksum is not this transfer's, or says BAD;
  - any byte after the trailer (a keep-alive connection's next answer starts only after
    its next request; after the last one only close_notify may come);
  - the backend's own BAD report (BADLOG), which counts even if the connection is cut
    before the client reads the trailer.
A transfer that ends early, with every byte so far right (reset, EOF, close_notify or an
error before its trailer, or 30 s without progress) is "interrupted": never a success,
never a mismatch.

TLS runs through memory BIOs over a non-blocking socket (ssl.SSLObject): both directions
move at once, so a large echo cannot deadlock, and close_notify can be sent while the
answer is still read (and raw bytes after it).
"""

import collections
import errno
import hashlib
import random
import select
import socket
import ssl
import struct
import threading
import time

IDLE = 30.0  # seconds without a byte moving either way: the client gives up ("stalled")
POOL_SIZE = 16 << 20
BACKLOG = 256 * 1024  # ciphertext queued towards the socket before more is encrypted
RECORD = 16384


def make_pool(seed):
    """The random bytes transfers are cut from (the same for a given seed)."""
    return random.Random(seed).randbytes(POOL_SIZE)


def payload(pool, rnd, size):
    off = rnd.randrange(0, len(pool) - size)
    return pool[off:off + size]


def log_uniform(rnd, lo, hi):
    """An integer in [lo, hi], uniform on a log scale: small sizes common, large ones seen."""
    return int(round(lo * (hi / lo) ** rnd.random()))


def context(cafile, version):
    ctx = ssl.create_default_context(cafile=cafile)
    ctx.minimum_version = version
    ctx.maximum_version = version
    return ctx


class End(Exception):
    """The connection ended (or failed) before the transfer did: interrupted."""

    def __init__(self, cause):
        super().__init__(cause)
        self.cause = cause


class Mismatch(Exception):
    """A byte or a trailer that is not what was sent: a real failure."""


def _oserror_name(e):
    return errno.errorcode.get(e.errno, str(e.errno)) if e.errno else type(e).__name__


class Expect:
    """What one transfer must read back: the bytes sent, then its trailer, nothing more."""

    def __init__(self, xid, data, sha):
        self.xid, self.data, self.sha = xid, data, sha
        self.got = 0
        self.tail = bytearray()
        self.done = False

    def feed(self, d):
        n = len(self.data)
        if self.got < n:
            k = min(n - self.got, len(d))
            want = self.data[self.got:self.got + k]
            if d[:k] != want:
                off = next(i for i in range(k) if d[i] != want[i])
                raise Mismatch("echo differs at byte %d of %d" % (self.got + off, n))
            self.got += k
            d = d[k:]
        if not d:
            return
        self.tail += d
        nl = self.tail.find(b"\n")
        if nl < 0:
            if len(self.tail) > 200:
                raise Mismatch("no trailer line after the %d bytes" % n)
            return
        line, rest = bytes(self.tail[:nl]), self.tail[nl + 1:]
        want = b"END %s %d %s OK" % (self.xid, n, self.sha)
        if line != want:
            raise Mismatch("trailer %r, expected %r" % (line[:120], want))
        if rest:
            raise Mismatch("%d bytes after the trailer" % len(rest))
        self.done = True


class TlsConn:
    """One client connection; every method raises End when the connection ends early."""

    def __init__(self, port, ctx, session=None, host="127.0.0.1", timeout=IDLE):
        self.timeout = timeout
        self.sock = None
        try:
            self.sock = socket.create_connection((host, port), timeout=timeout)
        except (socket.timeout, TimeoutError):
            raise End("connect: timeout")
        except OSError as e:
            raise End("connect: %s" % _oserror_name(e))
        self.sock.setblocking(False)
        self.inc, self.out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self.inc, self.out, server_hostname="localhost",
                                session=session)
        self.wbuf = bytearray()
        self.raw_eof = False
        self.closed = None  # how the peer ended the TLS stream, once it has
        self.last_progress = time.monotonic()

    # --- ciphertext
    def _pump(self, read=True):
        """Move ciphertext both ways without blocking; True if anything moved."""
        moved = False
        if self.out.pending:
            self.wbuf += self.out.read()
        while self.wbuf:
            try:
                n = self.sock.send(self.wbuf)
            except BlockingIOError:
                break
            except OSError as e:
                raise End("reset" if e.errno in (errno.ECONNRESET, errno.EPIPE)
                          else "send: %s" % _oserror_name(e))
            del self.wbuf[:n]
            moved = True
        while read and not self.raw_eof:
            try:
                d = self.sock.recv(262144)
            except BlockingIOError:
                break
            except OSError as e:
                raise End("reset" if e.errno == errno.ECONNRESET
                          else "recv: %s" % _oserror_name(e))
            moved = True
            if not d:
                self.raw_eof = True
                self.inc.write_eof()
                break
            self.inc.write(d)
            if len(d) < 262144:
                break
        if moved:
            self.last_progress = time.monotonic()
        return moved

    def _wait(self):
        if time.monotonic() - self.last_progress > self.timeout:
            raise End("stalled")
        mask = 0 if self.raw_eof else select.POLLIN
        if self.wbuf or self.out.pending:
            mask |= select.POLLOUT
        if not mask:
            raise End("eof")
        p = select.poll()  # not select(): the soak itself may hold thousands of descriptors
        p.register(self.sock, mask)
        p.poll(250)

    def send_raw(self, data):
        """Bytes on the wire outside TLS (after close_notify)."""
        self.wbuf += self.out.read() + data
        self._pump(read=False)

    # --- TLS
    def handshake(self):
        while True:
            try:
                self.obj.do_handshake()
                self._pump(read=False)
                return
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLEOFError:
                raise End("handshake: eof")
            except ssl.SSLError as e:
                raise End("handshake: %s" % (e.reason or type(e).__name__))
            try:
                if not self._pump():
                    self._wait()
            except End as e:
                raise End("handshake: %s" % e.cause)

    def _read_app(self):
        """Decrypted bytes available now; sets self.closed when the stream has ended."""
        chunks = []
        while self.closed is None:
            try:
                d = self.obj.read(65536)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                self.closed = "close_notify"
                break
            except ssl.SSLEOFError:
                self.closed = "eof"
                break
            except ssl.SSLError as e:
                self.closed = "tls error: %s" % (e.reason or type(e).__name__)
                break
            if not d:
                self.closed = "close_notify"
                break
            chunks.append(d)
        return b"".join(chunks)

    def _close_notify(self):
        """Queue our close_notify. Only with no decrypted byte waiting: OpenSSL's second
        SSL_shutdown (Python makes it) would discard an application record."""
        try:
            self.obj.unwrap()
        except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
            pass
        except ssl.SSLError as e:
            raise End("close_notify: %s" % (e.reason or type(e).__name__))

    def transfer(self, xid, data, junk_after=None):
        """One checked transfer. With junk_after (bytes), send close_notify and then those
        raw bytes once the request is written, and keep reading the answer."""
        sha = hashlib.sha256(data).hexdigest().encode()
        exp = Expect(xid, data, sha)
        view = memoryview(b"XFER %s %d %s\n" % (xid, len(data), sha) + data)
        try:
            self._transfer(exp, view, junk_after)
        except End as e:
            e.cause += " before the answer" if exp.got == 0 else " in the answer"
            raise

    def _transfer(self, exp, view, junk_after):
        pos = 0
        while True:
            moved = False
            while pos < len(view) and len(self.wbuf) + self.out.pending < BACKLOG:
                try:
                    pos += self.obj.write(view[pos:pos + RECORD])
                except ssl.SSLError as e:
                    raise End("write: %s" % (e.reason or type(e).__name__))
                moved = True
            moved |= self._pump()
            d = self._read_app()
            if d:
                exp.feed(d)
            if exp.done:
                return
            if self.closed is not None:
                raise End(self.closed)
            if pos == len(view) and junk_after is not None:
                self._close_notify()  # nothing decrypted is waiting: _read_app took it
                self.send_raw(junk_after)
                junk_after = None
                moved = True
            if not moved:
                self._wait()

    def close_clean(self):
        """close_notify, then read until the peer's: returns how it ended. A byte after
        the last trailer is a Mismatch."""
        d = self._read_app()
        if d:
            raise Mismatch("%d bytes after the last trailer" % len(d))
        if self.closed is not None:
            return self.closed
        self._close_notify()
        while True:
            moved = self._pump()
            d = self._read_app()
            if d:
                raise Mismatch("%d bytes after the last trailer" % len(d))
            if self.closed is not None:
                return self.closed
            if not moved:
                self._wait()

    def close(self, rst=False):
        if self.sock is None:
            return
        try:
            if rst:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.sock.close()
        except OSError:
            pass
        self.sock = None


class Tally:
    """Counters shared by threads, and the first mismatches in detail."""

    MAX_DETAILS = 50

    def __init__(self):
        self.lock = threading.Lock()
        self.c = collections.Counter()
        self.details = []  # the first MAX_DETAILS mismatches
        self.ids = []  # every mismatched transfer's ID

    def add(self, key, n=1):
        with self.lock:
            self.c[key] += n

    def mismatch(self, cls, xid, detail):
        with self.lock:
            self.c["transfers.mismatch"] += 1
            self.c["transfers.mismatch.%s" % cls] += 1
            self.ids.append(xid.decode())
            if len(self.details) < self.MAX_DETAILS:
                self.details.append({"class": cls, "id": xid.decode(), "detail": detail,
                                     "t": time.time()})

    def snapshot(self):
        with self.lock:
            return {"counters": dict(self.c), "mismatches": list(self.details),
                    "mismatch_ids": list(self.ids)}

    def merge(self, snap):
        with self.lock:
            self.c.update(snap.get("counters", {}))
            self.details.extend(snap.get("mismatches", []))
            self.ids.extend(snap.get("mismatch_ids", []))


def run_connection(port, ctx, tally, cls, ids, sizes, pool, rnd, session=None,
                   close="clean", think=(0, 0), junk=None, stop=None):
    """One connection carrying len(sizes) transfers, all counted in tally. close: "clean"
    (close_notify and read to the peer's) or "abrupt" (close the socket). junk: raw bytes
    sent after close_notify once the last request is written (then read to the end).
    Returns the TLS session to offer next time (or None)."""
    try:
        c = TlsConn(port, ctx, session)
    except End as e:
        tally.add("conn.failed")
        tally.add("conn.failed.%s" % e.cause)
        return None
    try:
        try:
            c.handshake()
        except End as e:
            tally.add("conn.failed")
            tally.add("conn.failed.%s" % e.cause)
            return None
        tally.add("conn.ok")
        tally.add("conn.ok.%s" % cls)
        tally.add("conn.%s" % c.obj.version())
        if session is not None:
            tally.add("conn.resume_offered")
            if c.obj.session_reused:
                tally.add("conn.resumed")
        for i, size in enumerate(sizes):
            xid = ids()
            data = payload(pool, rnd, size)
            last = i == len(sizes) - 1
            try:
                c.transfer(xid, data, junk if last else None)
            except Mismatch as m:
                tally.mismatch(cls, xid, str(m))
                return None
            except End as e:
                tally.add("transfers.interrupted")
                tally.add("transfers.interrupted.%s" % cls)
                tally.add("interrupted.%s" % e.cause)
                return None
            tally.add("transfers.ok")
            tally.add("transfers.ok.%s" % cls)
            tally.add("bytes.ok", size)
            if not last and think[1] > 0:
                time.sleep(rnd.uniform(*think))
            if stop is not None and stop.is_set():
                break
        sess = c.obj.session
        if junk is not None or close == "clean":
            try:
                how = c.close_clean()
            except Mismatch as m:
                tally.mismatch(cls, xid + b"-close", str(m))
                return None
            except End as e:
                how = e.cause
        else:
            how = "abrupt"
        tally.add("close.%s" % how)
        return sess if sess is not None and sess.has_ticket else None
    finally:
        c.close()
