#!/usr/bin/env python3
# bench/sluice-load's open loop (--rate), which bench/run's latency rows rest on: against
# an idle sluice, connections (full) and requests (keepalive) fall due at the offered rate
# and complete at it, each well within its own interval, and latency counts from when it
# fell due. (A pacing that held back the slots' other steps made every connection wait
# for later arrivals: at 50/s and 16 slots, about 160 ms each instead of a few.) In
# keepalive, no request falls due before all connections are up: the set-up's handshakes
# are not request latency.
import os
import re
import socket
import threading

import sluicetest as st

RATE = 50
SECONDS = 2.0
FAST_MS = 60  # one arrival interval is 20 ms; a handshake here takes a few
HOLD = 1.0  # how long the holding relay keeps the last connection from sluice


def load_tool():
    backend = os.environ.get("SLUICE_BACKEND", "")
    tool = os.path.join(os.path.dirname(backend), "sluice-load") if backend else ""
    return tool if tool and os.access(tool, os.X_OK) else None


def run_load(tool, port, *args):
    rc, out, err, _ = st.run([tool, "-a", "127.0.0.1:%d" % port, "-q", "-d", str(SECONDS)] +
                             list(args), timeout=SECONDS + st.scaled(20))
    fields = dict(re.findall(r"(\w+)=(\S+)", out.decode(errors="replace")))
    return rc, fields, err.decode(errors="replace")


class HoldingRelay:
    """A TCP relay to 127.0.0.1:upstream that keeps its last_of-th connection from the
    upstream (unconnected, its bytes unread) for hold seconds. (The test backend closes
    after each answer, so sluice-load's slots reconnect through it.)"""

    def __init__(self, upstream, last_of, hold):
        self.upstream, self.last_of, self.hold = upstream, last_of, hold
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept_loop, daemon=True).start()

    def _accept_loop(self):
        n = 0
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            n += 1
            delay = self.hold if n == self.last_of else 0
            threading.Thread(target=self._relay, args=(client, delay), daemon=True).start()

    def _relay(self, client, delay):
        threading.Event().wait(delay)
        with client, socket.create_connection(("127.0.0.1", self.upstream)) as server:
            back = threading.Thread(target=self._pump, args=(server, client), daemon=True)
            back.start()
            self._pump(client, server)
            back.join()

    @staticmethod
    def _pump(src, dst):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self):
        self.listener.close()


def main(t):
    tool = load_tool()
    if tool is None:
        t.skip_all("no sluice-load next to SLUICE_BACKEND")
    cert, key = t.make_cert()
    be = t.start_backend("app", "unix")
    port = st.free_port()
    conf = t.write_config([t.frontend(port, be.address, cert, key)], workers=1)
    sl = t.start_sluice(conf)
    want = RATE * SECONDS

    for mode, extra in (("full", ["-c", "16"]), ("keepalive", ["-c", "8"])):
        rc, f, err = run_load(tool, port, "-m", mode, "--rate", str(RATE), *extra)
        done = int(f.get("connections" if mode == "full" else "requests", "0"))
        t.ok(rc == 0 and f.get("offered") == "%.1f" % RATE and f.get("errors") == "0",
             "%s --rate %d: exit %s, offered=%s, errors=%s %s" % (mode, RATE, rc, f.get("offered"),
                                                                  f.get("errors"), err[-200:]))
        t.ok(0.8 * want <= done <= want + 1,
             "%s --rate %d for %.0f s: %d completed (want about %d, never more)"
             % (mode, RATE, SECONDS, done, want))
        p50 = float(f.get("p50_ms", "inf"))
        t.ok(p50 < st.scaled(FAST_MS),
             "%s --rate %d: half complete within %.1f ms of falling due (bound %.0f ms; an "
             "arrival interval is %d ms)" % (mode, RATE, p50, st.scaled(FAST_MS), 1000 // RATE))

    conns = 8
    relay = HoldingRelay(port, conns, HOLD)
    rc, f, err = run_load(tool, relay.port, "-m", "keepalive", "-c", str(conns), "--rate",
                          str(RATE))
    relay.close()
    done = int(f.get("requests", "0"))
    most = RATE * (SECONDS - HOLD) + 2
    t.ok(rc == 0 and f.get("errors") == "0",
         "keepalive --rate, one of %d connections held %.0f s: exit %s, errors=%s %s"
         % (conns, HOLD, rc, f.get("errors"), err[-200:]))
    t.ok(0.25 * want <= done <= most,
         "keepalive --rate %d: no request falls due before all %d connections are up: %d "
         "completed in %.0f s with the last one held %.0f s (want %d to %d; a schedule per "
         "connection completes about %d)" % (RATE, conns, done, SECONDS, HOLD, 0.25 * want,
                                             most, want * (conns - 1) // conns))

    rc, _, err = run_load(tool, port, "-m", "bulk", "--rate", "5")
    t.ok(rc == 2 and "--rate applies to full, resume and keepalive only" in err,
         "--rate with bulk is refused (exit %s: %s)" % (rc, err.strip()[-120:]))
    sl.stop_and_check()


st.Test("load-rate").main(main)
