#!/usr/bin/env python3
# What a short TLS connection costs in system calls of the worker, counted by strace over
# a run of sequential connections (connect, TLS 1.3 handshake, one request, the answer and
# close_notify, the client closes). Every call costs a kernel entry, and on a virtual
# machine an expensive one; these are the calls sluice used to make for nothing:
# - a descriptor reserve made before an accept that then said EAGAIN, and closed again;
# - a descriptor reserve of its own (an eventfd) per client, closed again at the backend
#   connect: the reserve is now the backend socket itself, made early;
# - shutdown(2) of a backend socket that close(2) ends a moment later anyway (a client
#   socket does get one, after close_notify: t/close-order.t);
# - a read for unread input on a client whose end of stream was already read;
# - a read of a client socket that the read before had emptied, with no readiness since:
#   OpenSSL asks for the next record right after the ClientHello, before the server's
#   flight has even left, and recv(2) could only say EAGAIN;
# - getpid(2), nine times per handshake: OpenSSL's fork check on every draw of random
#   bytes (lib/getpid.c answers from memory; t/fork-random.t checks the forks);
# - a read of a backend socket that a short read had just emptied, on every answer of a
#   backend that keeps its connection open: it is made once, to catch the EOF of a backend
#   that answers and closes, and no more once it has found the socket empty.
import re
import shutil
import signal
import ssl
import subprocess
import time

import sluicetest as st
import tlsclient as tc

CONNECTIONS = 20
EXCHANGES = 30  # request and answer on one connection to a backend that stays open


def one_request(port, cert):
    with tc.connect(port, cert, timeout=st.scaled(10), version=ssl.TLSVersion.TLSv1_3) as s:
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        return tc.read_to_close(s, st.scaled(10))[0]


def echo_exchanges(port, cert, n):
    """One TLS connection to the test backend's ECHO: n messages, each echoed before the
    next goes. Returns how many came back whole."""
    whole = 0
    with tc.connect(port, cert, timeout=st.scaled(10), version=ssl.TLSVersion.TLSv1_3) as s:
        s.sendall(b"ECHO\n")
        for i in range(n):
            msg = b"message %d\n" % i
            s.sendall(msg)
            got = b""
            while len(got) < len(msg):
                chunk = s.recv(len(msg) - len(got))
                if not chunk:
                    return whole
                got += chunk
            whole += got == msg
    return whole


def trace_worker(t, pid, path):
    """strace attached to pid, writing path; returns once it traces."""
    tracer = st.spawn(["strace", "-p", str(pid), "-o", path,
                       "-e", "trace=accept4,socket,eventfd2,connect,shutdown,recvfrom,close,"
                       "getpid"],
                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + st.scaled(10)
    while time.monotonic() < deadline:
        try:
            with open("/proc/%d/status" % pid) as f:
                if re.search(r"^TracerPid:\s*%d$" % tracer.pid, f.read(), re.M):
                    return tracer
        except OSError:
            break
        time.sleep(0.05)
    t.diag("strace did not attach to %d" % pid)
    return tracer


def stop_trace(tracer, path):
    """Stops the strace; returns the calls it saw."""
    # The worker closes each connection once the client's FIN is in: let the last one go.
    time.sleep(st.scaled(0.5))
    tracer.send_signal(signal.SIGINT)
    tracer.wait(timeout=st.scaled(10))
    with open(path) as f:
        return [ln for ln in f.read().splitlines() if re.match(r"\w+\(", ln)]


def backend_shutdowns(calls):
    """shutdown(2) calls on backend sockets: descriptors a socket(AF_UNIX) call returned
    (clients' come from accept4, and get theirs after close_notify)."""
    backend, n = set(), 0
    for ln in calls:
        m = re.match(r"socket\(AF_UNIX\b.*\) = (\d+)$", ln)
        if m:
            backend.add(int(m.group(1)))
            continue
        m = re.match(r"(?:accept4|eventfd2)\(.*\) = (\d+)$", ln)
        if m:
            backend.discard(int(m.group(1)))
            continue
        m = re.match(r"shutdown\((\d+),", ln)
        if m and int(m.group(1)) in backend:
            n += 1
    return n


def empty_client_reads(calls):
    """Reads of client sockets (descriptors from accept4, until a socket call reuses the
    number for a backend) that said EAGAIN."""
    clients, n = set(), 0
    for ln in calls:
        m = re.match(r"(accept4|socket|eventfd2)\(.*\) = (\d+)$", ln)
        if m:
            (clients.add if m.group(1) == "accept4" else clients.discard)(int(m.group(2)))
            continue
        m = re.match(r"recvfrom\((\d+),.*\)\s+= -1 EAGAIN", ln)
        if m and int(m.group(1)) in clients:
            n += 1
    return n


def backend_reads(calls):
    """Per backend connection (connect(2) to a Unix socket, to its close), in order:
    [reads that moved bytes, reads that said EAGAIN]."""
    open_, done = {}, []
    for ln in calls:
        m = re.match(r"connect\((\d+), \{sa_family=AF_UNIX", ln)
        if m:
            open_[int(m.group(1))] = [0, 0]
            continue
        m = re.match(r"close\((\d+)\)", ln)
        if m and int(m.group(1)) in open_:
            done.append(open_.pop(int(m.group(1))))
            continue
        m = re.match(r"recvfrom\((\d+),.*\)\s+= (-1 EAGAIN|\d+)", ln)
        if m and int(m.group(1)) in open_:
            open_[int(m.group(1))][m.group(2).startswith("-1")] += 1
    return done + list(open_.values())


def main(t):
    if shutil.which("strace") is None:
        t.skip_all("strace is not installed")
    cert, key = t.make_cert()
    be = t.start_backend("app", "unix")
    port = st.free_port()
    conf = t.write_config([t.frontend(port, be.address, cert, key)], workers=1)
    sl = t.start_sluice(conf)
    for _ in range(2):  # warm: the worker's one-time allocations are not the subject
        one_request(port, cert)
    worker = sl.worker_pids()[0]
    path = t.path("worker.strace")
    tracer = trace_worker(t, worker, path)

    answers = [one_request(port, cert) for _ in range(CONNECTIONS)]
    t.ok(all(b"hello from app" in a for a in answers),
         "%d sequential TLS 1.3 requests got their answers" % CONNECTIONS)
    calls = stop_trace(tracer, path)

    def count(name, pattern=""):
        return sum(1 for ln in calls if ln.startswith(name + "(") and re.search(pattern, ln))

    accepted = count("accept4", r"\)\s+= \d+$")
    t.ok(accepted == CONNECTIONS,
         "the trace saw every connection accepted (%d of %d)" % (accepted, CONNECTIONS))
    made = accepted + count("socket", r"\)\s+= \d+$") + count("eventfd2", r"\)\s+= \d+$")
    t.ok(made <= 2 * CONNECTIONS + 1,
         "two descriptors made per client (its socket and its backend's), none for an "
         "accept that found no client: %d for %d connections" % (made, CONNECTIONS))
    closed = count("close", r"\)\s+= 0$")
    t.ok(2 * (CONNECTIONS - 1) <= closed <= 2 * CONNECTIONS + 1,
         "two descriptors closed per client: %d for %d connections" % (closed, CONNECTIONS))
    shutdowns = backend_shutdowns(calls)
    t.ok(shutdowns == 0,
         "no shutdown(2) of a backend socket about to be closed: %d calls" % shutdowns)
    empty = empty_client_reads(calls)
    t.ok(empty == 0,
         "no read of a client socket known to be empty: %d reads said EAGAIN" % empty)
    asked = count("getpid")
    t.ok(asked == 0, "no getpid(2) for %d connections: %d calls" % (CONNECTIONS, asked))
    probes = count("recvfrom", r"MSG_DONTWAIT")
    t.ok(probes == 0,
         "no read for unread input on clients that ended their stream: %d calls" % probes)

    path = t.path("worker-echo.strace")
    tracer = trace_worker(t, worker, path)
    echoed = echo_exchanges(port, cert, EXCHANGES)
    t.ok(echoed == EXCHANGES, "%d of %d messages echoed on one connection" % (echoed, EXCHANGES))
    busiest = max(backend_reads(stop_trace(tracer, path)), default=[0, 0])
    t.ok(busiest[0] >= EXCHANGES and busiest[1] <= 1,
         "a backend that stays open between %d answers: %d reads of its socket moved bytes, "
         "%d found it empty (at most 1)" % (EXCHANGES, busiest[0], busiest[1]))
    sl.stop_and_check()


st.Test("syscalls").main(main)
