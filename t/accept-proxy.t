#!/usr/bin/env python3
# accept-proxy = true (issue 6, "PROXY protocol" second half; test 7, the receiving side):
# a frontend behind a load balancer reads a v1 or v2 PROXY header before the handshake.
# 1. Valid headers, each sent in one write with the ClientHello right behind it: v1 TCP4,
#    v1 TCP6, v2 IPv4 (with TLVs, skipped), v2 IPv6: the request is served, the backend's
#    own v2 header carries the header's source and destination byte for byte, and the
#    connection log names the header's client address and port.
# 2. v2 LOCAL and v1 UNKNOWN: served with the connection's real addresses.
# 3. A slow balancer: v1 and v2 headers cut into pieces with pauses (a CR alone, its LF
#    with the ClientHello): served, addresses carried.
# 4. Truncated headers whose client then stalls: closed at handshake-timeout (state
#    proxy_in), holding no handshake permit meanwhile (sluicestat), counted as handshakes
#    in progress, without spinning (few wake-ups), while a real client is served with a
#    single permit. Truncated then EOF: closed at once, the reason logged.
# 5. Oversized (v1 without CRLF in 107 bytes, v2 length 3000), garbage (a bare TLS
#    ClientHello, random bytes, an HTTP request) and malformed headers: closed at once with
#    a logged reason naming the problem; a connect-and-close is an abort, not an error.
# 6. Afterwards the worker still serves, nothing unexpected reached the backend, and the
#    log holds no unexpected error (stop_and_check).
# 7. A frontend without accept-proxy sees a header as garbage: the handshake fails.
# How the checks fail without the feature: without accept-proxy support no handshake
# behind a header succeeds; a reader that takes bytes past the header breaks the
# handshake; addresses not carried over fail the byte-exact and log checks; a reader that
# leaves peeked bytes unread spins and is closed as "spinning", not at the timeout; a
# deadline restarted at the handshake, or a permit taken at accept, fails the stall checks.
import hashlib
import json
import os
import re
import socket
import ssl
import struct
import time

import proxyproto as pp
import sluicetest as st
import tlsclient as tc

PAYLOAD = 4096
HS_TIMEOUT = st.scaled(4)  # handshake-timeout: a prompt close is well under it
PROMPT = st.scaled(2)


def client_hello_flight(port, cafile):
    """A TLS client over memory BIOs whose ClientHello is made but not sent yet."""
    bc = tc.BioClient(port, cafile, timeout=st.scaled(10))
    try:
        bc.obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return bc, bc.pending_wire()


def exchange(port, cafile, header, pieces=None, pause=0.2):
    """Send header and the ClientHello in one write (or the header's pieces with pauses,
    the last one together with the ClientHello), finish the handshake, send "N\\n" and N
    bytes, read to the close. Returns what the client saw."""
    data = os.urandom(PAYLOAD)
    bc, hello = client_hello_flight(port, cafile)
    local = bc.sock.getsockname()
    try:
        if pieces:
            for piece in pieces[:-1]:
                bc.send_raw(piece)
                time.sleep(pause)
            bc.send_raw(pieces[-1] + hello)
        else:
            bc.send_raw(header + hello)
        bc.handshake()
        bc.send(b"%d\n" % PAYLOAD + data)
        answer, how = bc.read_to_close(st.scaled(10))
    except (OSError, ssl.SSLError) as e:
        answer, how = b"", "%s: %s" % (type(e).__name__, e)
    finally:
        bc.close()
    return {"src": local[0], "sport": local[1], "answer": answer, "how": how,
            "sha": hashlib.sha256(data).hexdigest()}


def addr_block(family, src, dst, sport, dport):
    return (socket.inet_pton(family, src) + socket.inet_pton(family, dst)
            + struct.pack(">HH", sport, dport))


def record_of(sl, client, port):
    """The connection log record of client:port, or None."""
    hits = sl.wait_log(r"event=connection client=%s client_port=%d " % (re.escape(client), port),
                       timeout=st.scaled(5))
    return hits[-1] if hits else None


def check_served(t, be, what, seen, family, src, dst, sport, dport, sl, fe_port):
    """Served; the backend's header carries src/dst byte for byte; the log names src."""
    rec = be.next_record(st.scaled(10))
    want = b"OK %d %s\n" % (PAYLOAD, seen["sha"].encode())
    t.ok(seen["answer"] == want and rec.get("n") == PAYLOAD,
         "%s: served (client saw %r, %s)" % (what, seen["answer"][:60], seen["how"]))
    if "error" in rec:
        t.diag("  backend: %s" % rec["error"])
    raw = rec.get("header", b"")
    n = 4 if family == socket.AF_INET else 16
    fam = 0x11 if family == socket.AF_INET else 0x21
    want_block = addr_block(family, src, dst, sport, dport)
    got_block = raw[16:16 + 2 * n + 4]
    t.ok(raw[:12] == pp.V2_SIGNATURE and raw[12:14] == bytes([0x21, fam])
         and got_block == want_block,
         "%s: the backend's v2 header carries %s:%d -> %s:%d byte for byte"
         % (what, src, sport, dst, dport))
    if got_block != want_block:
        t.diag("  got  %s (family 0x%02x)" % (got_block.hex(), raw[13] if len(raw) > 13 else -1))
        t.diag("  want %s" % want_block.hex())
    line = record_of(sl, src, sport)
    t.ok(line is not None and "frontend=127.0.0.1:%d " % fe_port in line,
         "%s: the connection log names client=%s client_port=%d" % (what, src, sport))


def sluicestat(t):
    rc, out, err, _ = st.run([st.SLUICESTAT, "-j", "-f", t.path("sluice.stats")],
                             timeout=st.scaled(10))
    return json.loads(out) if rc == 0 else None


def bad_client(port, data, fin=False):
    """Send data (then FIN), wait for the close. Returns (local port, how, elapsed)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=st.scaled(5))
    lport = s.getsockname()[1]
    if data:
        s.sendall(data)
    if fin:
        s.shutdown(socket.SHUT_WR)
    how, el, _ = tc.wait_closed(s, PROMPT)
    s.close()
    return lport, how, el


def check_bad(t, sl, port, what, data, error, fin=False, reason="handshake_error"):
    lport, how, el = bad_client(port, data, fin)
    t.ok(how in ("eof", "reset") and el < PROMPT,
         "%s: closed at once (%s after %.3f s)" % (what, how, el))
    line = record_of(sl, "127.0.0.1", lport)
    if error is None:
        ok = line is not None and "reason=%s " % reason in line and line.endswith("error=-")
    else:
        ok = (line is not None and "reason=%s state=proxy_in " % reason in line
              and 'error="PROXY header: %s' % error in line)
    t.ok(ok, "%s: logged as %s%s" % (what, reason, "" if error is None else ": " + error))
    if not ok:
        t.diag("  record: %s" % line)


def garbage():
    """Random bytes that start like neither a v1 ('P') nor a v2 ('\\r') header."""
    while True:
        b = tc.random_garbage(512)
        if b[0] not in b"P\r":
            return b


def main(t):
    if not st.SLUICESTAT or not os.path.exists(st.SLUICESTAT):
        t.skip_all("sluicestat is not built (SLUICESTAT=%r)" % st.SLUICESTAT)
    cert, key = t.make_cert()
    be = pp.Backend()
    t.cleanups.append(be.close)
    port, plain_port = st.free_ports(2)
    fes = [t.frontend(port, be.address, cert, key, **{"accept-proxy": True,
                                                      "proxy-protocol": "v2"}),
           t.frontend(plain_port, be.address, cert, key, **{"proxy-protocol": "v2"})]
    conf = t.write_config(fes, workers=1, log_connections=True, handshake_timeout=HS_TIMEOUT,
                          handshake_permits=1)
    sl = t.start_sluice(conf)
    served = 0

    def valid(what, family, src, dst, sport, dport, header, **kw):
        nonlocal served
        seen = exchange(port, cert, header, **kw)
        served += 1
        check_served(t, be, what, seen, family, src, dst, sport, dport, sl, port)

    # 1. valid headers, the ClientHello in the same write
    v4, v6 = socket.AF_INET, socket.AF_INET6
    valid("v1 TCP4", v4, "192.0.2.7", "198.51.100.1", 51234, 443,
          pp.v1(v4, "192.0.2.7", "198.51.100.1", 51234, 443))
    valid("v1 TCP6", v6, "2001:db8::7", "2001:db8:1::443", 40001, 8443,
          pp.v1(v6, "2001:db8::7", "2001:db8:1::443", 40001, 8443))
    tlvs = pp.tlv(pp.PP2_TYPE_AUTHORITY, "forged.example") + pp.tlv(0x04, b"")  # 0x04: NOOP
    valid("v2 IPv4 with TLVs", v4, "203.0.113.9", "198.51.100.2", 65535, 0,
          pp.v2(v4, "203.0.113.9", "198.51.100.2", 65535, 0, tlvs))
    valid("v2 IPv6", v6, "2001:db8::9", "::1", 1, 443,
          pp.v2(v6, "2001:db8::9", "::1", 1, 443, b""))

    # 2. LOCAL and UNKNOWN: the connection's own addresses
    for what, header in (("v2 LOCAL", pp.v2_local()), ("v1 UNKNOWN", pp.V1_UNKNOWN)):
        seen = exchange(port, cert, header)
        served += 1
        check_served(t, be, what, seen, v4, "127.0.0.1", "127.0.0.1", seen["sport"], port, sl,
                     port)

    # 3. a slow balancer: the header in pieces with pauses
    h1 = pp.v1(v4, "192.0.2.33", "198.51.100.3", 1234, 443)
    valid("v1 in pieces (CR alone, LF with the ClientHello)", v4, "192.0.2.33",
          "198.51.100.3", 1234, 443, h1, pieces=[h1[:3], h1[3:20], h1[20:-1], h1[-1:]])
    h2 = pp.v2(v6, "2001:db8::33", "2001:db8::1", 4321, 443, tlvs)
    valid("v2 in pieces (inside the signature, the length, the addresses)", v6,
          "2001:db8::33", "2001:db8::1", 4321, 443, h2,
          pieces=[h2[:5], h2[5:15], h2[15:30], h2[30:]])

    # 4. truncated headers, then the client stalls; and a header that comes late, then no
    #    ClientHello: its deadline still counts from accept
    t0 = time.monotonic()
    stalled = []
    for data in (pp.v2(v4, "192.0.2.50", "198.51.100.5", 1, 2, b"")[:10],
                 b"PROXY TCP4 192.0.2.50 ", b""):
        s = socket.create_connection(("127.0.0.1", port), timeout=st.scaled(5))
        s.sendall(data)
        stalled.append(s)
    late = stalled.pop()
    time.sleep(0.5)
    before = sluicestat(t)
    time.sleep(1.0)
    after = sluicestat(t)
    if before is None or after is None:
        t.ok(False, "sluicestat -j reads the stats file")
        t.skip("no stats", 1)
    else:
        hs = [w["active_handshakes"] for w in after["workers"]]
        t.ok(after["master"]["permits_in_use"] == 0 and sum(hs) == 3,
             "three connections waiting for their header: no permit in use (%d), three "
             "handshakes in progress (%s)" % (after["master"]["permits_in_use"], hs))
        woke = (after["totals"]["counters"]["wakeups"]
                - before["totals"]["counters"]["wakeups"])
        t.ok(woke < 20, "truncated headers do not spin: %d wake-ups in a second" % woke)
    late.sendall(pp.v1(v4, "192.0.2.60", "198.51.100.6", 6060, 443))
    late_at = time.monotonic() - t0
    seen = exchange(port, cert, pp.v1(v4, "192.0.2.51", "198.51.100.5", 5151, 443))
    served += 1
    check_served(t, be, "while they stall, with one permit", seen, v4, "192.0.2.51",
                 "198.51.100.5", 5151, 443, sl, port)
    closed = tc.watch_closes(stalled + [late], until=t0 + HS_TIMEOUT + st.scaled(3))
    at = closed.get(late)
    t.ok(at is not None and HS_TIMEOUT - 0.3 <= at - t0 < HS_TIMEOUT + late_at / 2,
         "header after %.1f s, then no ClientHello: closed at handshake-timeout %.1f s from "
         "accept (after %s s)" % (late_at, HS_TIMEOUT, "%.2f" % (at - t0) if at else "never"))
    line = record_of(sl, "192.0.2.60", 6060)
    t.ok(line is not None and "reason=handshake_timeout state=handshake " in line,
         "... logged as handshake_timeout in state handshake, under the header's address")
    late.close()
    for s, what in zip(stalled, ("v2 cut after 10 bytes", "v1 cut before its CRLF")):
        at = closed.get(s)
        t.ok(at is not None and at - t0 >= HS_TIMEOUT - 0.3,
             "%s, stalled: closed at handshake-timeout %.1f s (after %s s)"
             % (what, HS_TIMEOUT, "%.2f" % (at - t0) if at else "never"))
        line = record_of(sl, "127.0.0.1", s.getsockname()[1])
        t.ok(line is not None and "reason=handshake_timeout state=proxy_in " in line,
             "%s, stalled: logged as handshake_timeout in state proxy_in" % what)
        if line is None or "reason=handshake_timeout" not in line:
            t.diag("  record: %s" % line)
        s.close()

    # truncated, then EOF
    check_bad(t, sl, port, "v2 cut after 10 bytes, then EOF",
              pp.v2(v4, "192.0.2.52", "198.51.100.5", 1, 2, b"")[:10],
              "truncated, EOF after 10 bytes", fin=True)
    check_bad(t, sl, port, "v1 cut before its CRLF, then EOF", b"PROXY TCP4 192.0.2.52",
              "truncated, EOF after 21 bytes", fin=True)
    check_bad(t, sl, port, "connect and close", b"", None, fin=True, reason="handshake_aborted")

    # 5. oversized, garbage, malformed
    cases = [
        ("v1 without CRLF within 107 bytes", b"PROXY TCP4 " + b"1" * 150,
         "PROXY v1: no CRLF within 107 bytes"),
        ("v2 length 3000", pp.v2_raw(0x21, 0x11, bytes(3000))[:200],
         "PROXY v2: length 3000 exceeds 1024"),
        ("a TLS ClientHello without a header", tc.client_hello(),
         "not a PROXY header: starts with 16 03"),
        ("random bytes", garbage(), "not a PROXY header: starts with "),
        ("an HTTP request", b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
         "not a PROXY header: starts with 47 45 54 20"),
        ("v1 with source address 1.2.3", b"PROXY TCP4 1.2.3 198.51.100.1 1 2\r\n",
         "PROXY v1: bad source address '1.2.3'"),
        ("v1 with a leading zero in a port", b"PROXY TCP4 192.0.2.1 198.51.100.1 0443 2\r\n",
         "PROXY v1: bad source port '0443'"),
        ("v1 with an IPv6 address under TCP4", b"PROXY TCP4 ::1 198.51.100.1 1 2\r\n",
         "PROXY v1: bad source address '::1'"),
        ("v2 version 3", pp.v2_raw(0x31, 0x11, bytes(12)), "PROXY v2: unsupported version 3"),
        ("v2 over UDP", pp.v2_raw(0x21, 0x12, bytes(12)),
         "PROXY v2: unsupported address family and transport 0x12"),
        ("v2 IPv6 in 12 bytes", pp.v2_raw(0x21, 0x21, bytes(12)),
         "PROXY v2: 12 bytes cannot hold the addresses of family 0x21"),
        ("v2 with a TLV past its end", pp.v2_raw(0x21, 0x11, bytes(12) + b"\x04\x00\x09ab"),
         "PROXY v2: TLV 0x04 of 9 bytes runs past the header"),
    ]
    for what, data, error in cases:
        check_bad(t, sl, port, what, data, error)

    # 6. still serving, and only the served connections reached the backend
    valid("after all that", v4, "192.0.2.99", "198.51.100.9", 9999, 443,
          pp.v1(v4, "192.0.2.99", "198.51.100.9", 9999, 443))
    t.ok(sl.alive(), "sluice is alive")

    # 7. without accept-proxy a header is garbage to TLS
    seen = exchange(plain_port, cert, pp.v1(v4, "192.0.2.77", "198.51.100.7", 7777, 443))
    t.ok(seen["answer"] == b"", "no accept-proxy: the handshake behind a header fails (%s)"
         % seen["how"])
    line = record_of(sl, "127.0.0.1", seen["sport"])
    t.ok(line is not None and "reason=handshake_error state=handshake " in line,
         "no accept-proxy: logged as handshake_error in state handshake")
    seen = exchange(plain_port, cert, b"")
    served += 1
    check_served(t, be, "no accept-proxy, no header", seen, v4, "127.0.0.1", "127.0.0.1",
                 seen["sport"], plain_port, sl, plain_port)
    time.sleep(0.2)
    t.ok(be.records.empty(), "the backend saw the %d served connections, nothing else" % served)
    sl.stop_and_check()


st.Test("accept-proxy").main(main)
