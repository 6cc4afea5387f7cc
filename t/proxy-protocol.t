#!/usr/bin/env python3
# The PROXY protocol header sluice sends its backend (issue 6, "PROXY protocol", first
# bullet; test 7 for the sending side). A backend in this process reads each header and
# compares it byte for byte with the one it should be:
# 1. v1 over IPv4 and IPv6 (TCP4/TCP6 with the client socket's own address and port and
#    the listen address and port).
# 2. v2 over IPv4 and IPv6: signature, version/command, family, length, addresses, ports,
#    and the TLVs in their documented order: CRC32C (valid) with proxy-crc = true and
#    absent without, ALPN as negotiated (absent when none), AUTHORITY = the SNI, and SSL
#    with client flags, verify result, version and cipher as the client saw them, the
#    signature and key algorithm of an ECDSA and of an RSA certificate, and the CN of a
#    client certificate signed by a test CA under verify-client = "require".
# 3. After every header, the client's 1 MB arrives intact (sha256), also at a backend
#    that reads slowly (a byte at a time for the header) behind a small receive buffer.
# 4. The header is not relayed bytes: sluicestat, the exit stats and the connection log
#    count exactly what the clients sent.
# 5. sluice -t refuses proxy-crc without v2 and an unknown proxy-protocol.
import hashlib
import json
import os
import re
import socket
import ssl
import time

import proxyproto as pp
import sluicetest as st
import tlsclient as tc

MB = 1 << 20
SNI = "localhost"
SIG_ALG = {"ec": "ecdsa-with-SHA256", "rsa": "RSA-SHA256"}  # OpenSSL's short names
KEY_ALG = {"ec": "EC256", "rsa": "RSA2048"}


def make_client_ca(t):
    """A test CA and a client certificate it signed, CN "alice". (ca, cert, key)."""
    ca_key = t.make_key("client-ca", "ec")
    ca = t.path("client-ca.pem")
    t._openssl("req", "-x509", "-new", "-key", ca_key, "-out", ca, "-days", "30", "-subj",
               "/CN=sluice test client CA", "-addext", "basicConstraints=critical,CA:TRUE",
               "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    key = t.make_key("alice", "ec")
    csr = t.path("alice.csr")
    cert = t.path("alice.pem")
    ext = t.write_file("alice.ext", "extendedKeyUsage=clientAuth\n")
    t._openssl("req", "-new", "-key", key, "-subj", "/O=sluice tests/CN=alice", "-out", csr)
    t._openssl("x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
               "-days", "30", "-extfile", ext, "-out", cert)
    for p in (ca, cert):
        os.chmod(p, 0o644)
    return ca, cert, key


def exchange(port, cafile, host="127.0.0.1", version=None, alpn=None, client_cert=None,
             size=MB):
    """One TLS connection: sends "N\\n" and N random bytes, reads the backend's answer,
    reads to the close. Returns a dict of what the client saw."""
    ctx = tc.context(cafile, version, alpn)
    if client_cert:
        ctx.load_cert_chain(*client_cert)
    raw = socket.create_connection((host, port), timeout=st.scaled(10))
    s = ctx.wrap_socket(raw, server_hostname=SNI, suppress_ragged_eofs=False)
    local = s.getsockname()
    data = b"".join(st.random_bytes_chunks(size))
    out = b"%d\n" % size
    s.sendall(out + data)
    answer = b""
    while not answer.endswith(b"\n"):
        d = s.recv(256)
        if not d:
            break
        answer += d
    rest, how = tc.read_to_close(s, st.scaled(10))
    seen = {"src": local[0], "sport": local[1], "version": s.version(),
            "cipher": s.cipher()[0], "alpn": s.selected_alpn_protocol(), "sent": len(out + data),
            "sha": hashlib.sha256(data).hexdigest(), "answer": answer + rest, "how": how}
    s.close()
    return seen


def check_payload(t, rec, seen, what):
    want = b"OK %d %s\n" % (MB, seen["sha"].encode())
    t.ok("error" not in rec and rec.get("n") == MB and rec.get("sha") == seen["sha"]
         and seen["answer"] == want,
         "%s: the client's 1 MB follows the header intact (sha256 on both ends)" % what)
    if "error" in rec or seen["answer"] != want:
        t.diag("  backend: %r; client got %r (%s)" % ({k: v for k, v in rec.items()
                                                       if k != "header"}, seen["answer"][:200],
                                                      seen["how"]))


def check_header(t, rec, want, what):
    got = rec.get("header")
    t.ok(got == want, "%s: the header is byte-exact (%d bytes)" % (what, len(want)))
    if got != want:
        t.diag("  got  %r" % got)
        t.diag("  want %r" % want)
        try:
            t.diag("  parsed: %r" % (pp.parse_v2(got),))
        except Exception as e:
            t.diag("  (does not parse as v2: %s)" % e)


def v2_tlvs(seen, key_kind, alpn=True, client=pp.PP2_CLIENT_SSL, verify=1, cn=None):
    """The TLVs after CRC32C, in sluice's order: ALPN, AUTHORITY, SSL (version, CN, cipher,
    sig alg, key alg)."""
    out = b""
    if alpn and seen["alpn"]:
        out += pp.tlv(pp.PP2_TYPE_ALPN, seen["alpn"])
    out += pp.tlv(pp.PP2_TYPE_AUTHORITY, SNI)
    subs = [(pp.PP2_SUBTYPE_SSL_VERSION, seen["version"])]
    if cn is not None:
        subs.append((pp.PP2_SUBTYPE_SSL_CN, cn))
    subs += [(pp.PP2_SUBTYPE_SSL_CIPHER, seen["cipher"]),
             (pp.PP2_SUBTYPE_SSL_SIG_ALG, SIG_ALG[key_kind]),
             (pp.PP2_SUBTYPE_SSL_KEY_ALG, KEY_ALG[key_kind])]
    return out + pp.ssl_tlv(client, verify, subs)


def check_v2_fields(t, raw, seen, fam, crc, what):
    """The same header read field by field, so a failure says which field is wrong."""
    try:
        h = pp.parse_v2(raw)
    except Exception as e:
        t.ok(False, "%s: the header parses as v2 (%s)" % (what, e))
        return
    t.ok(h["ver_cmd"] == 0x21 and h["fam"] == fam and h["sport"] == seen["sport"]
         and h["src"] == seen["src"] and h["dport"] == seen["dport"],
         "%s: version 2 / PROXY, family 0x%02x, client %s:%d -> %s:%d" % (
             what, h["fam"], h["src"], h["sport"], h["dst"], h["dport"]))
    types = [tt for tt, _ in h["tlvs"]]
    valid = pp.crc_valid(raw)
    if crc:
        t.ok(valid is True and types[0] == pp.PP2_TYPE_CRC32C,
             "%s: CRC32C TLV comes first and holds the header's CRC32c" % what)
    else:
        t.ok(valid is None and pp.PP2_TYPE_CRC32C not in types,
             "%s: no CRC32C TLV without proxy-crc" % what)


def main(t):
    t.ok(pp.crc32c_selftest(), "the test's CRC32c gives RFC 3720 B.4's values")
    ec_cert, ec_key = t.make_cert("ec")
    rsa_cert, rsa_key = t.make_cert("rsa", kind="rsa")
    ca, alice_cert, alice_key = make_client_ca(t)
    be = pp.Backend()
    slow_be = pp.Backend(slow=True)
    t.cleanups += [be.close, slow_be.close]
    v6, v6_reason = st.ipv6_loopback_available()
    p = dict(zip(("v1", "v2", "rsa", "mtls", "slow"), st.free_ports(5)))
    fes = [
        t.frontend(p["v1"], be.address, ec_cert, ec_key, proxy_protocol="v1"),
        t.frontend(p["v2"], be.address, ec_cert, ec_key, proxy_protocol="v2", proxy_crc=True,
                   alpn=["h2", "http/1.1"]),
        t.frontend(p["rsa"], be.address, rsa_cert, rsa_key, proxy_protocol="v2"),
        t.frontend(p["mtls"], be.address, ec_cert, ec_key, proxy_protocol="v2",
                   client_ca=ca, verify_client="require", alpn=["http/1.1"]),
        t.frontend(p["slow"], slow_be.address, ec_cert, ec_key, proxy_protocol="v2",
                   proxy_crc=True),
    ]
    if v6:
        p6 = dict(zip(("v1", "v2"), st.free_ports(2, socket.AF_INET6, "::1")))
        fes += [t.frontend(p6["v1"], be.address, ec_cert, ec_key, host="::1",
                           proxy_protocol="v1"),
                t.frontend(p6["v2"], be.address, ec_cert, ec_key, host="::1",
                           proxy_protocol="v2", alpn=["http/1.1"], proxy_crc=True)]
    fes = [{k.replace("_", "-"): v for k, v in fe.items()} for fe in fes]
    conf = t.write_config(fes, workers=1, log_connections=True)
    sl = t.start_sluice(conf)
    sent = []  # what each client sent

    def run(port, what, backend=be, **kw):
        seen = exchange(port, ec_cert if port != p["rsa"] else rsa_cert, **kw)
        seen["dport"] = port
        sent.append(seen["sent"])
        rec = backend.next_record(st.scaled(15))
        check_payload(t, rec, seen, what)
        return rec, seen

    # 1. v1
    rec, seen = run(p["v1"], "v1 IPv4")
    check_header(t, rec, pp.v1(socket.AF_INET, seen["src"], "127.0.0.1", seen["sport"],
                               p["v1"]), "v1 IPv4")
    if v6:
        rec, seen = run(p6["v1"], "v1 IPv6", host="::1")
        check_header(t, rec, pp.v1(socket.AF_INET6, seen["src"], "::1", seen["sport"],
                                   p6["v1"]), "v1 IPv6")
    else:
        t.skip(v6_reason, 2)

    # 2. v2: ECDSA, TLS 1.3, ALPN h2, CRC
    rec, seen = run(p["v2"], "v2 IPv4", alpn=["h2", "http/1.1"])
    t.ok(seen["alpn"] == "h2" and seen["version"] == "TLSv1.3",
         "v2 IPv4: the client negotiated h2 over TLSv1.3 (%s, %s)" % (seen["alpn"],
                                                                    seen["version"]))
    check_header(t, rec, pp.v2(socket.AF_INET, seen["src"], "127.0.0.1", seen["sport"],
                               p["v2"], v2_tlvs(seen, "ec"), crc=True), "v2 IPv4")
    check_v2_fields(t, rec.get("header", b""), seen, 0x11, True, "v2 IPv4")

    # RSA certificate, TLS 1.2, no ALPN configured or offered, no CRC
    rec, seen = run(p["rsa"], "v2 RSA TLS 1.2", version=ssl.TLSVersion.TLSv1_2)
    t.ok(seen["alpn"] is None and seen["version"] == "TLSv1.2",
         "v2 RSA: no ALPN, TLSv1.2 (%s, %s)" % (seen["alpn"], seen["version"]))
    check_header(t, rec, pp.v2(socket.AF_INET, seen["src"], "127.0.0.1", seen["sport"],
                               p["rsa"], v2_tlvs(seen, "rsa")), "v2 RSA TLS 1.2")
    check_v2_fields(t, rec.get("header", b""), seen, 0x11, False, "v2 RSA TLS 1.2")

    # client certificate under verify-client = "require"
    rec, seen = run(p["mtls"], "v2 client certificate", alpn=["http/1.1"],
                    client_cert=(alice_cert, alice_key))
    flags = pp.PP2_CLIENT_SSL | pp.PP2_CLIENT_CERT_CONN | pp.PP2_CLIENT_CERT_SESS
    check_header(t, rec, pp.v2(socket.AF_INET, seen["src"], "127.0.0.1", seen["sport"],
                               p["mtls"], v2_tlvs(seen, "ec", client=flags, verify=0,
                                                  cn="alice")), "v2 client certificate")
    ssl_info = None
    try:
        ssl_info = pp.parse_v2(rec.get("header", b""))["ssl"]
    except Exception:
        pass
    t.ok(ssl_info is not None and ssl_info["client"] == flags and ssl_info["verify"] == 0
         and (pp.PP2_SUBTYPE_SSL_CN, b"alice") in ssl_info["subs"],
         "v2 client certificate: SSL TLV says SSL|CERT_CONN|CERT_SESS, verified, CN alice")

    if v6:
        rec, seen = run(p6["v2"], "v2 IPv6", host="::1", alpn=["http/1.1"])
        check_header(t, rec, pp.v2(socket.AF_INET6, seen["src"], "::1", seen["sport"],
                                   p6["v2"], v2_tlvs(seen, "ec"), crc=True), "v2 IPv6")
        check_v2_fields(t, rec.get("header", b""), seen, 0x21, True, "v2 IPv6")
    else:
        t.skip(v6_reason, 4)

    # 3. a backend that reads slowly still gets the whole header, then the data
    t0 = time.monotonic()
    rec, seen = run(p["slow"], "v2 slow backend", backend=slow_be)
    check_header(t, rec, pp.v2(socket.AF_INET, seen["src"], "127.0.0.1", seen["sport"],
                               p["slow"], v2_tlvs(seen, "ec"), crc=True), "v2 slow backend")
    t.diag("slow backend exchange took %.2f s" % (time.monotonic() - t0))

    # 4. the header is not counted as relayed bytes
    doc = {}

    def c2b():
        rc, out, _, _ = st.run([st.SLUICESTAT, "-j", "-f", t.path("sluice.stats")],
                               timeout=st.scaled(10))
        if rc == 0:
            doc.update(json.loads(out))
            return doc["totals"]["counters"]["bytes_client_to_backend"] == sum(sent)
        return False

    if st.SLUICESTAT and os.path.exists(st.SLUICESTAT):
        st.wait_until(c2b, st.scaled(5))
        got = doc.get("totals", {}).get("counters", {}).get("bytes_client_to_backend")
        t.ok(got == sum(sent), "sluicestat: bytes client to backend %s = what the clients "
             "sent (%d), no header counted" % (got, sum(sent)))
    else:
        t.skip("sluicestat is not built (SLUICESTAT=%r)" % st.SLUICESTAT)
    recs = sl.wait_log(r"event=connection\b", count=len(sent))
    logged = sorted(int(x) for ln in recs for x in
                    re.findall(r"\bbytes_client_to_backend=(\d+)", ln))
    t.ok(logged == sorted(sent), "connection log: bytes_client_to_backend per connection %s "
         "= what each client sent" % (logged,))

    # 5. config checks
    bad = t.write_config([dict(fes[0], **{"proxy-crc": True})], name="crc-v1.conf")
    rc, out, err = t.sluice_check(bad)
    t.ok(rc == 1 and "proxy-crc needs proxy-protocol" in err,
         "sluice -t refuses proxy-crc = true with proxy-protocol v1: %s" % err.strip())
    bad = t.write_config([dict(fes[0], **{"proxy-protocol": "v3"})], name="v3.conf")
    rc, out, err = t.sluice_check(bad)
    t.ok(rc == 1 and "must be off, v1 or v2" in err,
         "sluice -t refuses proxy-protocol = \"v3\": %s" % err.strip())

    sl.stop_and_check()
    stats = sl.stats()
    t.ok(stats.get("bytes_client_to_backend") == sum(sent),
         "exit stats: bytes client to backend %s = what the clients sent (%d)"
         % (stats.get("bytes_client_to_backend"), sum(sent)))


st.Test("proxy-protocol").main(main)
