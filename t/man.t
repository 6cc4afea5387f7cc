#!/usr/bin/env python3
# Documentation (issue 3): sluice(8) and sluice.conf(5) render without a warning under
# groff -man -ww, and `make install` installs them with the binary, the example config
# and the contrib files (init script, systemd unit, logrotate and sysctl snippets).
import os
import shutil

import sluicetest as st

PAGES = ["man/sluice.8", "man/sluice.conf.5", "man/sluicestat.8"]
INSTALLED = ["sbin/sluice", "bin/sluicestat", "share/man/man8/sluice.8",
             "share/man/man8/sluicestat.8", "share/man/man5/sluice.conf.5",
             "share/doc/sluice/examples/sluice.conf", "share/doc/sluice/contrib/sluice.init",
             "share/doc/sluice/contrib/sluice.service",
             "share/doc/sluice/contrib/sluice.logrotate",
             "share/doc/sluice/contrib/sluice-sysctl.conf"]


def main(t):
    if not st.SRCDIR:
        t.skip_all("SLUICE_SRCDIR is not set (run through make check)")
    if shutil.which("groff") is None:
        t.skip("groff is not installed (Debian package groff)", len(PAGES))
    else:
        for page in PAGES:
            rc, out, err, _ = st.run(["groff", "-man", "-ww", "-z",
                                      os.path.join(st.SRCDIR, page)])
            text = (out + err).decode(errors="replace").strip()
            t.ok(rc == 0 and not text, "%s renders without warnings%s"
                 % (page, (": " + text[:300]) if text else ""))

    builddir = os.path.dirname(st.SLUICE)
    dest = t.path("destdir")
    rc, out, err, _ = st.run(["make", "-C", builddir, "install", "DESTDIR=" + dest,
                              "prefix=/usr"], timeout=st.scaled(120))
    t.ok(rc == 0, "make install DESTDIR=... succeeds%s"
         % ("" if rc == 0 else ": " + err.decode(errors="replace")[-300:]))
    missing = [p for p in INSTALLED if not os.path.exists(os.path.join(dest, "usr", p))]
    t.ok(not missing, "make install installs the binary, both man pages, the example and "
         "contrib files (missing: %s)" % missing)
    init = os.path.join(dest, "usr/share/doc/sluice/contrib/sluice.init")
    t.ok(os.path.exists(init) and os.access(init, os.X_OK), "the init script is executable")


st.Test("man", need_sluice=True).main(main)
