#!/usr/bin/env python3
# Workers forked from one master draw different random bytes. The master draws some
# before it forks (the session-ticket key), so every worker starts with a copy of its
# random generator; OpenSSL reseeds a copy when getpid() says it runs in a new process.
# sluice answers getpid() from memory (lib/getpid.c), forgotten in each child of fork:
# if a child kept its parent's answer, two workers would hand out the same ServerHello
# randoms, key shares and ticket nonces, connection for connection. Also after a worker
# is replaced, and after a reload (HUP) forks a new generation of workers.
import os
import signal
import ssl

import sluicetest as st
import tlsclient as tc

CONNECTIONS = 40
RANDOM = slice(11, 43)  # record header 5, handshake header 4, version 2: then 32 bytes


class CopyingBio:
    """Stands in for a BioClient's incoming MemoryBIO where it feeds it, keeping a copy
    of the first bytes that came from the server."""

    def __init__(self, bio):
        self.bio = bio
        self.first = bytearray()

    def write(self, data):
        if len(self.first) < RANDOM.stop:
            self.first += data
        return self.bio.write(data)

    def write_eof(self):
        self.bio.write_eof()


def server_random(port, cert, workers):
    """(worker pid, ServerHello random) of one TLS 1.3 connection with one request."""
    c = tc.BioClient(port, cert, timeout=st.scaled(10), version=ssl.TLSVersion.TLSv1_3)
    copy = c.inc = CopyingBio(c.inc)
    try:
        c.handshake()
        owner = st.server_socket_owner(c.sock, workers)
        c.send(b"GET / HTTP/1.0\r\n\r\n")
        c.read_to_close(st.scaled(10))
    finally:
        c.close()
    hello = bytes(copy.first)
    if len(hello) < RANDOM.stop or hello[0] != 22 or hello[5] != 2:
        return owner, None
    return owner, hello[RANDOM]


def collect(t, sl, port, cert, what):
    """Randoms of CONNECTIONS connections; checks both workers served some."""
    workers = sl.worker_pids()
    randoms = {}
    for _ in range(CONNECTIONS):
        owner, rnd = server_random(port, cert, workers)
        randoms.setdefault(owner, []).append(rnd)
    served = {p: len(randoms.get(p, [])) for p in workers}
    t.ok(len(workers) == 2 and all(n > 0 for n in served.values()),
         "%s: both workers served connections (%s)" % (what, served))
    got = [r for rs in randoms.values() for r in rs]
    t.ok(all(r is not None for r in got),
         "%s: a ServerHello came first on all %d connections" % (what, len(got)))
    return got


def check_distinct(t, randoms, what):
    seen = [r for r in randoms if r is not None]
    t.ok(len(set(seen)) == len(seen),
         "%s: no two ServerHello randoms alike (%d distinct of %d)"
         % (what, len(set(seen)), len(seen)))


def main(t):
    cert, key = t.make_cert()
    be = t.start_backend("app", "unix")
    port = st.free_port()
    conf = t.write_config([t.frontend(port, be.address, cert, key)], workers=2)
    sl = t.start_sluice(conf)
    sl.wait_workers(2)

    first = collect(t, sl, port, cert, "two workers of one master")
    check_distinct(t, first, "two workers of one master")

    victim = sl.worker_pids()[0]
    os.kill(victim, signal.SIGKILL)
    t.ok(sl.wait_workers(2, exclude=[victim]), "the killed worker was replaced")
    replaced = collect(t, sl, port, cert, "after a worker was replaced")
    check_distinct(t, first + replaced, "before and after a worker was replaced")

    generation = sl.worker_pids()
    os.kill(sl.pid, signal.SIGHUP)
    t.ok(sl.wait_workers(2, exclude=generation), "a reload forked two new workers")
    reloaded = collect(t, sl, port, cert, "after a reload")
    check_distinct(t, first + replaced + reloaded, "across all three generations")
    sl.stop_and_check()


st.Test("fork-random").main(main)
