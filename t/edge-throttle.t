#!/usr/bin/env python3
# Backpressure with a peer that stops reading (issue 7, edge cases 2 and 3).
# A. Upload: the backend (owned by this test, a Unix socket) accepts and reads nothing
#    while the client uploads 64 MB. The client is throttled: the bytes it gets into
#    sluice stop growing far below 64 MB (its send blocks; kernel socket buffers hold
#    some), the RSS of all sluice processes grows by less than RSS_BOUND (on the way and
#    while stalled), and sluice burns no CPU meanwhile. Then the backend reads again
#    and every byte arrives intact.
# B. Download: the backend sends 64 MB and the TLS client reads nothing: the backend is
#    throttled, the same RSS and CPU bounds hold, and once the client reads it gets every
#    byte intact.
# RSS_BOUND is 8 MB: a connection's relay buffers are capped at 64 KB per direction plus
# OpenSSL's record buffers, so a few hundred KB; 8 MB leaves room for allocator noise
# while a relay that buffered what its sink refused would grow by tens of MB.
import hashlib
import os
import socket
import threading
import time

import sluicetest as st
import tlsclient as tc

TOTAL = 64 << 20
RSS_BOUND = 8 << 20
CPU_WINDOW = 2.0
CPU_BOUND = 0.05 * CPU_WINDOW
CHUNK = 64 * 1024


def rss_bytes(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def sluice_rss(sl):
    """RSS of the master and every worker, summed."""
    return sum(rss_bytes(p) for p in [sl.pid] + sl.worker_pids())


class Counter:
    """Bytes moved by a sender thread, its checksum, and whether it finished."""

    def __init__(self):
        self.n = 0
        self.sha = hashlib.sha256()
        self.done = threading.Event()
        self.error = None

    def send_all(self, sock, total):
        try:
            for chunk in st.random_bytes_chunks(total, CHUNK):
                sock.sendall(chunk)
                self.sha.update(chunk)
                self.n += len(chunk)
        except Exception as e:  # reported by the checks on n and error
            self.error = e
        self.done.set()


def wait_plateau(read, quiet, timeout, tick=None):
    """Wait until read() has not changed for quiet seconds, calling tick() every 0.1 s;
    returns (value, stalled)."""
    deadline = time.monotonic() + timeout
    last, since = read(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        if tick is not None:
            tick()
        v = read()
        if v != last:
            last, since = v, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return v, True
    return last, False


def read_exact(sock, n):
    h = hashlib.sha256()
    got = 0
    while got < n:
        d = sock.recv(min(262144, n - got))
        if not d:
            break
        h.update(d)
        got += len(d)
    return got, h.hexdigest()


class StalledBackend:
    """A Unix-socket backend run by this test. upload: reads nothing until resume(), then
    reads TOTAL bytes and answers "GOT n sha". download: reads one line, then sends TOTAL
    bytes (counted by self.sender) and closes."""

    def __init__(self, t, name, mode):
        self.path = t.path(name + ".sock")
        self.srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.srv.bind(self.path)
        os.chmod(self.path, 0o666)  # workers run as nobody when the tests run as root
        self.srv.listen(8)
        t.cleanups.append(self.srv.close)
        self.mode = mode
        self.accepted = threading.Event()
        self.resumed = threading.Event()
        self.sender = Counter()
        self.result = None
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        conn, _ = self.srv.accept()
        self.accepted.set()
        conn.settimeout(st.scaled(60))
        try:
            if self.mode == "upload":
                self.resumed.wait()
                self.result = read_exact(conn, TOTAL)
                conn.sendall(b"GOT %d %s\n" % (self.result[0], self.result[1].encode()))
            else:
                line = b""
                while not line.endswith(b"\n"):
                    d = conn.recv(1)
                    if not d:
                        return
                    line += d
                self.sender.send_all(conn, TOTAL)
        except OSError as e:
            self.result = (-1, str(e))
        finally:
            conn.close()

    def resume(self):
        self.resumed.set()


def check_stall(t, sl, what, rss0, moved, quiet_for):
    """The peer stalls: bytes stop moving, memory and CPU stay bounded."""
    peak = [rss0]
    value, stalled = wait_plateau(moved, quiet_for, st.scaled(30),
                                  tick=lambda: peak.append(max(peak.pop(), sluice_rss(sl))))
    t.ok(stalled and value < TOTAL // 2,
         "%s: the sender is throttled: its bytes stop at %.1f MB of %d MB"
         % (what, value / 2**20, TOTAL >> 20))
    grown = sluice_rss(sl) - rss0
    t.ok(grown < RSS_BOUND and peak[0] - rss0 < RSS_BOUND,
         "%s: sluice's RSS grew by %.2f MB while stalled, at most %.2f MB on the way "
         "(bound %d MB)" % (what, grown / 2**20, (peak[0] - rss0) / 2**20, RSS_BOUND >> 20))
    c0 = sl.cpu_seconds()
    time.sleep(CPU_WINDOW)
    used = sl.cpu_seconds() - c0
    t.ok(used < CPU_BOUND, "%s: sluice used %.3f s CPU in %.0f s while stalled (bound %.2f s)"
         % (what, used, CPU_WINDOW, CPU_BOUND))
    return grown


def upload(t, sl, port, be, cert, rss0):
    s = tc.connect(port, cert, timeout=st.scaled(60))
    client = Counter()
    th = threading.Thread(target=client.send_all, args=(s, TOTAL), daemon=True)
    th.start()
    t.ok(be.accepted.wait(st.scaled(10)), "upload: sluice connected to the backend")
    check_stall(t, sl, "upload, backend not reading", rss0, lambda: client.n, 1.0)
    t.ok(not client.done.is_set(), "upload: the client's send is blocked, not finished")
    be.resume()
    t.ok(client.done.wait(st.scaled(60)) and client.error is None and client.n == TOTAL,
         "upload: once the backend reads, the client sends all %d MB (%s)"
         % (TOTAL >> 20, client.error or "ok"))
    reply, how = tc.read_to_close(s, st.scaled(30))
    s.close()
    want = b"GOT %d %s\n" % (TOTAL, client.sha.hexdigest().encode())
    t.ok(reply == want, "upload: the backend got every byte, checksum equal (%r)" % reply[:90])


def download(t, sl, port, be, cert, rss0):
    s = tc.connect(port, cert, timeout=st.scaled(60))
    s.sendall(b"DOWN\n")
    t.ok(be.accepted.wait(st.scaled(10)), "download: sluice connected to the backend")
    check_stall(t, sl, "download, client not reading", rss0, lambda: be.sender.n, 1.0)
    t.ok(not be.sender.done.is_set(), "download: the backend's send is blocked, not finished")
    got, sha = read_exact(s, TOTAL)
    t.ok(be.sender.done.wait(st.scaled(30)) and be.sender.error is None
         and be.sender.n == TOTAL, "download: once the client reads, the backend sends all "
         "%d MB (%s)" % (TOTAL >> 20, be.sender.error or "ok"))
    t.ok(got == TOTAL and sha == be.sender.sha.hexdigest(),
         "download: the client got every byte, checksum equal (%d bytes)" % got)
    rest, how = tc.read_to_close(s, st.scaled(10))
    t.ok(rest == b"" and how == "close_notify",
         "download: then close_notify (%s, %d more bytes)" % (how, len(rest)))
    s.close()


def warm_up(t, port, cert):
    """One transfer through sluice first, so the baseline RSS includes what any relay
    allocates once (scratch buffers, OpenSSL's tables)."""
    res, _ = tc.run_sha_transfers([(port, 1 << 20, 1 << 20)], cert, st.scaled(30))
    t.ok(isinstance(res[0], dict) and res[0]["ok"], "warm-up: 1 MB each way through sluice")


def main(t):
    cert, key = t.make_cert()
    app = t.start_backend("app", "unix")
    up_be = StalledBackend(t, "upload", "upload")
    down_be = StalledBackend(t, "download", "download")
    p_app, p_up, p_down = st.free_ports(3)
    conf = t.write_config([t.frontend(p_app, app.address, cert, key),
                           t.frontend(p_up, "unix:" + up_be.path, cert, key),
                           t.frontend(p_down, "unix:" + down_be.path, cert, key)],
                          workers=1, idle_timeout=120)
    # ASan keeps freed blocks in a quarantine (256 MB by default): that would be RSS
    # growth of the checker's own, not of sluice's buffers.
    asan = os.environ.get("ASAN_OPTIONS", "")
    sl = t.start_sluice(conf, env={"ASAN_OPTIONS": (asan + ":" if asan else "")
                                   + "quarantine_size_mb=1"})
    warm_up(t, p_app, cert)
    time.sleep(1.5)  # a quiet heartbeat: the worker trims its heap
    rss0 = sluice_rss(sl)
    t.diag("sluice RSS at rest: %.1f MB" % (rss0 / 2**20))
    upload(t, sl, p_up, up_be, cert, rss0)
    download(t, sl, p_down, down_be, cert, rss0)
    t.ok(sl.alive(), "sluice is alive")
    sl.stop_and_check()


st.Test("edge-throttle").main(main)
