#!/usr/bin/env python3
# tls.ticket-key-file (issue 6, test 5): two sluice instances whose files hold the same
# key resume each other's sessions, different keys do not; a frontend's own file (tls
# override) is its own. Rotation on HUP: [K1] -> [K2, K1] keeps K1 tickets resuming and
# issues new ones under K2 (an instance holding only [K2] resumes them, also a K1 ticket
# renewed on resumption); -> [K2] turns K1 tickets into full handshakes. Bad files fail
# `sluice -t` with FILE:LINE, and a HUP onto a bad file is logged while the running
# generation keeps serving and resuming with its keys. TLS 1.3 and TLS 1.2 throughout.
# (Without the file, resumption across workers and HUP is t/resume.t's.)
import base64
import os
import re
import ssl

import servicetest as sv
import sluicetest as st
import tlsclient as tc

VERSIONS = ((ssl.TLSVersion.TLSv1_3, "TLS 1.3"), (ssl.TLSVersion.TLSv1_2, "TLS 1.2"))


def new_key(name_byte=None):
    raw = bytearray(os.urandom(80))
    if name_byte is not None:
        raw[:16] = bytes([name_byte]) * 16
    return bytes(raw)


def key_text(raw, wrap=False):
    """One key as a line, or wrapped 64 + 44 as `openssl rand -base64 80` prints it."""
    b64 = base64.b64encode(raw).decode()
    return b64[:64] + "\n" + b64[64:] if wrap else b64


def write_keys(t, name, keys, mode=0o600, comment=True):
    text = "# session-ticket keys, the first encrypts\n\n" if comment else ""
    text += "".join(key_text(k, wrap=(i % 2 == 1)) + "\n" for i, k in enumerate(keys))
    p = t.write_file(name, text)
    os.chmod(p, mode)
    return p


def session(port, cert, ctx, sess=None):
    """(ok, reused, new session, error) of one request, offering sess."""
    r = sv.https_get(port, cert, ctx=ctx, timeout=st.scaled(10), session=sess)
    return r["ok"], r["reused"], r["session"], r["error"]


def check_resume(t, port, cert, ctx, sess, want, what):
    ok, reused, new, err = session(port, cert, ctx, sess)
    t.ok(ok and reused is want, "%s: %s (ok=%s reused=%s%s)"
         % (what, "resumed" if want else "full handshake", ok, reused,
            ", " + err if err else ""))
    return new


def fresh(t, port, cert, ctx, what):
    ok, reused, new, err = session(port, cert, ctx)
    t.ok(ok and new is not None and new.has_ticket and not reused,
         "%s: a full handshake brings a ticket (%s)" % (what, err or "ok"))
    return new


def hup(t, sl, what):
    g, slots = sv.reload(sl)
    t.ok(g is not None and slots, "%s: HUP, generation %s serves" % (what, g))


def bad_files(t, cert, key, be):
    """sluice -t refuses each bad file with FILE:LINE; returns the configs' line."""
    good = key_text(new_key())
    k79 = base64.b64encode(os.urandom(79)).decode()
    dup = new_key(7)
    cases = [
        ("missing", None, None, r"ticket-key-file %s: No such file"),
        ("empty", "", None, r"ticket-key-file %s: no key"),
        ("only-comments", "# nothing here\n\n", None, r"ticket-key-file %s: no key"),
        ("bad-line", "# ok\n%s\nthis is not a key!\n" % good, 3, r"not base64"),
        ("79-bytes", "%s\n%s\n" % (good, k79), 2, r"base64 of 80 bytes, this one has 79"),
        ("81-bytes", "%s\n" % base64.b64encode(os.urandom(81)).decode(), 1,
         r"base64 of 80 bytes, this one has 81"),
        ("90-bytes", "%s\n" % base64.b64encode(os.urandom(90)).decode(), 1,
         r"base64 of 80 bytes .*has more"),
        ("cut-short", "%s\n\n%s\n" % (good, good[:64]), 3, r"ends after 64"),
        ("duplicate", "%s\n%s\n%s\n" % (key_text(dup), good, key_text(new_key(7))), 3,
         r"name \(first 16 bytes\) of key 1"),
        ("world-writable", "%s\n" % good, None, r"ticket-key-file %s: writable by anyone"),
    ]
    for name, text, line, pattern in cases:
        kf = t.path("bad-%s.keys" % name)
        if text is not None:
            t.write_file(os.path.basename(kf), text)
            os.chmod(kf, 0o666 if name == "world-writable" else 0o600)
        conf = t.write_config([t.frontend(st.free_port(), be.address, cert, key)],
                              name="bad-%s.conf" % name, tls={"ticket-key-file": kf})
        conf_line = next(i for i, ln in enumerate(open(conf), 1) if "ticket-key-file" in ln)
        rc, out, err = t.sluice_check(conf)
        where = ("%s:%d: " % (kf, line)) if line else ("%s:%d: " % (conf, conf_line))
        pat = pattern % re.escape(kf) if "%s" in pattern else pattern
        t.ok(rc == 1 and ("sluice: " + where) in err and re.search(pat, err)
             and "configuration OK" not in out,
             "sluice -t, %s key file: exit 1, \"%s...\" (status %s: %s)"
             % (name, where, rc, err.strip()[-200:]))
    # readable by others: a warning, not a refusal
    kf = write_keys(t, "readable.keys", [new_key()], mode=0o644)
    conf = t.write_config([t.frontend(st.free_port(), be.address, cert, key)],
                          name="readable.conf", tls={"ticket-key-file": kf})
    rc, out, err = t.sluice_check(conf)
    t.ok(rc == 0 and "configuration OK" in out
         and re.search(r"warning: .*ticket-key-file %s is readable by others" % re.escape(kf),
                       err),
         "sluice -t, key file of mode 0644: OK with a warning (status %s: %s)"
         % (rc, err.strip()[-200:]))


def main(t):
    cert, key = t.make_cert()
    be = t.start_backend("app", "unix")
    ctxs = {name: tc.context(cert, version=v) for v, name in VERSIONS}
    k1, k2, k3 = new_key(), new_key(), new_key()

    bad_files(t, cert, key, be)

    # instance A: two workers, frontend A1 with the global file, A2 with its own;
    # instance B: one worker, its own file
    a_keys = write_keys(t, "a.keys", [k1])
    a2_keys = write_keys(t, "a2.keys", [k3])
    b_keys = write_keys(t, "b.keys", [k1])
    pa1, pa2, pb = st.free_ports(3)
    conf_a = t.write_config([t.frontend(pa1, be.address, cert, key),
                             t.frontend(pa2, be.address, cert, key,
                                        tls={"ticket-key-file": a2_keys})],
                            name="a.conf", workers=2, tls={"ticket-key-file": a_keys})
    conf_b = t.write_config([t.frontend(pb, be.address, cert, key)], name="b.conf",
                            workers=1, tls={"ticket-key-file": "b.keys"})  # relative path
    rc, out, err = t.sluice_check(conf_a)
    t.ok(rc == 0 and "configuration OK" in out and not err,
         "sluice -t: a file of keys (one a line and wrapped, comments, blank lines) is OK "
         "(status %s: %s)" % (rc, err.strip()))
    sa = t.start_sluice(conf_a, name="a")
    sb = t.start_sluice(conf_b, name="b")

    # 1. the same key in both files: each resumes the other's sessions
    t1 = {}
    for name, ctx in ctxs.items():
        t1[name] = fresh(t, pa1, cert, ctx, "%s, A, file [K1]" % name)
        check_resume(t, pb, cert, ctx, t1[name], True, "%s, A's K1 ticket on B [K1]" % name)
        s = fresh(t, pb, cert, ctx, "%s, B" % name)
        check_resume(t, pa1, cert, ctx, s, True, "%s, B's K1 ticket on A [K1]" % name)
        check_resume(t, pa2, cert, ctx, s, False,
                     "%s, the K1 ticket on A's frontend with its own file [K3]" % name)
        s = fresh(t, pa2, cert, ctx, "%s, A2 [K3]" % name)
        check_resume(t, pa2, cert, ctx, s, True, "%s, A2's own ticket on A2" % name)
        check_resume(t, pa1, cert, ctx, s, False, "%s, A2's K3 ticket on A1 [K1]" % name)

    # different keys: B now holds [K3] only
    write_keys(t, "b.keys", [k3])
    hup(t, sb, "B -> [K3]")
    for name, ctx in ctxs.items():
        check_resume(t, pb, cert, ctx, t1[name], False, "%s, A's K1 ticket on B [K3]" % name)
        s = fresh(t, pb, cert, ctx, "%s, B [K3]" % name)
        check_resume(t, pa1, cert, ctx, s, False, "%s, B's K3 ticket on A [K1]" % name)
        check_resume(t, pa2, cert, ctx, s, True, "%s, B's K3 ticket on A2 [K3]" % name)

    # 2. rotation: A [K1] -> [K2, K1]; B [K2] stands for a fleet member already rotated
    write_keys(t, "a.keys", [k2, k1])
    hup(t, sa, "A -> [K2, K1]")
    write_keys(t, "b.keys", [k2])
    hup(t, sb, "B -> [K2]")
    t2 = {}
    for name, ctx in ctxs.items():
        renewed = check_resume(t, pa1, cert, ctx, t1[name], True,
                               "%s, the K1 ticket on A [K2, K1]" % name)
        check_resume(t, pb, cert, ctx, renewed, True,
                     "%s, the ticket renewed on that resumption is under K2: B [K2]" % name)
        t2[name] = fresh(t, pa1, cert, ctx, "%s, A [K2, K1]" % name)
        check_resume(t, pb, cert, ctx, t2[name], True,
                     "%s, a new ticket from A [K2, K1] on B [K2]" % name)
    write_keys(t, "a.keys", [k2])
    hup(t, sa, "A -> [K2]")
    for name, ctx in ctxs.items():
        check_resume(t, pa1, cert, ctx, t1[name], False, "%s, the K1 ticket on A [K2]" % name)
        check_resume(t, pa1, cert, ctx, t2[name], True, "%s, a K2 ticket on A [K2]" % name)

    # 3. a HUP onto a bad file: logged, the running generation keeps its keys
    t.write_file("a.keys", "%s\nnot a key\n" % key_text(k1))
    os.chmod(t.path("a.keys"), 0o600)
    os.kill(sa.pid, 1)
    t.ok(sa.wait_log(r"error: reload failed, generation \d+ keeps serving: %s:2: not base64"
                     % re.escape(a_keys), timeout=st.scaled(10)),
         "HUP onto a bad key file: \"reload failed ... a.keys:2: not base64\" logged")
    for name, ctx in ctxs.items():
        check_resume(t, pa1, cert, ctx, t2[name], True,
                     "%s, after the failed reload a K2 ticket still resumes on A" % name)
    os.chmod(t.path("a.keys"), 0o606)
    os.kill(sa.pid, 1)
    t.ok(sa.wait_log(r"error: reload failed, generation \d+ keeps serving: .*ticket-key-file "
                     r"%s: writable by anyone" % re.escape(a_keys), timeout=st.scaled(10)),
         "HUP onto a world-writable key file: refused and logged")
    for name, ctx in ctxs.items():
        check_resume(t, pa1, cert, ctx, t2[name], True,
                     "%s, and a K2 ticket still resumes on A" % name)
    sa.stop_and_check(allow_errors=[r"error: reload failed, generation \d+ keeps serving"],
                      what="sluice A")
    sb.stop_and_check(what="sluice B")


st.Test("ticket-keys").main(main)
