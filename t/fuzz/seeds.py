#!/usr/bin/env python3
"""Write raw seed inputs for the fuzz targets (t/fuzz/README.md) into OUTDIR/conf,
OUTDIR/proxy and OUTDIR/handshake; merge them into t/fuzz/corpus/ with libFuzzer's
-merge=1, which keeps only those that add coverage.

  conf       the example config, configs like the tests write, and broken ones; the
             names they use (cert.pem, key.pem, ca.pem, crl.pem, ocsp.der, tickets.key,
             fe.inc, wrap.inc, and fifo, a FIFO) are files fuzz_conf.c makes beside its
             input
  proxy      PROXY v1 and v2 headers (t/lib/proxyproto.py writes them), alone and with
             a ClientHello after them, and near-misses
  handshake  what real `openssl s_client` runs send, captured through a relay to
             `openssl s_server`: TLS 1.2 and 1.3, with -servername and -alpn, a
             HelloRetryRequest, a client certificate, a resumption; the input format
             is fuzz_handshake.c's (a flags byte, then 16-bit length-prefixed pieces,
             one per segment the relay read)

usage: t/fuzz/seeds.py OUTDIR        (needs the openssl command-line tool)
"""

import os
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SRCDIR = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(SRCDIR, "t", "lib"))
import proxyproto as pp  # noqa: E402

# ----------------------------------------------------------------------------- conf

FRONTEND = """  {
    listen = "127.0.0.1:8443";
    backend = "unix:app.sock";
    certs = ( { cert = "cert.pem"; key = "key.pem"; } );
  }"""


def conf(globals_="", frontend_extra="", frontends=None):
    fe = FRONTEND.replace("\n  }", "\n" + frontend_extra + "\n  }") if frontend_extra else FRONTEND
    return "%s\nfrontends = (\n%s\n);\n" % (globals_, frontends or fe)


def conf_seeds():
    with open(os.path.join(SRCDIR, "conf", "sluice.conf")) as f:
        example = f.read()
    seeds = {
        "example": example,
        "example-local": example.replace("/etc/sluice/", "").replace("site.pem", "cert.pem")
        .replace("site.key", "key.pem"),
        "minimal": conf(),
        "globals": conf('workers = 2;\ndaemon = false;\npidfile = "sluice.pid";\n'
                        'log-level = "debug";\nsyslog = false;\nsyslog-facility = "local3";\n'
                        'log-file = "sluice.log";\nlog-connections = true;\n'
                        'stats-file = "sluice.stats";\nhandshake-permits = 64;\n'
                        'handshake-timeout = 2.5;\nbackend-connect-timeout = 1;\n'
                        'idle-timeout = 604800;\nclose-timeout = 0.001;\ndrain-timeout = 86400;\n'
                        'max-connections = 1000000;\nbacklog = 65535;\n'
                        'heartbeat-interval = 0.5;\nwatchdog-timeout = 2;\n'
                        'spin-guard = true;\nspin-guard-threshold = 100;\n'),
        "tls-global": conf('tls = {\n  protocols = [ "TLSv1.3" ];\n  ciphers = "ECDHE+AESGCM";\n'
                           '  ciphersuites = "TLS_AES_128_GCM_SHA256";\n  groups = "X25519";\n'
                           '  session-tickets = false;\n  ticket-key-file = "tickets.key";\n};\n'),
        "frontend-all": conf(frontend_extra='    proxy-protocol = "v2";\n    proxy-crc = true;\n'
                             '    accept-proxy = true;\n    alpn = [ "h2", "http/1.1" ];\n'
                             '    client-ca = "ca.pem";\n    verify-client = "require";\n'
                             '    crl = "crl.pem";\n    sni-strict = true;\n'
                             '    tls = { protocols = [ "TLSv1.2" ]; };'),
        "frontend-ocsp": conf(frontends=FRONTEND.replace(
            'key = "key.pem"; }', 'key = "key.pem"; ocsp = "ocsp.der"; }')),
        "two-frontends": conf(frontends=FRONTEND + ",\n" + FRONTEND.replace("8443", "8444")
                              .replace("unix:app.sock", "[::1]:8080")),
        "listen-any-v6": conf(frontends=FRONTEND.replace("127.0.0.1:8443", "*:443")
                              + ",\n" + FRONTEND.replace("127.0.0.1:8443", "[::1]:443")),
        "overlap": conf(frontends=FRONTEND.replace("127.0.0.1:8443", "*:8443") + ",\n"
                        + FRONTEND),
        "include-fe": 'workers = 1;\nfrontends = ( {\n@include "fe.inc"\n} );\n',
        "include-wrap": '@include "wrap.inc"\n' + conf(),
        "include-empty": '@include ""\n' + conf(),
        "include-fifo": '@include "fifo"\n' + conf(),
        "include-folder": '@include "."\n' + conf(),
        "cert-fifo": conf(frontends=FRONTEND.replace("cert.pem", "fifo")),
        "include-self": '@include "fuzz.conf"\n' + conf(),
        "wrapped-int": conf("workers = 4294967297;\n"),
        "wrapped-next-line": conf("max-connections =\n  4294967297;\n"),
        "hex-int": conf("handshake-permits = 0x10;\nbacklog = 0xFFFFFFFFFF;\n"),
        "int64": conf("max-connections = 100L;\n"),
        "float-huge": conf("idle-timeout = 1e308;\n"),
        "float-nan-ish": conf("drain-timeout = -0.0;\n"),
        "unknown-key": conf("wrokers = 2;\n"),
        "wrong-types": conf('workers = "2";\ndaemon = 1;\nlog-level = 3;\n'),
        "bad-values": conf('log-level = "loud";\nsyslog-facility = "kern";\n'
                           'user = "no-such-user";\ngroup = "nogroup";\n'),
        "bad-tls": conf(frontend_extra='    tls = { protocols = [ "SSLv3" ]; ciphers = ""; };'),
        "bad-alpn": conf(frontend_extra='    alpn = [ "", 1 ];'),
        "bad-verify": conf(frontend_extra='    verify-client = "require";'),
        "crl-without-verify": conf(frontend_extra='    crl = "crl.pem";'),
        "crc-without-v2": conf(frontend_extra='    proxy-crc = true;'),
        "cert-missing": conf(frontends=FRONTEND.replace("cert.pem", "missing.pem")),
        "cert-devnull": conf(frontends=FRONTEND.replace("cert.pem", "/dev/null")),
        "cert-dir": conf(frontends=FRONTEND.replace("cert.pem", ".")),
        "cert-no-key": conf(frontends=FRONTEND.replace(' key = "key.pem";', "")),
        "backend-unix-long": conf(frontends=FRONTEND.replace("app.sock", "a" * 120)),
        "backend-bad": conf(frontends=FRONTEND.replace("unix:app.sock", "host-without-port")),
        "listen-name": conf(frontends=FRONTEND.replace("127.0.0.1", "localhost")),
        "no-frontends": "workers = 1;\n",
        "empty-frontends": "frontends = ( );\n",
        "frontends-group": "frontends = { };\n",
        "watchdog-short": conf("heartbeat-interval = 5;\nwatchdog-timeout = 5;\n"),
        "syntax-error": 'workers = ;\nfrontends = ( { listen = "127.0.0.1:1" }\n',
        "comments": "# a comment\n// another\n/* a block\n comment */\n" + conf(),
        "strings-escaped": conf(frontends=FRONTEND.replace('"unix:app.sock"',
                                                           '"unix:" "app\\x2esock"')),
    }
    return {name: text.encode() for name, text in seeds.items()}


# ----------------------------------------------------------------------------- proxy

def proxy_seeds():
    hello = bytes.fromhex("16030100a5010000a10303") + bytes(32) + b"\x00"
    seeds = {
        "v1-tcp4": pp.v1(socket.AF_INET, "192.0.2.1", "198.51.100.1", 51234, 443),
        "v1-tcp6": pp.v1(socket.AF_INET6, "2001:db8::1", "2001:db8::2", 51234, 443),
        "v1-unknown": b"PROXY UNKNOWN\r\n",
        "v1-unknown-extra": b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n",
        "v1-hello": pp.v1(socket.AF_INET, "192.0.2.1", "198.51.100.1", 51234, 443) + hello,
        "v1-longest": b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
                      b"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n",
        "v1-leading-zero": b"PROXY TCP4 192.0.2.01 198.51.100.1 51234 443\r\n",
        "v1-port-big": b"PROXY TCP4 192.0.2.1 198.51.100.1 65536 443\r\n",
        "v1-port-zero-lead": b"PROXY TCP4 192.0.2.1 198.51.100.1 0443 443\r\n",
        "v1-lf-only": b"PROXY TCP4 192.0.2.1 198.51.100.1 51234 443\n",
        "v1-cr-only": b"PROXY TCP4 192.0.2.1 198.51.100.1 51234 443\rX",
        "v1-trailing-space": b"PROXY TCP4 192.0.2.1 198.51.100.1 51234 443 \r\n",
        "v1-missing-port": b"PROXY TCP4 192.0.2.1 198.51.100.1 51234\r\n",
        "v1-family-mismatch": b"PROXY TCP4 2001:db8::1 198.51.100.1 1 2\r\n",
        "v1-udp": b"PROXY UDP4 192.0.2.1 198.51.100.1 1 2\r\n",
        "v1-no-crlf": b"PROXY TCP4 " + b"1" * 120,
        "v1-truncated": b"PROXY TCP4 192.0.2.1",
        "v1-lowercase": b"proxy TCP4 192.0.2.1 198.51.100.1 1 2\r\n",
        "v2-tcp4": pp.v2(socket.AF_INET, "192.0.2.1", "198.51.100.1", 51234, 443, b""),
        "v2-tcp6": pp.v2(socket.AF_INET6, "2001:db8::1", "2001:db8::2", 51234, 443, b""),
        "v2-tcp4-tlvs": pp.v2(socket.AF_INET, "192.0.2.1", "198.51.100.1", 51234, 443,
                              pp.tlv(pp.PP2_TYPE_ALPN, b"h2")
                              + pp.tlv(pp.PP2_TYPE_AUTHORITY, b"example.com")
                              + pp.ssl_tlv(pp.PP2_CLIENT_SSL, 0,
                                           [(pp.PP2_SUBTYPE_SSL_VERSION, b"TLSv1.3")]),
                              crc=True),
        "v2-hello": pp.v2(socket.AF_INET, "192.0.2.1", "198.51.100.1", 51234, 443, b"") + hello,
        "v2-local": pp.v2_local(),
        "v2-unix": pp.v2_raw(0x21, 0x31, bytes(216)),
        "v2-unspec": pp.v2_raw(0x21, 0x00, b"anything"),
        "v2-udp": pp.v2_raw(0x21, 0x12, bytes(12)),
        "v2-short-addrs": pp.v2_raw(0x21, 0x11, bytes(8)),
        "v2-stray-tlv": pp.v2_raw(0x21, 0x11, bytes(12) + b"\x01\x00"),
        "v2-tlv-overrun": pp.v2_raw(0x21, 0x11, bytes(12) + b"\x01\x00\x09ab"),
        "v2-version-1": pp.v2_raw(0x11, 0x11, bytes(12)),
        "v2-command-2": pp.v2_raw(0x22, 0x11, bytes(12)),
        "v2-too-long": pp.V2_SIGNATURE + b"\x21\x11\x04\x01" + bytes(1025),
        "v2-truncated": pp.v2(socket.AF_INET6, "2001:db8::1", "2001:db8::2", 1, 2, b"")[:30],
        "v2-bad-signature": b"\r\n\r\n\x00\r\nQUIX\n\x21\x11\x00\x0c" + bytes(12),
        "tls-hello": hello,
        "http": b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    }
    return seeds


# ----------------------------------------------------------------------------- handshake

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def openssl(*args, cwd):
    subprocess.run(["openssl"] + list(args), cwd=cwd, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)


def make_certs(d):
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", "ec.key", "-out", "ec.pem", "-subj", "/CN=www.example.com", "-days", "30",
            cwd=d)
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "rsa.key", "-out",
            "rsa.pem", "-subj", "/CN=www.example.com", "-days", "30", cwd=d)
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", "client.key", "-out", "client.pem", "-subj", "/CN=client", "-days", "30",
            cwd=d)


class Relay:
    """Accept one client, connect it to the server, record what the client sends."""

    def __init__(self, server_port):
        self.server_port = server_port
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(1)
        self.port = self.listener.getsockname()[1]
        self.pieces = []
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        self.listener.settimeout(10)
        try:
            client, _ = self.listener.accept()
        except OSError:
            return
        server = socket.create_connection(("127.0.0.1", self.server_port), timeout=10)

        def back():
            try:
                while True:
                    data = server.recv(65536)
                    if not data:
                        break
                    client.sendall(data)
            except OSError:
                pass
            try:
                client.shutdown(socket.SHUT_WR)
            except OSError:
                pass

        threading.Thread(target=back, daemon=True).start()
        client.settimeout(10)
        try:
            while True:
                data = client.recv(65536)
                if not data:
                    break
                self.pieces.append(data)
                server.sendall(data)
        except OSError:
            pass
        for s in (client, server):
            s.close()

    def seed(self, flags):
        self.thread.join(15)
        self.listener.close()
        return bytes([flags]) + b"".join(struct.pack(">H", len(p)) + p for p in self.pieces)


def wait_listening(port, timeout=10):
    """Until something listens on port (bind fails): no probe connection, which would
    use up s_server's one accept."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return
        time.sleep(0.05)
    raise RuntimeError("openssl s_server did not listen on port %d" % port)


def capture(d, flags, client_args, server_args=(), sess_in=None):
    sport = free_port()
    server = subprocess.Popen(["openssl", "s_server", "-accept", str(sport), "-naccept", "1",
                               "-cert", "ec.pem", "-key", "ec.key", "-dcert", "rsa.pem",
                               "-dkey", "rsa.key", "-quiet"] + list(server_args), cwd=d,
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    wait_listening(sport)
    relay = Relay(sport)
    args = ["openssl", "s_client", "-connect", "127.0.0.1:%d" % relay.port] + list(client_args)
    if sess_in:
        args += ["-sess_in", sess_in]
    subprocess.run(args, cwd=d, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, timeout=20)
    seed = relay.seed(flags)
    server.kill()
    server.wait()
    return seed


def handshake_seeds():
    lenient, strict = 0, 1
    cases = {
        "tls13-sni-alpn": (lenient, ["-tls1_3", "-servername", "www.example.com",
                                     "-alpn", "h2,http/1.1"]),
        "tls13-no-sni": (lenient, ["-tls1_3", "-noservername"]),
        "tls13-wildcard": (lenient, ["-tls1_3", "-servername", "a.example.org",
                                     "-alpn", "http/1.1"]),
        "tls13-unknown-name": (lenient, ["-tls1_3", "-servername", "unknown.test"]),
        "tls13-trailing-dot": (lenient, ["-tls1_3", "-servername", "WWW.Example.COM."]),
        "tls13-alpn-other": (lenient, ["-tls1_3", "-servername", "example.com",
                                       "-alpn", "spdy/3,acme-tls/1"]),
        "tls13-alpn-pref": (lenient, ["-tls1_3", "-servername", "www.example.com",
                                      "-alpn", "spdy/3,http/1.1,h2"]),
        "tls13-rsa-only": (lenient, ["-tls1_3", "-servername", "www.example.com",
                                     "-sigalgs", "rsa_pss_rsae_sha256"]),
        "tls13-hrr": (lenient, ["-tls1_3", "-servername", "www.example.com",
                                "-groups", "P-384:X25519"], ["-groups", "X25519"]),
        "tls13-client-cert": (strict, ["-tls1_3", "-servername", "strict.example.net",
                                       "-cert", "client.pem", "-key", "client.key"],
                              ["-Verify", "1"]),
        "strict-tls13-exact": (strict, ["-tls1_3", "-servername", "strict.example.net",
                                        "-alpn", "http/1.1"]),
        "strict-tls13-wildcard": (strict, ["-tls1_3", "-servername", "x.wild.example.net"]),
        "strict-tls13-unknown": (strict, ["-tls1_3", "-servername", "www.example.com"]),
        "strict-tls13-no-sni": (strict, ["-tls1_3", "-noservername"]),
        "tls12-sni-alpn": (lenient, ["-tls1_2", "-servername", "www.example.com",
                                     "-alpn", "h2"]),
        "tls12-rsa": (lenient, ["-tls1_2", "-servername", "example.com",
                                "-cipher", "ECDHE-RSA-AES128-GCM-SHA256"]),
        "tls12-chacha": (lenient, ["-tls1_2", "-servername", "b.example.org",
                                   "-cipher", "ECDHE-ECDSA-CHACHA20-POLY1305"]),
        "tls12-no-sni": (lenient, ["-tls1_2", "-noservername"]),
        "tls12-client-cert": (strict, ["-tls1_2", "-servername", "api.example.net",
                                       "-cert", "client.pem", "-key", "client.key",
                                       "-alpn", "http/1.1"], ["-Verify", "1"]),
        "strict-tls12-alpn-pref": (strict, ["-tls1_2", "-servername", "strict.example.net",
                                            "-alpn", "h2,http/1.1"]),
        "strict-tls12-wildcard": (strict, ["-tls1_2", "-servername", "y.wild.example.net"]),
        "tls12-no-ticket": (lenient, ["-tls1_2", "-servername", "www.example.com",
                                      "-no_ticket"]),
        "tls12-rsa-kx": (lenient, ["-tls1_2", "-cipher", "AES128-GCM-SHA256"]),
        "tls11": (lenient, ["-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0"],
                  ["-cipher", "DEFAULT@SECLEVEL=0"]),
        "parked-tls13": (lenient | 2, ["-tls1_3", "-servername", "www.example.com"]),
        "parked-tls12": (strict | 2, ["-tls1_2", "-servername", "strict.example.net"]),
    }
    seeds = {}
    with tempfile.TemporaryDirectory(prefix="sluice-seeds-") as d:
        make_certs(d)
        for name, case in cases.items():
            flags, client_args = case[0], case[1]
            server_args = case[2] if len(case) > 2 else []
            seeds[name] = capture(d, flags, client_args, server_args)
        # Resumption: a ticket from a first connection, offered in the second ClientHello.
        for version, flags in (("-tls1_2", lenient), ("-tls1_3", strict)):
            sess = os.path.join(d, "sess" + version)
            capture(d, flags, [version, "-servername", "strict.example.net", "-sess_out", sess])
            if os.path.exists(sess):
                seeds["resume" + version] = capture(
                    d, flags, [version, "-servername", "strict.example.net"], sess_in=sess)
    return seeds


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    out = sys.argv[1]
    for target, seeds in (("conf", conf_seeds()), ("proxy", proxy_seeds()),
                          ("handshake", handshake_seeds())):
        os.makedirs(os.path.join(out, target), exist_ok=True)
        for name, data in seeds.items():
            with open(os.path.join(out, target, name), "wb") as f:
                f.write(data)
        print("%s: %d seeds in %s" % (target, len(seeds), os.path.join(out, target)))


if __name__ == "__main__":
    main()
