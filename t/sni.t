#!/usr/bin/env python3
# Certificates chosen by SNI (issue 6, test 1): a frontend with a default certificate,
# two named ones (one of them with an RSA partner for the same names), a wildcard, an
# exact name under the wildcard and a certificate named only by its CN. openssl s_client
# -servername gets the right certificate each time: exact names before wildcards, a
# wildcard covers one label, case does not matter, no SNI or an unknown name gets the
# default. A session resumes under the name it was issued for. sni-strict = true refuses
# an unknown or absent name with an unrecognized_name alert and says why in the
# connection log. A certificate that no name would ever reach is a config error, and a
# HUP serves a newly added name.
import os
import re

import servicetest as sv
import sluicetest as st

REQUEST = b"GET / HTTP/1.0\r\nHost: x\r\n\r\n"
RSA_ONLY = "rsa_pss_rsae_sha256:rsa_pss_rsae_sha384:rsa_pkcs1_sha256:rsa_pkcs1_sha384"


def named_cert(t, name, sans, kind="ec", cn=None):
    """A self-signed certificate whose subject CN is NAME (or cn) and whose SANs are
    sans (DNS names; none: no subjectAltName at all)."""
    key = t.make_key(name, kind)
    cert = t.path(name + ".pem")
    argv = ["req", "-x509", "-new", "-key", key, "-out", cert, "-days", "30",
            "-subj", "/CN=" + (cn or name)]
    if sans:
        argv += ["-addext", "subjectAltName=" + ",".join("DNS:" + s for s in sans)]
    t._openssl(*argv)
    os.chmod(cert, 0o644)
    return {"cert": cert, "key": key}


def s_client(port, servername, extra=(), sess_in=None, sess_out=None):
    """(subject CN served, handshake and request worked, resumed, s_client's text)."""
    argv = ["openssl", "s_client", "-connect", "127.0.0.1:%d" % port, "-ign_eof"]
    argv += ["-servername", servername] if servername else ["-noservername"]
    argv += list(extra)
    if sess_in:
        argv += ["-sess_in", sess_in]
    if sess_out:
        argv += ["-sess_out", sess_out]
    rc, out, err, _ = st.run(argv, input=REQUEST, timeout=st.scaled(10))
    text = out.decode(errors="replace") + err.decode(errors="replace")
    m = re.search(r"^subject=.*CN ?= ?([^,\n]+)", text, re.M)
    return ((m.group(1).strip() if m else None), rc == 0 and "hello from app" in text,
            "\nReused," in text, text)


def check_choice(t, port):
    cases = [
        ("one.test", "one", "an exact name"),
        ("uno.test", "one", "the certificate's second SAN"),
        ("ONE.Test", "one", "a name in other case"),
        ("one.test.", "one", "an absolute name (trailing dot)"),
        ("a.wild.test", "wild", "a name under the wildcard"),
        ("x.wild.test", "exact", "an exact name before the wildcard covering it"),
        ("a.b.wild.test", "default", "two labels under the wildcard: the default"),
        ("wild.test", "default", "the wildcard's own parent: the default"),
        ("cn.test", "cn.test", "the CN of a certificate without SAN"),
        ("nomatch.test", "default", "an unknown name: the default"),
        (None, "default", "no SNI: the default"),
    ]
    for servername, want, what in cases:
        cn, ok, _, _ = s_client(port, servername)
        t.ok(ok and cn == want, "%s (%s) gets %s (got %s, ok=%s)"
             % (what, servername, want, cn, ok))
    cn, ok, _, text = s_client(port, "one.test", ["-sigalgs", RSA_ONLY])
    t.ok(ok and cn == "one-rsa" and "Server public key is 2048 bit" in text,
         "one.test to a client limited to RSA gets the RSA certificate for the same names "
         "(got %s, ok=%s)" % (cn, ok))
    cn, ok, _, _ = s_client(port, "uno.test", ["-sigalgs", RSA_ONLY])
    t.ok(ok and cn == "one-rsa", "uno.test likewise (got %s)" % cn)


def check_resume(t, port):
    for version in ("-tls1_3", "-tls1_2"):
        sess = t.path("sess%s.pem" % version)
        cn, ok, _, _ = s_client(port, "a.wild.test", [version], sess_out=sess)
        cn2, ok2, reused, _ = s_client(port, "a.wild.test", [version], sess_in=sess)
        t.ok(ok and ok2 and reused and cn == cn2 == "wild",
             "%s: a session issued under a.wild.test resumes under it (reused=%s, %s/%s)"
             % (version, reused, cn, cn2))


def check_strict(t, port, sl):
    cn, ok, _, _ = s_client(port, "one.test")
    t.ok(ok and cn == "one", "sni-strict: a known name is served (%s)" % cn)
    _, ok, _, text = s_client(port, "nomatch.test")
    t.ok(not ok and "unrecognized name" in text,
         "sni-strict: an unknown name is refused with an unrecognized_name alert (%s)"
         % (re.findall(r".*alert.*", text)[:1]))
    _, ok, _, text = s_client(port, None)
    t.ok(not ok and "unrecognized name" in text,
         "sni-strict: no SNI is refused with an unrecognized_name alert")
    lines = sl.wait_log(r'sni-strict: no certificate for \\?"nomatch.test', st.scaled(5))
    line = lines[0] if lines else None
    t.ok(line and "reason=handshake_error" in line,
         "sni-strict: the connection log says handshake_error and names the unknown name (%s)"
         % line)
    t.ok(sl.wait_log(r"sni-strict: the client sent no server name", st.scaled(5)),
         "sni-strict: the connection log says the client sent no server name")


def check_never_served(t, be, certs):
    port = st.free_port()
    twin = named_cert(t, "twin", ["one.test", "uno.test"])
    conf = t.write_config([t.frontend(port, be.address, None, None,
                                      certs=[certs["default"], certs["one"], twin])],
                          name="never.conf")
    rc, out, err, _ = st.run([os.environ["SLUICE"], "-t", "-f", conf], timeout=st.scaled(20))
    msg = (out + err).decode(errors="replace")
    t.ok(rc == 1 and re.search(r"never\.conf:\d+: cert \S*twin\.pem is never served", msg),
         "a second ECDSA certificate for names already served is a config error naming it "
         "(rc %d: %s)" % (rc, msg.strip().splitlines()[-1:]))


def check_reload(t, be, certs):
    port = st.free_port()
    fe = t.frontend(port, be.address, None, None, certs=[certs["default"], certs["one"]])
    conf = t.write_config([fe], name="reload.conf")
    sl = t.start_sluice(conf, name="reload")
    cn, ok, _, _ = s_client(port, "a.wild.test")
    t.ok(ok and cn == "default", "before HUP: a.wild.test gets the default (%s)" % cn)
    fe["certs"].append(certs["wild"])
    t.write_config([fe], name="reload.conf")
    gen, _ = sv.reload(sl)
    cn, ok, _, _ = s_client(port, "a.wild.test")
    t.ok(gen == 2 and ok and cn == "wild",
         "after HUP (generation %s): a.wild.test gets the newly added wildcard (%s)" % (gen, cn))
    sl.stop_and_check(what="sluice (reload)")


def main(t):
    be = t.start_backend("app", "unix")
    certs = {
        "default": named_cert(t, "default", ["default.test"]),
        "one": named_cert(t, "one", ["one.test", "uno.test"]),
        "one-rsa": named_cert(t, "one-rsa", ["one.test", "uno.test"], kind="rsa"),
        "wild": named_cert(t, "wild", ["*.wild.test"]),
        "exact": named_cert(t, "exact", ["x.wild.test"]),
        "cnonly": named_cert(t, "cnonly", [], cn="cn.test"),
    }
    order = ["default", "one", "one-rsa", "wild", "exact", "cnonly"]
    listed = [{"cert": certs[n]["cert"], "key": certs[n]["key"]} for n in order]
    port, strict_port = st.free_ports(2)
    fes = [t.frontend(port, be.address, None, None, certs=listed),
           t.frontend(strict_port, be.address, None, None, certs=listed, **{"sni-strict": True})]
    sl = t.start_sluice(t.write_config(fes, log_connections=True))
    check_choice(t, port)
    check_resume(t, port)
    check_strict(t, strict_port, sl)
    sl.stop_and_check()
    check_never_served(t, be, certs)
    check_reload(t, be, certs)


st.Test("sni").main(main)
