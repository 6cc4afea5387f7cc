#!/usr/bin/env python3
# Logging (issue 3, DESIGN §6): log-file receives the master's and the workers' lines and
# is reopened on USR1 (after logrotate renamed it), by the workers too; syslog gets lines
# with the configured facility, without blocking (a syslog socket nobody reads does not
# stall serving). /dev/log is created for the test when the machine has none.
import os
import re
import socket
import time

import sluicetest as st

DEVLOG = "/dev/log"
LOCAL3 = 19


def syslog_socket(t):
    """A datagram socket at /dev/log, or None (with the reason) when one exists already."""
    if os.path.exists(DEVLOG):
        return None, "%s exists (a real syslog runs here): not replacing it" % DEVLOG
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        s.bind(DEVLOG)
    except OSError as e:
        s.close()
        return None, "cannot bind %s: %s" % (DEVLOG, e)
    os.chmod(DEVLOG, 0o666)
    t.cleanups.append(lambda: os.path.exists(DEVLOG) and os.unlink(DEVLOG))
    return s, None


def pids_in(path):
    try:
        with open(path, errors="replace") as f:
            return {int(p) for p in re.findall(r"sluice\[(\d+)\]", f.read())}
    except OSError:
        return set()


def curl_until_logged(t, port, tag, logfile, pids):
    """Requests until every pid has a line in logfile. SO_REUSEPORT spreads connections
    by a hash of the client port, so a fixed handful may all land on one worker."""
    for i in range(60):
        t.curl(port, "/%s%d" % (tag, i))
        if i >= 5 and set(pids) <= pids_in(logfile):
            return
    st.wait_until(lambda: set(pids) <= pids_in(logfile), st.scaled(3))


def check_log_file(t, cert, key, be):
    port = st.free_port()
    logfile = t.path("logs", "sluice.log")
    os.makedirs(os.path.dirname(logfile))
    conf = t.write_config([t.frontend(port, be.address, cert, key)], workers=2,
                          log_file=logfile, log_level="debug")
    sl = t.start_sluice(conf)
    workers = sl.wait_workers(2)
    curl_until_logged(t, port, "before", logfile, workers)
    got = pids_in(logfile)
    t.ok(sl.pid in got and set(workers) <= got,
         "log-file has lines from the master and both workers (%s)" % sorted(got))
    st_ = os.stat(logfile)
    t.ok(st_.st_mode & 0o777 == 0o640, "log-file mode 0640 (%o)" % (st_.st_mode & 0o777))

    os.rename(logfile, logfile + ".1")
    os.kill(sl.pid, 10)  # SIGUSR1, as the logrotate snippet sends it
    t.ok(st.wait_until(lambda: os.path.exists(logfile), st.scaled(3)),
         "USR1: the master reopened log-file under its name")
    curl_until_logged(t, port, "after", logfile, workers)
    got = pids_in(logfile)
    t.ok(set(workers) <= got,
         "after USR1 both workers write to the new file (%s)" % sorted(got))
    with open(logfile + ".1", errors="replace") as f:
        old = f.read()
    t.ok("/after" not in old, "no request after USR1 is logged in the rotated file")
    sl.stop_and_check()


def check_syslog(t, cert, key, be):
    sock, why = syslog_socket(t)
    if sock is None:
        t.skip(why, 3)
        return
    port = st.free_port()
    conf = t.write_config([t.frontend(port, be.address, cert, key)], name="syslog.conf",
                          workers=2, syslog=True, syslog_facility="local3")
    sl = t.start_sluice(conf, name="syslog")
    sl.wait_workers(2)
    sock.settimeout(st.scaled(3))
    lines = []
    master_ready = re.compile(r"sluice\[\d+\]: info: sluice \S+ ready")
    try:
        while not any(master_ready.search(ln) for ln in lines):
            lines.append(sock.recv(4096).decode(errors="replace"))
    except socket.timeout:
        pass
    ready = [ln for ln in lines if master_ready.search(ln)]
    t.ok(ready, "syslog receives the master's ready line (%d lines)" % len(lines))
    pri = [int(m.group(1)) for m in (re.match(r"<(\d+)>", ln) for ln in lines) if m]
    t.ok(pri and all(p >> 3 == LOCAL3 for p in pri),
         "every syslog line carries facility local3 (priorities %s)" % sorted(set(pri)))
    # Nobody reads the socket from here on: it fills, and serving must not stall on it.
    t0 = time.monotonic()
    ok = all(t.curl(port, "/s%d" % i)[0] == 0 for i in range(30))
    t.ok(ok and time.monotonic() - t0 < st.scaled(10),
         "with a full syslog socket 30 requests are still served (%.1f s)"
         % (time.monotonic() - t0))
    sl.stop_and_check()
    sock.close()


def main(t):
    cert, key = t.make_cert()
    be = t.start_backend("app", "unix")
    check_log_file(t, cert, key, be)
    check_syslog(t, cert, key, be)


st.Test("logging").main(main)
