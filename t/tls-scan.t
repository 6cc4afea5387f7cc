#!/usr/bin/env python3
# A TLS scanner against the default TLS settings (issue 6, test 8): sslscan, from Debian,
# finds nothing below TLS 1.2, only AEAD ciphers with forward secrecy, the fallback SCSV
# honoured, no renegotiation and nothing vulnerable to Heartbleed, for an ECDSA and an RSA
# certificate. Its XML report is read, so a change of its text layout cannot make the
# checks pass by not matching; the fallback SCSV result is only in its text report.
# sslscan cannot probe TLS compression with Debian's OpenSSL (built without zlib), so
# compression (off: SSL_OP_NO_COMPRESSION) is not checked here.
import shutil
import xml.etree.ElementTree as ET

import sluicetest as st

AEAD = ("GCM", "CHACHA20", "CCM")  # in OpenSSL's and IANA's cipher names alike


def scan(t, port):
    """(the XML report's ssltest element or None, the text report)."""
    reports = []
    for fmt in (["--xml=-"], []):
        rc, out, err, _ = st.run(["sslscan", "--no-colour"] + fmt + ["127.0.0.1:%d" % port],
                                 timeout=st.scaled(60))
        if rc != 0:
            t.diag("sslscan rc=%s: %s" % (rc, (err or out).decode(errors="replace")[-400:]))
        reports.append(out.decode(errors="replace"))
    start = reports[0].find("<?xml")
    test = ET.fromstring(reports[0][start:]).find("ssltest") if start >= 0 else None
    return test, reports[1]


def check(t, name, report):
    test, text = report
    if test is None:
        t.ok(False, "%s: sslscan produced a report" % name)
        return
    protocols = {(p.get("type"), p.get("version")): p.get("enabled")
                 for p in test.findall("protocol")}
    enabled = sorted("%s%s" % k for k, v in protocols.items() if v == "1")
    t.ok(enabled == ["tls1.2", "tls1.3"] and len(protocols) >= 6,
         "%s: only TLS 1.2 and 1.3 are enabled (%s of %d probed)" % (name, enabled,
                                                                     len(protocols)))
    ciphers = [(c.get("sslversion"), c.get("cipher"), c.get("status"))
               for c in test.findall("cipher")]
    weak = [c for c in ciphers if not any(a in c[1] for a in AEAD)]
    t.ok(ciphers and not weak, "%s: %d ciphers accepted, all AEAD (not: %s)"
         % (name, len(ciphers), weak))
    no_pfs = [c for c in ciphers if c[0] == "TLSv1.2" and not c[1].startswith("ECDHE-")]
    t.ok(not no_pfs, "%s: every TLS 1.2 cipher uses ECDHE (not: %s)" % (name, no_pfs))
    t.ok("Server supports TLS Fallback SCSV" in text,
         "%s: the TLS Fallback SCSV is honoured" % name)
    reneg = test.find("renegotiation")
    t.ok(reneg is not None and reneg.get("supported") == "0",
         "%s: renegotiation is not supported (%s)"
         % (name, reneg.attrib if reneg is not None else "no result"))
    bleed = test.findall("heartbleed")
    t.ok(bleed and all(h.get("vulnerable") == "0" for h in bleed),
         "%s: not vulnerable to Heartbleed (%s)"
         % (name, [(h.get("sslversion"), h.get("vulnerable")) for h in bleed]))


def main(t):
    if shutil.which("sslscan") is None:
        t.skip_all("sslscan is not installed (Debian package sslscan; ./quickstart installs it)")
    ec_cert, ec_key = t.make_cert("ecdsa", kind="ec")
    rsa_cert, rsa_key = t.make_cert("rsa", kind="rsa")
    be = t.start_backend("app", "unix")
    p_ec, p_rsa = st.free_ports(2)
    conf = t.write_config([t.frontend(p_ec, be.address, ec_cert, ec_key),
                           t.frontend(p_rsa, be.address, rsa_cert, rsa_key)])
    sl = t.start_sluice(conf)
    check(t, "ECDSA certificate", scan(t, p_ec))
    check(t, "RSA certificate", scan(t, p_rsa))
    sl.stop_and_check()


st.Test("tls-scan").main(main)
