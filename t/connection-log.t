#!/usr/bin/env python3
# The connection log (issue 5, "Connection log"). With log-connections = true every closed
# connection gives exactly one logfmt record, its keys always present and in order, its
# values quoted and escaped so that a hostile SNI can neither break the line nor forge a
# key, at the level of the connection's end and whatever log-level says:
# 1. every close reason that can be provoked over loopback, one record per connection;
# 2. the fields: client address and port, frontend, SNI, ALPN, TLS version, cipher,
#    resumption (TLS 1.3 and 1.2), plaintext bytes each way, handshake and total time;
# 3. hostile SNIs (quote, space, '=', newline, control and non-ASCII bytes);
# 4. log-connections = false (the default): no per-connection line at info level or
#    above, but a backend connect failure still gives its warning;
# 5. log-level = "error" with log-connections = true: the records are still written.
# How the checks fail without the feature: no record, or two, for a connection fails the
# per-port and count checks; a value written raw (unquoted, unescaped) fails the strict
# parser, and a raw newline leaves a log line without its header; a missing or moved key
# fails the key-order check; each field is compared with what the client itself did or
# saw (its port, the version and cipher Python or s_client negotiated, the session it
# resumed, the bytes it sent and received), so a wrong one fails its record's check;
# records filtered by log-level are missing at log-level error; with log-connections off,
# a record or an info "connection closed" line fails its check, and a missing warning
# fails the last one. The test's own parser is first shown to refuse malformed records.
import re
import socket
import ssl
import struct
import threading
import time

import sluicetest as st
import tlsclient as tc

KEYS = ["event", "client", "client_port", "frontend", "sni", "alpn", "tls", "cipher",
        "resumed", "handshake_ms", "bytes_client_to_backend", "bytes_backend_to_client",
        "duration_ms", "reason", "state", "error"]
HEADER = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z sluice\[(\d+)\]: "
                    r"(error|warning|info|debug): (.*)$")
SHORT = 1  # handshake-, idle-, close- and drain-timeout in the first sluice
REQUEST = b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n"


# --- a strict logfmt reader, and the writer it must agree with ----------------------------

def logfmt_parse(text):
    """[(key, value bytes)] of one record. Keys are [a-z_]+; pairs are separated by one
    space; a value is bare (printable ASCII but space, '"', '=', '\\') or quoted, with
    only the escapes \\" \\\\ \\n \\r \\t \\xHH inside. Raises ValueError on anything else."""
    pairs, i, n = [], 0, len(text)
    while True:
        m = re.compile(r"[a-z_]+=").match(text, i)
        if not m:
            raise ValueError("no key at offset %d: %r" % (i, text[i:i + 20]))
        key, i = text[i:m.end() - 1], m.end()
        if i < n and text[i] == '"':
            i += 1
            val = bytearray()
            while True:
                if i >= n:
                    raise ValueError("unterminated quoted value of %s" % key)
                ch = text[i]
                if ch == '"':
                    i += 1
                    break
                if ch == "\\":
                    esc = text[i + 1:i + 2]
                    if esc in ('"', "\\"):
                        val += esc.encode()
                        i += 2
                    elif esc in ("n", "r", "t"):
                        val += {"n": b"\n", "r": b"\r", "t": b"\t"}[esc]
                        i += 2
                    elif esc == "x" and re.fullmatch(r"[0-9a-fA-F]{2}", text[i + 2:i + 4]):
                        val.append(int(text[i + 2:i + 4], 16))
                        i += 4
                    else:
                        raise ValueError("bad escape %r in %s" % (text[i:i + 4], key))
                    continue
                if not " " <= ch <= "~":
                    raise ValueError("raw byte %r inside the quoted value of %s" % (ch, key))
                val += ch.encode()
                i += 1
            value = bytes(val)
        else:
            m = re.compile(r'[!#-<>-\[\]-~]+').match(text, i)  # printable, no " = \ space
            if not m:
                raise ValueError("empty or bad bare value of %s at offset %d" % (key, i))
            value, i = m.group(0).encode(), m.end()
        pairs.append((key, value))
        if i == n:
            return pairs
        if text[i] != " ":
            raise ValueError("junk after the value of %s: %r" % (key, text[i:i + 20]))
        i += 1


def logfmt_format(pairs):
    """The canonical text of pairs, as the contract says sluice writes them."""
    out = []
    for key, v in pairs:
        if v and all(0x21 <= b <= 0x7e and b not in b'"=\\' for b in v):
            out.append("%s=%s" % (key, v.decode()))
            continue
        s = ""
        for b in v:
            c = chr(b)
            if c in '"\\':
                s += "\\" + c
            elif c in "\n\r\t":
                s += {"\n": "\\n", "\r": "\\r", "\t": "\\t"}[c]
            elif b < 0x20 or b >= 0x7f:
                s += "\\x%02x" % b
            else:
                s += c
        out.append('%s="%s"' % (key, s))
    return " ".join(out)


def self_test_parser(t):
    """The reader must refuse what sluice must never write, or the record checks could
    not fail."""
    good = 'a=b c="x \\" y\\n\\x01" d=-'
    bad = ['a=b  c=d', 'a="x', 'a=b c', 'a=x"y', 'a="\\q"', 'A=b', 'a=', 'a="x\ny"',
           'a=b\tc=d']
    ok = logfmt_parse(good) == [("a", b"b"), ("c", b'x " y\n\x01'), ("d", b"-")]
    refused = []
    for text in bad:
        try:
            logfmt_parse(text)
        except ValueError:
            refused.append(text)
    t.ok(ok and refused == bad and logfmt_format(logfmt_parse(good)) == good,
         "the test's logfmt reader parses a good record and refuses %d malformed ones"
         % len(bad))


class Records:
    """The connection records of a sluice's log. all: those that parse with the right keys,
    [{key: value bytes, "_level", "_line"}]; count: every line that looks like one."""

    def __init__(self, t, sl):
        self.all, self.bad, self.order_bad, self.noncanonical, self.headless = [], [], [], [], []
        self.count = 0
        for ln in sl.run_log_lines():
            m = HEADER.match(ln)
            if not m:
                self.headless.append(ln)
                continue
            msg = m.group(3)
            if "event=connection" not in msg:
                continue
            self.count += 1
            try:
                pairs = logfmt_parse(msg)
            except ValueError as e:
                self.bad.append("%s: %s" % (e, ln))
                continue
            if [k for k, _ in pairs] != KEYS:
                self.order_bad.append(ln)
                continue
            if logfmt_format(pairs) != msg:
                self.noncanonical.append(ln)
            rec = {k: v for k, v in pairs}
            rec["_level"], rec["_line"] = m.group(2), ln
            self.all.append(rec)

    def by_port(self, port):
        return [r for r in self.all if r.get("client_port") == str(port).encode()]

    def by_sni(self, sni):
        return [r for r in self.all if r.get("sni") == sni]


def s(v):
    return v.decode(errors="replace") if isinstance(v, bytes) else str(v)


# --- clients ------------------------------------------------------------------------------

class ResettingBackend:
    """A TCP backend that reads the first bytes of each connection, then resets it
    (SO_LINGER 0, close). Reading first makes sure sluice is relaying by then: a reset
    that beat sluice's check of its connect would be a connect failure instead."""

    def __init__(self, t):
        self.srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen(16)
        self.address = "127.0.0.1:%d" % self.srv.getsockname()[1]
        t.cleanups.append(self.srv.close)
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        while True:
            try:
                c, _ = self.srv.accept()
            except OSError:
                return
            try:
                c.settimeout(10)
                c.recv(100)
            except OSError:
                pass
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            c.close()


def tls_client(port, cert, version=None, alpn=None, ctx=None, session=None, sni="localhost"):
    """A verifying Python ssl connection; returns (sock, client port)."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=st.scaled(10))
    cport = raw.getsockname()[1]
    ctx = ctx or tc.context(cert, version, alpn)
    try:
        return ctx.wrap_socket(raw, server_hostname=sni, session=session,
                               suppress_ragged_eofs=False), cport
    except BaseException:
        raw.close()
        raise


def request_close(s, data=REQUEST, timeout=None, box=None):
    """Send data, read to the server's close, close; returns (received, how). box, a
    dict, gets the session (taken before the close, which forgets it)."""
    s.sendall(data)
    got, how = tc.read_to_close(s, timeout or st.scaled(5))
    if box is not None:
        box["session"] = s.session
    s.close()
    return got, how


def s_client(t, port, cert, servername, extra=(), data=REQUEST):
    """openssl s_client with this -servername; returns (rc, stdout text)."""
    argv = ["openssl", "s_client", "-connect", "127.0.0.1:%d" % port, "-servername",
            servername, "-CAfile", cert, "-quiet", "-ign_eof"] + list(extra)
    rc, out, err, _ = st.run(argv, input=data, timeout=st.scaled(10))
    return rc, out.decode(errors="replace") + err.decode(errors="replace")


class Pinger:
    """A connection to the ECHO backend that sends one byte every 0.2 s (so idle-timeout
    never fires) and waits for its echo, until the server ends the connection."""

    def __init__(self, port, cert):
        self.t0 = time.monotonic()
        self.s, self.cport = tls_client(port, cert)
        self.s.sendall(b"ECHO\n")
        self.sent = 0
        self.got = 0
        self.how = None
        self.th = threading.Thread(target=self._run, daemon=True)
        self.th.start()

    def _run(self):
        try:
            while True:
                self.s.sendall(b"x")
                self.sent += 1
                self.s.settimeout(st.scaled(5))
                while self.got < self.sent:
                    d = self.s.recv(100)
                    if not d:
                        self.how = "close_notify"
                        return
                    self.got += len(d)
                time.sleep(0.2)
        except ssl.SSLEOFError:
            self.how = "eof"
        except (OSError, ssl.SSLError) as e:
            self.how = "%s: %s" % (type(e).__name__, e)

    def join(self, timeout):
        self.th.join(timeout)
        self.s.close()


# --- 1 and 2: every reason, every field ----------------------------------------------------

def every_reason(t, cert, key, be):
    reset_be = ResettingBackend(t)
    p_main, p_absent, p_reset = st.free_ports(3)
    fe_main = t.frontend(p_main, be.address, cert, key, alpn=["http/1.1"])
    fe_absent = t.frontend(p_absent, "unix:" + t.path("absent.sock"), cert, key)
    fe_reset = t.frontend(p_reset, reset_be.address, cert, key)
    conf = t.write_config([fe_main, fe_absent, fe_reset], workers=1, log_connections=True,
                          handshake_timeout=SHORT, idle_timeout=SHORT, close_timeout=SHORT,
                          drain_timeout=SHORT)
    sl = t.start_sluice(conf)
    listen = {p: "127.0.0.1:%d" % p for p in (p_main, p_absent, p_reset)}
    cases = []  # dicts: what, port (client port), fe, expect {key: value}, checks

    def case(what, cport, fe, **expect):
        cases.append({"what": what, "port": cport, "fe": fe, "expect": expect})

    # The slow ones first, so their timeouts run while the fast ones are made.
    # handshake_timeout: half a ClientHello, then nothing
    hs = socket.create_connection(("127.0.0.1", p_main), timeout=5)
    hs.sendall(tc.half_client_hello())
    case("half a ClientHello, then silence", hs.getsockname()[1], p_main,
         reason="handshake_timeout", state="handshake", sni="-", tls="-", cipher="-",
         handshake_ms="-", c2b=0, b2c=0, level="info", min_ms=SHORT * 900)
    # idle_timeout: a request the backend holds open (HOLD reads to EOF), then silence
    idle, idle_port = tls_client(p_main, cert)
    idle.sendall(b"HOLD\n")
    # close_timeout: the backend shuts its write side, the client keeps its own open
    closing = tc.BioClient(p_main, cert, timeout=st.scaled(5))
    closing_port = closing.sock.getsockname()[1]
    closing.handshake()
    closing.send(b"SHUTWR\n")
    t0_slow = time.monotonic()
    # drained: a connection kept busy until TERM (drain-timeout cuts it)
    pinger = Pinger(p_main, cert)

    # backend_close, TLS 1.3 forced, ALPN offered and configured; its session resumes below
    ctx13 = tc.context(cert, ssl.TLSVersion.TLSv1_3, ["http/1.1"])
    s13, port13 = tls_client(p_main, cert, ctx=ctx13)
    seen13 = (s13.version(), s13.cipher()[0], s13.selected_alpn_protocol(), s13.session_reused)
    box = {}
    got, how = request_close(s13, REQUEST, box=box)
    sess13 = box["session"]
    t.ok(got.startswith(b"HTTP/1.1 200 OK") and how == "close_notify" and seen13[0] ==
         "TLSv1.3" and seen13[2] == "http/1.1",
         "a TLS 1.3 request offering ALPN http/1.1 is answered (%s, %s, %s)"
         % (seen13[0], seen13[2], how))
    case("TLS 1.3 + ALPN, backend answers and closes", port13, p_main, reason="backend_close",
         state="closing", sni="localhost", tls="TLSv1.3", cipher=seen13[1], alpn="http/1.1",
         resumed="false", c2b=len(REQUEST), b2c=len(got), level="info")

    # backend_close, TLS 1.2 forced, no ALPN offered
    ctx12 = tc.context(cert, ssl.TLSVersion.TLSv1_2)
    s12, port12 = tls_client(p_main, cert, ctx=ctx12)
    seen12 = (s12.version(), s12.cipher()[0], s12.selected_alpn_protocol())
    got12, how = request_close(s12, REQUEST, box=box)
    sess12 = box["session"]
    t.ok(got12.startswith(b"HTTP/1.1 200 OK") and seen12[0] == "TLSv1.2" and seen12[2] is None,
         "a TLS 1.2 request without ALPN is answered (%s, %s)" % (seen12[0], seen12[1]))
    case("TLS 1.2, no ALPN offered", port12, p_main, reason="backend_close", sni="localhost",
         tls="TLSv1.2", cipher=seen12[1], alpn="-", resumed="false", c2b=len(REQUEST),
         b2c=len(got12), level="info")

    # resumed, TLS 1.3 and TLS 1.2 (the Python client says whether it resumed)
    for ver, ctx, sess in (("TLSv1.3", ctx13, sess13), ("TLSv1.2", ctx12, sess12)):
        r, rport = tls_client(p_main, cert, ctx=ctx, session=sess)
        reused, cipher = r.session_reused, r.cipher()[0]
        body = b"GET /resumed HTTP/1.0\r\n\r\n"
        got_r, how = request_close(r, body)
        t.ok(reused and got_r.startswith(b"HTTP/1.1 200 OK"),
             "%s: the client resumed its session (session_reused=%s)" % (ver, reused))
        case("%s resumed" % ver, rport, p_main, reason="backend_close", tls=ver,
             cipher=cipher, resumed="true", c2b=len(body), b2c=len(got_r), level="info")

    # client_close: data, then close_notify; the backend replies after our EOF and closes
    up = b"EOF 0.2\n" + b"y" * 5000
    c = tc.BioClient(p_main, cert, timeout=st.scaled(5))
    cc_port = c.sock.getsockname()[1]
    c.handshake()
    c.send(up)
    c.close_notify()
    reply, how = c.read_to_close(st.scaled(5))
    c.close()
    t.ok(reply.startswith(b"EOF-SEEN 5000 ") and how == "close_notify",
         "client close_notify: the backend's later reply and close_notify reach the client "
         "(%r, %s)" % (reply[:20], how))
    case("client data, close_notify, backend replies", cc_port, p_main, reason="client_close",
         c2b=len(up), b2c=len(reply), level="info")

    # client_error: after a request, a record that cannot be decrypted
    ce = tc.BioClient(p_main, cert, timeout=st.scaled(5))
    ce_port = ce.sock.getsockname()[1]
    ce.handshake()
    ce.send(b"HOLD ce\n")
    # once the backend has the request, the relay is surely running
    be.wait_event(lambda e: e.get("line") == "HOLD ce\n", st.scaled(3))
    ce.send_raw(b"\x17\x03\x03\x00\x20" + b"x" * 32)
    tc.wait_closed(ce.sock, st.scaled(3))
    ce.close()
    case("an undecryptable record after a request", ce_port, p_main, reason="client_error",
         state="relay", c2b=8, b2c=0, error=re.compile(r"TLS read: .*(mac|decrypt)"),
         level="info")

    # handshake_aborted: connect, close before any byte
    ab = socket.create_connection(("127.0.0.1", p_main), timeout=5)
    ab_port = ab.getsockname()[1]
    ab.close()
    case("connect and close at once", ab_port, p_main, reason="handshake_aborted",
         state="handshake", sni="-", tls="-", handshake_ms="-", c2b=0, b2c=0, level="info")

    # handshake_error: a plaintext HTTP request, and a record of an unknown version
    for what, data, rx in (("plaintext HTTP request", REQUEST, r"^http request$"),
                           ("a record of version 9.9", b"\x16\x09\x09\x00\x05hello",
                            r"wrong version number")):
        h = socket.create_connection(("127.0.0.1", p_main), timeout=5)
        hport = h.getsockname()[1]
        h.sendall(data)
        tc.wait_closed(h, st.scaled(3))
        h.close()
        case(what, hport, p_main, reason="handshake_error", state="handshake", sni="-",
             tls="-", handshake_ms="-", error=re.compile(rx), level="info")

    # backend_connect_failed: the frontend's backend is a missing unix socket; the client
    # offers ALPN, which this frontend does not configure
    bf, bf_port = tls_client(p_absent, cert, alpn=["http/1.1"])
    got_bf, how = request_close(bf, REQUEST)
    t.ok(got_bf == b"" and how == "close_notify",
         "missing backend: the client gets a clean close (%s)" % how)
    case("backend missing", bf_port, p_absent, reason="backend_connect_failed",
         state="connecting", sni="localhost", alpn="-", resumed="false", c2b=0, b2c=0,
         error=re.compile(r"absent\.sock: No such file or directory"), level="warning")

    # backend_error: the backend resets the connection it accepted
    br, br_port = tls_client(p_reset, cert)
    br.sendall(b"x")
    got_br, how = tc.read_to_close(br, st.scaled(5))
    br.close()
    t.ok(got_br == b"" and how == "close_notify",
         "backend reset: the client gets a clean close (%s)" % how)
    case("backend resets", br_port, p_reset, reason="backend_error", state="relay",
         c2b=1, b2c=0, error=re.compile(r"read: Connection reset by peer"), level="warning")

    # SNI as openssl s_client sends it, and a forced TLS 1.2 from s_client
    rc, out = s_client(t, p_main, cert, "www.example.test", ["-tls1_2"])
    t.ok(rc == 0 and "hello from app" in out, "s_client -servername www.example.test -tls1_2 "
         "is answered (rc %s)" % rc)
    sclient_snis = {b"www.example.test": dict(tls="TLSv1.2", reason="backend_close",
                                               c2b=len(REQUEST), level="info")}
    # 3. hostile SNIs: one from s_client, one in a ClientHello patched by the test
    hostile1 = b'a" b=c'
    rc, out = s_client(t, p_main, cert, hostile1.decode())
    t.diag("s_client -servername %r: rc %s, %s" % (hostile1, rc,
                                                   "answered" if "hello from app" in out
                                                   else "not answered"))
    sclient_snis[hostile1] = dict(level="info")
    hostile2 = b'q\nr\x01s"t\\u=v \tw\xc3\xa9\x7f.invalid'
    plain = b"x" * (len(hostile2) - len(b".invalid")) + b".invalid"
    hello = tc.client_hello(plain.decode())
    t.ok(hello.count(plain) == 1, "the test's ClientHello holds its SNI once, to patch")
    hello = hello.replace(plain, hostile2)
    hh = socket.create_connection(("127.0.0.1", p_main), timeout=5)
    hh_port = hh.getsockname()[1]
    hh.sendall(hello)
    how, _, answer = tc.wait_closed(hh, 0.5)  # the server's flight, then we hang up
    hh.close()
    t.diag("patched ClientHello with a hostile SNI: %d bytes back (%s), then we closed"
           % (len(answer), how))
    case("patched ClientHello with a newline and control bytes in its SNI", hh_port, p_main,
         sni=hostile2, state="handshake", tls="-", handshake_ms="-", level="info")
    # the longest name a ClientHello can carry here (253 bytes), every byte value 1..253:
    # escaped to about 1 KB, so the value is cut (to 260 characters, ending "...") and the
    # record still holds every key after it
    plain = b".".join([b"x" * 63] * 3 + [b"x" * 61])
    hostile3 = bytes(range(1, 254))
    hello = tc.client_hello(plain.decode())
    t.ok(hello.count(plain) == 1 and len(plain) == len(hostile3),
         "a ClientHello with a %d-byte SNI, to patch" % len(plain))
    hh = socket.create_connection(("127.0.0.1", p_main), timeout=5)
    hh_port = hh.getsockname()[1]
    hh.sendall(hello.replace(plain, hostile3))
    tc.wait_closed(hh, 0.5)
    hh.close()
    def cut_hostile3(value):
        """a leading part of the name sent, marked as cut with '...'"""
        return (value.endswith(b"...") and len(value) > 40
                and hostile3.startswith(value[:-3]))

    case("patched ClientHello with a 253-byte SNI of bytes 1..253", hh_port, p_main,
         sni=cut_hostile3, state="handshake", tls="-", handshake_ms="-", level="info")

    # the slow ones: the idle connection, the half-closed one
    got_idle, how_idle = tc.read_to_close(idle, SHORT + st.scaled(3))
    el_idle = time.monotonic() - t0_slow
    idle.close()
    t.ok(how_idle == "close_notify" and got_idle == b"",
         "idle connection: closed with close_notify after %.2f s (%s)" % (el_idle, how_idle))
    case("request held, then silence", idle_port, p_main, reason="idle_timeout",
         state="relay", c2b=5, b2c=0, level="info", min_ms=SHORT * 900)
    got_cl, how_cl = closing.read_to_close(st.scaled(2))
    t.ok(got_cl == b"shut-wr\n" and how_cl == "close_notify",
         "backend shut its write side: the client got its data and close_notify (%r, %s)"
         % (got_cl, how_cl))
    # the client keeps its side open (no close_notify, no FIN): sluice must end it
    how_cl2, el_cl, _ = tc.wait_closed(closing.sock, SHORT + st.scaled(3))
    closing.close()
    t.ok(how_cl2 in ("eof", "reset"), "... then sluice ended it (close-timeout, %s)" % how_cl2)
    case("backend half-closed, client silent", closing_port, p_main, reason="close_timeout",
         state="closing", c2b=len(b"SHUTWR\n"), b2c=len(b"shut-wr\n"), level="info",
         min_ms=SHORT * 900)
    how_hs, _, _ = tc.wait_closed(hs, st.scaled(3))
    hs.close()
    t.ok(how_hs in ("eof", "reset"), "half ClientHello: closed at handshake-timeout (%s)"
         % how_hs)

    t.ok(pinger.th.is_alive() and pinger.how is None,
         "the busy connection is still open before TERM (%d bytes echoed)" % pinger.got)
    pinger_age = time.monotonic() - pinger.t0
    sl.stop_and_check()  # TERM: drain-timeout 1 s cuts the busy connection
    pinger.join(st.scaled(5))
    t.ok(pinger.how is not None and pinger.how != "close_notify",
         "the busy connection was cut at drain-timeout, without close_notify (%s)" % pinger.how)
    case("busy at TERM", pinger.cport, p_main, reason="drained", state="relay",
         b2c=pinger.got, c2b_range=(pinger.got + 5, pinger.sent + 5), level="info",
         min_ms=(pinger_age + SHORT * 0.9) * 1000)

    recs = Records(t, sl)
    check_format(t, recs, "log-connections = true")
    # every connection this test made to sluice: the cases plus the s_client runs (the
    # sluice was never probed otherwise: readiness is read from /proc/net/tcp)
    n_conns = len(cases) + len(sclient_snis)
    t.ok(recs.count == n_conns, "one record per connection: %d records for %d connections"
         % (recs.count, n_conns))
    reasons = {s(r["reason"]) for r in recs.all}
    t.diag("reasons seen: %s" % " ".join(sorted(reasons)))
    for cs in cases:
        got = recs.by_port(cs["port"])
        if not t.ok(len(got) == 1, "%s: one record for client port %d (%d)"
                    % (cs["what"], cs["port"], len(got))):
            continue
        check_record(t, cs["what"], got[0], dict(cs["expect"], client=b"127.0.0.1",
                                                 frontend=listen[cs["fe"]]))
    for sni, expect in sclient_snis.items():
        got = recs.by_sni(sni)
        if t.ok(len(got) == 1, "s_client -servername %r: one record with that SNI (%d)"
                % (sni, len(got))):
            check_record(t, "s_client %r" % sni, got[0],
                         dict(expect, client=b"127.0.0.1", frontend=listen[p_main]))
    for ln in [r["_line"] for r in recs.all if r["sni"] in (hostile1, hostile2, hostile3)]:
        t.diag("hostile SNI record: " + ln)


def check_format(t, recs, what):
    """Every record parses, has the keys in order, is written canonically, and no line of
    the log lacks its header (a raw newline in a value would make one)."""
    t.ok(recs.count and not recs.bad, "%s: all %d records parse as strict logfmt"
         % (what, recs.count))
    for b in recs.bad[:5]:
        t.diag("  " + b)
    t.ok(not recs.order_bad, "%s: every record has exactly the keys %s, in this order"
         % (what, " ".join(KEYS)))
    for b in recs.order_bad[:5]:
        t.diag("  " + b)
    t.ok(not recs.noncanonical, "%s: values are quoted exactly when they must be, and "
         "escaped as the contract says" % what)
    for b in recs.noncanonical[:5]:
        t.diag("  " + b)
    t.ok(not recs.headless, "%s: every log line is one whole line with its header" % what)
    for b in recs.headless[:5]:
        t.diag("  %r" % b)


def check_record(t, what, rec, expect):
    """Compare one record with what the client did; numbers are checked exactly."""
    wrong = []

    def want(key, value):
        if callable(value):
            if not value(rec[key]):
                wrong.append("%s=%r: %s" % (key, s(rec[key]), value.__doc__))
        elif isinstance(value, re.Pattern):
            if not value.search(s(rec[key])):
                wrong.append("%s=%r !~ /%s/" % (key, s(rec[key]), value.pattern))
        elif rec[key] != (value if isinstance(value, bytes) else str(value).encode()):
            wrong.append("%s=%r, expected %r" % (key, s(rec[key]), s(value)))

    level = expect.pop("level", None)
    if level and rec["_level"] != level:
        wrong.append("level %s, expected %s" % (rec["_level"], level))
    if "c2b" in expect:
        want("bytes_client_to_backend", expect.pop("c2b"))
    if "b2c" in expect:
        want("bytes_backend_to_client", expect.pop("b2c"))
    lived = 0
    if "min_ms" in expect:
        # a timeout's connection lived at least that long (duration_ms counts from accept)
        lo = lived = expect.pop("min_ms")
        if not float(rec["duration_ms"]) >= lo:
            wrong.append("duration_ms=%s < %.0f" % (s(rec["duration_ms"]), lo))
    if "c2b_range" in expect:
        lo, hi = expect.pop("c2b_range")
        v = int(rec["bytes_client_to_backend"])
        if not lo <= v <= hi:
            wrong.append("bytes_client_to_backend=%d not in %d..%d" % (v, lo, hi))
    for k, v in expect.items():
        want(k, v)
    if rec["client_port"] != b"-" and not re.fullmatch(rb"\d+", rec["client_port"]):
        wrong.append("client_port=%r" % rec["client_port"])
    # handshake_ms: a number within duration_ms once the handshake is done, else "-"
    dur = float(rec["duration_ms"])
    if rec["handshake_ms"] == b"-":
        if rec["tls"] != b"-":
            wrong.append("handshake_ms=- with tls=%s" % s(rec["tls"]))
    else:
        hs = float(rec["handshake_ms"])
        if not 0 <= hs <= dur:
            wrong.append("handshake_ms=%s not in 0..duration_ms=%s" % (hs, dur))
        # a connection that then lived on for a timeout: its handshake is a small part
        if lived and not hs <= dur - lived * 0.8:
            wrong.append("handshake_ms=%s is not well before the end (duration_ms=%s)"
                         % (hs, dur))
    if rec["resumed"] not in (b"true", b"false"):
        wrong.append("resumed=%r" % rec["resumed"])
    if not dur >= 0:
        wrong.append("duration_ms=%s" % dur)
    t.ok(not wrong, "%s: record fields as the client saw them (reason=%s state=%s%s)"
         % (what, s(rec["reason"]), s(rec["state"]), ("; " + "; ".join(wrong)) if wrong
            else ""))
    if wrong:
        t.diag("  " + rec["_line"])


# --- 4: disabled ---------------------------------------------------------------------------

def mixed_traffic(t, cert, p_main, p_absent):
    """Short-lived connections of several kinds; returns the client port of the one whose
    backend is missing."""
    r, _ = tls_client(p_main, cert)
    request_close(r, REQUEST)
    ab = socket.create_connection(("127.0.0.1", p_main), timeout=5)
    ab.close()
    h = socket.create_connection(("127.0.0.1", p_main), timeout=5)
    h.sendall(REQUEST)
    tc.wait_closed(h, st.scaled(3))
    h.close()
    bf, bf_port = tls_client(p_absent, cert)
    request_close(bf, REQUEST)
    return bf_port


def disabled(t, cert, key, be):
    p_main, p_absent = st.free_ports(2)
    conf = t.write_config([t.frontend(p_main, be.address, cert, key),
                           t.frontend(p_absent, "unix:" + t.path("absent.sock"), cert, key)],
                          name="disabled.conf", workers=1, handshake_timeout=SHORT,
                          idle_timeout=SHORT)
    sl = t.start_sluice(conf, name="sluice-disabled")
    bf_port = mixed_traffic(t, cert, p_main, p_absent)
    idle, _ = tls_client(p_main, cert)
    idle.sendall(b"HOLD\n")
    hs = socket.create_connection(("127.0.0.1", p_main), timeout=5)
    hs.sendall(tc.half_client_hello())
    tc.read_to_close(idle, SHORT + st.scaled(3))
    tc.wait_closed(hs, st.scaled(3))
    idle.close()
    hs.close()
    # Without the feature's switch these would be records (event=connection) or, with the
    # human line at info, "info: ... connection closed" lines: either fails the checks.
    warn = sl.wait_log(r"warning: client=127\.0\.0\.1:%d frontend=127\.0\.0\.1:%d: connection "
                       r"closed: backend connect failed: .*absent\.sock: No such file or "
                       r"directory" % (bf_port, p_absent), st.scaled(3))
    sl.stop_and_check(what="sluice (log-connections off)")
    lines = sl.run_log_lines()
    recs = [ln for ln in lines if "event=connection" in ln]
    info = [ln for ln in lines if re.search(r": (info|warning|error): .*connection closed", ln)
            and "backend connect failed" not in ln]
    t.ok(not recs, "log-connections off: no event=connection record (%d)" % len(recs))
    t.ok(not info, "log-connections off: no per-connection 'connection closed' line at info "
         "or above for client-side ends (%d)" % len(info))
    for ln in (recs + info)[:5]:
        t.diag("  " + ln)
    t.ok(warn, "log-connections off: the backend connect failure still logs its warning")


# --- 5: log-level error --------------------------------------------------------------------

def level_error(t, cert, key, be):
    p_main, p_absent = st.free_ports(2)
    conf = t.write_config([t.frontend(p_main, be.address, cert, key),
                           t.frontend(p_absent, "unix:" + t.path("absent.sock"), cert, key)],
                          name="level-error.conf", workers=1, log_level="error",
                          log_connections=True, handshake_timeout=SHORT)
    # at log-level error there is no "ready" line to wait for: wait for the listeners
    sl = t.start_sluice(conf, name="sluice-level-error", wait=False)
    t.ok(st.wait_until(lambda: {p_main, p_absent} <= {p for _, p in st.listening_tcp_ports()},
                       st.scaled(10)) and sl.alive(), "log-level error: sluice listens")
    r, port_ok = tls_client(p_main, cert)
    request_close(r, REQUEST)
    bf, port_bf = tls_client(p_absent, cert)
    request_close(bf, REQUEST)
    ab = socket.create_connection(("127.0.0.1", p_main), timeout=5)
    port_ab = ab.getsockname()[1]
    ab.close()
    st.wait_until(lambda: len([ln for ln in sl.run_log_lines() if "event=connection" in ln])
                  >= 3, st.scaled(3))
    sl.stop_and_check(what="sluice (log-level error)")
    recs = Records(t, sl)
    check_format(t, recs, "log-level error")
    # Were records filtered by log-level, none of these would be there (info < error).
    for what, port, reason, level in (("an answered request", port_ok, "backend_close", "info"),
                                      ("a missing backend", port_bf, "backend_connect_failed",
                                       "warning"),
                                      ("an aborted connect", port_ab, "handshake_aborted",
                                       "info")):
        got = recs.by_port(port)
        t.ok(len(got) == 1 and got[0]["reason"] == reason.encode() and got[0]["_level"] == level,
             "log-level error: %s still gives its %s record (reason=%s)"
             % (what, level, s(got[0]["reason"]) if got else "none"))
    others = [ln for ln in sl.run_log_lines() if ": info: " in ln and "event=connection" not in ln]
    t.ok(not others, "log-level error: no other info line is written (%d)" % len(others))
    for ln in others[:5]:
        t.diag("  " + ln)


def main(t):
    self_test_parser(t)
    cert, key = t.make_cert()
    be = t.start_backend("app", "unix")
    every_reason(t, cert, key, be)
    disabled(t, cert, key, be)
    level_error(t, cert, key, be)


st.Test("connection-log").main(main)
