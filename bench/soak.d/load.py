#!/usr/bin/env python3
"""The soak's steady load: `load.py PORT CAFILE SEED`, run until SIGTERM.

Threads keep a realistic mix going, every transfer checked (soakclient.py):
  short     new connection, one transfer of 16 B..64 KB, then close (clean or abrupt);
            TLS 1.2 or 1.3 at random, half of them offering the last session (resumed)
  keepalive one connection, 2..20 transfers of 16 B..256 KB with pauses of up to 0.2 s
  large     one connection, 1..2 transfers of 1..8 MB
Prints one JSON line of counters every 10 s and a last one ("final": true) when it
stops; mismatches in detail go to standard error as well.
"""

import json
import os
import random
import signal
import ssl
import sys
import threading
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import soakclient as sc  # noqa: E402

SHORT_THREADS = 6
KEEPALIVE_THREADS = 3
LARGE_THREADS = 1
PROGRESS_EVERY = 10.0


class Load:
    def __init__(self, port, cafile, seed):
        self.port = port
        self.seed = seed
        self.pool = sc.make_pool(seed)
        self.ctx = {v: sc.context(cafile, v)
                    for v in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3)}
        self.tally = sc.Tally()
        self.stop = threading.Event()
        self.counter = 0
        self.lock = threading.Lock()

    def ids(self, tag):
        def next_id():
            with self.lock:
                self.counter += 1
                return b"%s-%d" % (tag, self.counter)
        return next_id

    def version(self, rnd):
        return rnd.choice(list(self.ctx))

    def short(self, n):
        rnd = random.Random("%s-short-%d" % (self.seed, n))
        ids = self.ids(b"s%d" % n)
        sessions = {}
        while not self.stop.is_set():
            v = self.version(rnd)
            offer = sessions.get(v) if rnd.random() < 0.5 else None
            sess = sc.run_connection(self.port, self.ctx[v], self.tally, "short", ids,
                                     [sc.log_uniform(rnd, 16, 65536)], self.pool, rnd,
                                     session=offer,
                                     close=rnd.choice(("clean", "clean", "abrupt")))
            if sess is not None:
                sessions[v] = sess
            self.stop.wait(rnd.uniform(0, 0.1))

    def keepalive(self, n):
        rnd = random.Random("%s-keepalive-%d" % (self.seed, n))
        ids = self.ids(b"k%d" % n)
        while not self.stop.is_set():
            sizes = [sc.log_uniform(rnd, 16, 262144) for _ in range(rnd.randint(2, 20))]
            sc.run_connection(self.port, self.ctx[self.version(rnd)], self.tally, "keepalive",
                              ids, sizes, self.pool, rnd, think=(0, 0.2), stop=self.stop)
            self.stop.wait(rnd.uniform(0, 0.2))

    def large(self, n):
        rnd = random.Random("%s-large-%d" % (self.seed, n))
        ids = self.ids(b"l%d" % n)
        while not self.stop.is_set():
            sizes = [rnd.randint(1 << 20, 8 << 20) for _ in range(rnd.randint(1, 2))]
            sc.run_connection(self.port, self.ctx[self.version(rnd)], self.tally, "large",
                              ids, sizes, self.pool, rnd, stop=self.stop)
            self.stop.wait(rnd.uniform(0, 0.5))

    def report(self, final=False):
        snap = self.tally.snapshot()
        snap["final"] = final
        print(json.dumps(snap), flush=True)

    def guarded(self, kind, n):
        """A bug here must show, not quietly thin the load out."""
        while not self.stop.is_set():
            try:
                kind(n)
            except Exception:
                self.tally.add("load.exceptions")
                traceback.print_exc()
                self.stop.wait(1)

    def run(self):
        threads = []
        for kind, count in ((self.short, SHORT_THREADS), (self.keepalive, KEEPALIVE_THREADS),
                            (self.large, LARGE_THREADS)):
            for n in range(count):
                th = threading.Thread(target=self.guarded, args=(kind, n), daemon=True)
                th.start()
                threads.append(th)
        while not self.stop.wait(PROGRESS_EVERY):
            self.report()
        # Every thread ends its connection's current transfer (each bounded by IDLE).
        deadline = time.monotonic() + 3 * sc.IDLE
        for th in threads:
            th.join(max(0.0, deadline - time.monotonic()))
        still = sum(1 for th in threads if th.is_alive())
        if still:
            self.tally.add("load.threads_not_finished", still)
        for m in self.tally.snapshot()["mismatches"]:
            print("mismatch: %s" % json.dumps(m), file=sys.stderr, flush=True)
        self.report(final=True)


def main():
    if len(sys.argv) != 4:
        sys.exit("usage: load.py PORT CAFILE SEED")
    load = Load(int(sys.argv[1]), sys.argv[2], int(sys.argv[3]))
    signal.signal(signal.SIGTERM, lambda *a: load.stop.set())
    signal.signal(signal.SIGINT, lambda *a: load.stop.set())
    load.run()


if __name__ == "__main__":
    main()
