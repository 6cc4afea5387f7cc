#!/usr/bin/env python3
# Who closes first. When the backend ends its stream, sluice sends close_notify and then
# ends the client's TCP stream too (FIN), as a server that closes would, while the
# client's own direction stays open: a client that waits for the end of the stream sees
# it at once, not after close-timeout, and its close then answers sluice's, so the
# TIME_WAIT is sluice's. A client in front that opens many connections (a balancer, a
# load tool) then does not fill its source ports with TIME_WAIT sockets.
import re
import shutil
import socket
import ssl
import time

import sluicetest as st
import tlsclient as tc

CONNECTIONS = 5
CLOSE_TIMEOUT = 10


def request(port, cert):
    """A TLS 1.3 connection that has read its answer up to close_notify: (socket, answer)."""
    s = tc.connect(port, cert, timeout=CLOSE_TIMEOUT * 2, version=ssl.TLSVersion.TLSv1_3)
    s.sendall(b"GET / HTTP/1.0\r\n\r\n")
    answer, how = tc.read_to_close(s, st.scaled(10))
    return s, answer if how == "close_notify" else b""


def request_then_wait_for_fin(port, cert):
    """The answer, then the raw stream up to its end: (answer, what the stream held after
    close_notify, seconds until its end, client port)."""
    s, answer = request(port, cert)
    t0 = time.monotonic()
    client_port = s.getsockname()[1]
    plain = socket.socket(fileno=s.detach())
    plain.settimeout(CLOSE_TIMEOUT * 2)
    rest = plain.recv(4096)  # b"": the end of the stream
    elapsed = time.monotonic() - t0
    plain.close()
    return answer, rest, elapsed, client_port


def request_then_close(port, cert):
    """The answer, then a close at once, as a load tool or a balancer does (after a moment,
    so that no close crosses sluice's FIN on the wire): (answer, client port)."""
    s, answer = request(port, cert)
    client_port = s.getsockname()[1]
    time.sleep(0.01)
    s.close()
    return answer, client_port


def time_wait_ports(port):
    """Client ports of the TIME_WAIT sockets, seen from each side."""
    rc, out, _, _ = st.run(["ss", "-tanH", "state", "time-wait"], timeout=st.scaled(5))
    client_side, server_side = set(), set()
    for ln in out.decode(errors="replace").splitlines():
        m = re.search(r"127\.0\.0\.1:(\d+)\s+127\.0\.0\.1:(\d+)", ln)
        if not m:
            continue
        local, peer = int(m.group(1)), int(m.group(2))
        if peer == port:
            client_side.add(local)
        elif local == port:
            server_side.add(peer)
    return client_side, server_side


def main(t):
    if shutil.which("ss") is None:
        t.skip_all("ss (iproute2) is not installed")
    cert, key = t.make_cert()
    be = t.start_backend("app", "unix")
    port = st.free_port()
    conf = t.write_config([t.frontend(port, be.address, cert, key)],
                          close_timeout=CLOSE_TIMEOUT)
    sl = t.start_sluice(conf)
    results = [request_then_wait_for_fin(port, cert) for _ in range(CONNECTIONS)]
    t.ok(all(b"hello from app" in a for a, _, _, _ in results),
         "%d requests got their answers, then close_notify" % CONNECTIONS)
    slowest = max(e for _, _, e, _ in results)
    t.ok(all(r == b"" for _, r, _, _ in results) and slowest < st.scaled(1),
         "after close_notify the client's stream ended within %.3f s (bound %.1f s; "
         "close-timeout is %d s)" % (slowest, st.scaled(1), CLOSE_TIMEOUT))
    closers = [request_then_close(port, cert) for _ in range(CONNECTIONS)]
    t.ok(all(b"hello from app" in a for a, _ in closers),
         "%d more requests got their answers; these clients close after close_notify"
         % CONNECTIONS)
    time.sleep(0.5)  # sluice has read their FINs and closed
    ports = {p for _, p in closers}
    client_side, server_side = time_wait_ports(port)
    t.ok(not (ports & client_side) and ports <= server_side,
         "the TIME_WAIT is sluice's, not the clients': %d of %d on sluice's side, %d on "
         "the clients'" % (len(ports & server_side), len(ports), len(ports & client_side)))
    sl.stop_and_check()


st.Test("close-order").main(main)
