#!/usr/bin/env python3
# Binary upgrade on SIGUSR2 (issue 9). sluice runs detached (-d) from a copy of the built
# binary in the test's folder, started with a relative -f, so the test can replace the
# file and see the absolute config path handed on.
# 1. Upgrade under a continuous request loop (Python ssl and curl): no request fails; the
#    new master (a child of the old one, same session, not detached again) holds the
#    pidfile and the stats file by the time the old one logs "draining"; the old master
#    and its workers exit, the old master with status 0, leaving both files; the new one
#    has its own workers on the very same listening sockets and is then our child.
# 2. The binary replaced on disk before SIGUSR2 is what runs: /proc/PID/exe is the new
#    file (its inode), not "(deleted)".
# 3. A connection opened before SIGUSR2 still works after "draining", on its old worker,
#    and the old master waits for it (drain-timeout is long) and exits once it closes.
# 4. A config with an unknown key: "upgrade failed: PATH (pid N) exited with status 1:"
#    with the new master's "sluice: FILE:LINE: ..."; the old master, its workers, the
#    pidfile and the stats file stay; nothing else left running. Fixed: SIGUSR2 works.
# 5. A "binary" that prints to stderr and exits 3: "upgrade failed" with status 3 and the
#    text; the old master keeps serving.
# 6. SIGUSR2 refused ("SIGUSR2 ignored") while an upgrade is starting (the binary is a
#    wrapper that sleeps before it executes sluice) and during the drain of SIGTERM;
#    deferred while a reload is in progress (a fault keeps the new generation from
#    serving until its rollback) and run once one generation serves alone; SIGTERM
#    while a new master starts stops that one too, even 2 ms after SIGUSR2 (between
#    fork and exec); SIGTERM to a new master that cannot serve yet leaves the shared
#    sockets open to new clients of the old master.
# 7. SIGTERM to the last master: exit 0, pidfile and stats file removed, nothing left.
import json
import os
import re
import signal
import time

import servicetest as sv
import sluicetest as st
import tlsclient as tc

WORKERS = 2
DRAIN = 30  # long: an old master that exits soon exits because it is idle, not timed out
ALLOWED_ERRORS = [r"upgrade failed: ", r"does not serve within"]
BAD_KEY = "upgrade-test-typo"
BROKEN_TEXT = "sluice-upgrade-test: this is not a sluice binary"
SHORTLY = st.scaled(5)
BUILT = st.SLUICE  # the binary make built; the test runs copies of it


def line_of(pid, text):
    """A regex for a log line of process pid whose message matches text."""
    return r"\bsluice\[%d\]: \w+: %s" % (pid, text)


def install(dst, src=None, data=None, mode=0o755):
    """Put a copy of src (or data) at dst as a new file (new inode, atomic rename), so a
    process running the old file keeps it and a new exec reads the new one."""
    if data is None:
        with open(src, "rb") as f:
            data = f.read()
    tmp = dst + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.chmod(tmp, mode)
    os.replace(tmp, dst)
    return os.stat(dst).st_ino


def listen_inodes(port):
    """The inodes of the sockets in LISTEN on port: the same sockets keep theirs."""
    return sorted(inode for _, local, _, state, inode in st._proc_tcp_sockets()
                  if state == "0A" and local == port)


def send(pid, sig):
    """kill(2) that reports a missing process instead of raising."""
    try:
        os.kill(pid, sig)
        return True
    except ProcessLookupError:
        return False


def sid(pid):
    try:
        return os.getsid(pid)
    except OSError:
        return None


def cmdline(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0")[:-1]]
    except OSError:
        return []


def exe_link(pid):
    try:
        return os.readlink("/proc/%d/exe" % pid)
    except OSError:
        return None


def exe_inode(pid):
    try:
        return os.stat("/proc/%d/exe" % pid).st_ino
    except OSError:
        return None


def stat_json(statsfile):
    """sluicestat -j: (document or None, what went wrong)."""
    rc, out, err, _ = st.run([st.SLUICESTAT, "-f", statsfile, "-j"], timeout=st.scaled(10))
    if rc != 0:
        return None, "sluicestat -j: status %s: %s" % (rc, err.decode(errors="replace").strip())
    try:
        return json.loads(out), ""
    except ValueError as e:
        return None, "sluicestat -j: %s" % e


def stat_master(statsfile):
    """(master pid, alive, sorted worker pids) as sluicestat -j reports them, or None."""
    doc, _ = stat_json(statsfile)
    if doc is None:
        return None
    return (doc["master"]["pid"], doc["master"]["alive"],
            sorted(int(w["pid"]) for w in doc["workers"]))


def ready_workers_of(lines, master):
    """{slot: pid} from master's "worker SLOT (pid P, generation G) ready" lines."""
    slots = {}
    for ln in lines:
        m = sv.WORKER_READY.search(ln)
        if m and int(m.group(1)) == master:
            slots[int(m.group(2))] = int(m.group(3))
    return slots


def served_workers(d, master, exclude=()):
    """master's live children, WORKERS of them, each announced ready; [] if not (yet)."""
    kids = [p for p in st.child_pids(master) if st.pid_alive(p)]
    ready = set(ready_workers_of(d.log_lines(), master).values())
    if len(kids) == WORKERS and all(k in ready for k in kids) and not set(kids) & set(exclude):
        return kids
    return []


def serves(t, port, cafile):
    rc, body, err, _ = t.curl(port, "/", cacert=cafile)
    return rc == 0 and body == b"hello from app\n", "curl rc=%s %s" % (rc, err.strip())


class Echo:
    """A TLS connection to the backend's ECHO service: round trips on demand."""

    def __init__(self, port, cafile):
        self.sock = tc.connect(port, cafile, timeout=st.scaled(10))
        self.sock.sendall(b"ECHO\n")
        self.error = None

    def round_trip(self, tag):
        msg = b"round trip %s\n" % tag.encode()
        try:
            self.sock.sendall(msg)
            got = b""
            while len(got) < len(msg):
                d = self.sock.recv(len(msg) - len(got))
                if not d:
                    break
                got += d
            if got != msg:
                self.error = "got %r" % got
            return got == msg
        except OSError as e:
            self.error = "%s: %s" % (type(e).__name__, e)
            return False

    def owner(self, pids):
        return st.server_socket_owner(self.sock, pids)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


class Chain:
    """The daemon under test and what the test knows of it: the binary, the config as
    given (relative) and as the new master must get it (absolute), the files."""

    def __init__(self, t, cert, key, be):
        self.t = t
        self.cert = cert
        self.key = key
        self.be = be
        self.bindir = t.path("bin")
        os.makedirs(self.bindir, exist_ok=True)
        self.bin = os.path.join(self.bindir, "sluice")
        self.real = os.path.join(self.bindir, "sluice.real")  # a wrapper's target
        self.bin_path = os.path.realpath(self.bin)
        self.port = st.free_port()
        self.logpath = t.path("upgrade.log")
        self.conf_abs = t.write_config([t.frontend(self.port, be.address, cert, key)],
                                       name="upgrade.conf", workers=WORKERS,
                                       log_file=self.logpath, drain_timeout=DRAIN)
        self.conf_rel = os.path.basename(self.conf_abs)
        self.pidfile = sv.conf_value_of(self.conf_abs, "pidfile")
        self.statsfile = sv.conf_value_of(self.conf_abs, "stats-file")
        self.masters = []  # every Daemon of the chain, oldest first

    def daemon(self, pid=None):
        """A Daemon for the chain's next master; pid: one already running, reaped by us
        when the pidfile names it (else only watched)."""
        d = sv.Daemon(self.t, self.conf_rel, self.pidfile, self.logpath, tag="upgrade")
        if pid is not None and sv.pidfile_pid(self.pidfile) == pid:
            d.adopt()
        elif pid is not None:
            d.pid = pid
        self.masters.append(d)
        return d

    def single(self, name, env=None, **keys):
        """A foreground sluice of one worker on a port of its own, from the copy of the
        binary: (port, config path, Sluice)."""
        port = st.free_port()
        conf = self.t.write_config([self.t.frontend(port, self.be.address, self.cert, self.key)],
                                   name=name + ".conf", workers=1, **keys)
        return port, conf, self.start_sluice(conf, name, env=env)

    def start_sluice(self, conf, name, env=None):
        """t.start_sluice (in the foreground) from the copy of the binary."""
        install(self.bin, BUILT)
        st.SLUICE = self.bin  # what start_sluice runs
        try:
            return self.t.start_sluice(conf, name=name, env=env)
        finally:
            st.SLUICE = BUILT

    def ours(self):
        """Live processes started from the test's binaries (masters, workers, wrappers)."""
        return sorted(p for p in sv.procs_with_arg(self.bindir + "/") if p != os.getpid())

    def log_count(self, pattern):
        rx = re.compile(pattern)
        return sum(1 for ln in self.masters[0].log_lines() if rx.search(ln))

    def wait_count(self, pattern, n, timeout):
        return st.wait_until(lambda: self.log_count(pattern) >= n, timeout)


def kill_strays_at_exit(t, bindir):
    """Cleanup: SIGKILL what still runs from the test's binaries (a new master nobody
    stopped, a wrapper): their executable, or an argument, lies in bindir."""

    def kill():
        for pid in sv.procs_with_arg(bindir + "/"):
            if pid != os.getpid():
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass

    t.cleanups.insert(0, kill)


# ---------------------------------------------------------------------------------------
# 1, 2, 3: an upgrade under load, to a replaced binary, with a connection held over it


def start_chain(t, c):
    install(c.bin, BUILT)
    d = c.daemon()
    st.SLUICE = c.bin  # what Daemon.start runs
    try:
        rc, out, err, el = d.start(extra=("-d",))
    finally:
        st.SLUICE = BUILT
    t.ok(rc == 0 and d.alive(), "sluice -d -f %s from a copy of the binary starts (status "
         "%s, pid %s%s)" % (c.conf_rel, rc, d.pid, "" if rc == 0 else ", " + err.strip()[-300:]))
    workers = st.wait_until(lambda: served_workers(d, d.pid), SHORTLY) if d.alive() else []
    ok, why = serves(t, c.port, c.cert)
    t.ok(workers and ok, "the first master %s has %d workers %s and serves (%s)"
         % (d.pid, WORKERS, workers, why))
    return d if d.alive() and workers else None


def upgrade_under_load(t, c, d1):
    m1 = d1.pid
    w1 = served_workers(d1, m1)
    sockets1 = listen_inodes(c.port)
    t.ok(len(sockets1) == WORKERS, "%d listening sockets on port %d before SIGUSR2 (%s)"
         % (WORKERS, c.port, sockets1))

    echo = Echo(c.port, c.cert)
    t.ok(echo.round_trip("before") and echo.owner(w1) in w1,
         "3: a connection opened before SIGUSR2 echoes, served by old worker %s (%s)"
         % (echo.owner(w1), echo.error))
    loop = sv.RequestLoop(t, c.port, c.cert, py_threads=2, curl_threads=1).start()
    t.ok(sv.wait_requests(loop, 10, st.scaled(10)), "the request loop runs (%d requests)"
         % loop.count())

    old_inode = exe_inode(m1)
    new_inode = install(c.bin, BUILT)
    t.ok(new_inode != old_inode, "2: the binary is replaced by a new file (inode %s -> %s)"
         % (old_inode, new_inode))

    send(m1, signal.SIGUSR2)
    hit = d1.wait_log(line_of(m1, r"SIGUSR2: upgrading to %s$" % re.escape(c.bin_path)),
                      SHORTLY)
    t.ok(hit, "1: the master logs \"SIGUSR2: upgrading to %s\"" % c.bin_path)
    draining = line_of(m1, r"upgrade: new master \(pid (\d+)\) serves; draining$")
    hit = d1.wait_log(draining, st.scaled(20)) if hit else []
    # read the moment the old master says it: the new one published both files before
    n = int(re.search(draining, hit[0]).group(1)) if hit else None
    pidfile_then = sv.pidfile_pid(c.pidfile)
    stat_then = stat_master(c.statsfile)
    t.ok(n is not None, "1: the old master logs \"upgrade: new master (pid N) serves; "
         "draining\" (N = %s)" % n)
    if n is None:
        t.diag("log lines about the upgrade: %s"
               % [ln for ln in d1.log_lines() if "USR2" in ln or "upgrade" in ln][-5:])
        loop.stop()
        echo.close()
        return None
    t.ok(pidfile_then == n and n != m1,
         "1: by then the pidfile holds the new master's pid %s (it holds %s)" % (n, pidfile_then))
    t.ok(stat_then is not None and stat_then[0] == n and stat_then[1] is True,
         "1: by then sluicestat -j names the new master %s, alive (%s)" % (n, stat_then))

    t.ok(st.pid_alive(n) and sv.ppid(n) == m1 and sid(n) == sid(m1),
         "1: the new master %s runs as the old one's child in its session (no second "
         "detach; parent %s, session %s vs %s)" % (n, sv.ppid(n), sid(n), sid(m1)))
    link, inode = exe_link(n), exe_inode(n)
    t.ok(link == c.bin_path and inode == new_inode,
         "2: its /proc/%s/exe is %s, the new file (inode %s; link %r)" % (n, c.bin_path, inode,
                                                                        link))
    t.diag("the old master's /proc/%d/exe is %r" % (m1, exe_link(m1)))
    argv = cmdline(n)
    conf_arg = argv[argv.index("-f") + 1] if "-f" in argv[:-1] else None
    t.ok(conf_arg == c.conf_abs and "-d" in argv,
         "1: it was started with -f %s (absolute) and -d (%s)" % (c.conf_abs, argv))

    w2 = st.wait_until(lambda: served_workers(d1, n, exclude=w1), SHORTLY) or []
    t.ok(len(w2) == WORKERS, "1: the new master has %d new workers, each ready (%s)"
         % (WORKERS, w2))

    t.ok(echo.round_trip("after") and echo.owner(w1) in w1,
         "3: after \"draining\" the connection still echoes, on old worker %s (%s)"
         % (echo.owner(w1), echo.error))
    t.ok(d1.alive() and st.pid_alive(echo.owner(w1) or 0),
         "3: the old master %s and that worker wait for it (drain-timeout is %d s)"
         % (m1, DRAIN))
    t.ok(sv.wait_requests(loop, 10, st.scaled(10)), "1: requests go on (%d so far)"
         % loop.count())

    echo.close()
    t0 = time.monotonic()
    gone = d1.wait_exit(st.scaled(10))
    t.ok(gone and d1.exit_status == 0,
         "1: once the connection closed the old master exits 0 within %.0f s (after %.1f s; "
         "status %s%s)" % (st.scaled(10), time.monotonic() - t0, d1.exit_status,
                           "; " + d1.reap_error if d1.reap_error else ""))
    left = st.wait_pids_gone(w1, SHORTLY)
    t.ok(not left, "1: the old workers %s are gone (left: %s)" % (w1, left))
    t.ok(sv.wait_requests(loop, 10, st.scaled(10)), "1: requests go on after the old master "
         "exited (%d so far)" % loop.count())
    loop.stop()
    fails = loop.failures()
    t.ok(loop.count() >= 30 and not fails, "1: %d requests across the upgrade, %d failed"
         % (loop.count(), len(fails)))
    for f in fails[:10]:
        t.diag("  failed %s request at +%.2f s: %s" % (f[3], f[1] - loop.records[0][0], f[4]))
    t.diag("longest time without a completed request: %.2f s" % loop.max_gap())

    t.ok(sv.ppid(n) == os.getpid(), "1: the new master is reparented to the test, the "
         "subreaper (parent %s)" % sv.ppid(n))
    d2 = c.daemon(n)
    t.ok(sv.pidfile_pid(c.pidfile) == n and d2.alive(),
         "1: the old master left the pidfile, which holds the new master's pid %s (%s)"
         % (n, sv.pidfile_pid(c.pidfile)))
    sm = stat_master(c.statsfile)
    t.ok(sm == (n, True, sorted(w2)),
         "1: the old master left the stats file: sluicestat -j shows master %s and its "
         "workers %s (%s)" % (n, w2, sm))
    sockets2 = listen_inodes(c.port)
    t.ok(sockets2 == sockets1, "1: the new master listens on the very same sockets (%s, "
         "before %s)" % (sockets2, sockets1))
    ok, why = serves(t, c.port, c.cert)
    t.ok(ok and sorted(d2.workers()) == sorted(w2),
         "1: the new master serves with just its own workers (%s; %s)" % (d2.workers(), why))
    return d2


# ---------------------------------------------------------------------------------------
# 4, 5: failed upgrades change nothing


def check_unchanged(t, c, d, workers, what):
    """After a failed upgrade: the same master and workers serve, own both files, and
    nothing else of ours runs."""
    ok, why = serves(t, c.port, c.cert)
    t.ok(d.alive() and sorted(d.workers()) == sorted(workers) and ok,
         "%s: master %s and its workers %s keep serving (%s; %s)"
         % (what, d.pid, workers, d.workers(), why))
    sm = stat_master(c.statsfile)
    t.ok(sv.pidfile_pid(c.pidfile) == d.pid and sm == (d.pid, True, sorted(workers)),
         "%s: the pidfile holds %s and sluicestat -j shows it with its workers (%s, %s)"
         % (what, d.pid, sv.pidfile_pid(c.pidfile), sm))
    want = sorted([d.pid] + workers)
    ok = st.wait_until(lambda: c.ours() == want, SHORTLY)
    t.ok(ok, "%s: no other process of ours is left (%s, want %s)" % (what, c.ours(), want))


def failed_upgrade(t, c, d, status, text, what):
    """USR2 that must fail: "upgrade failed: PATH (pid P) exited with status S: ..."
    naming text. Returns True if it was logged so."""
    failed = line_of(d.pid, r"upgrade failed: %s \(pid (\d+)\) exited with status (\d+): (.*)"
                     % re.escape(c.bin_path))
    before = c.log_count(failed)
    send(d.pid, signal.SIGUSR2)
    hit = c.wait_count(failed, before + 1, st.scaled(15))
    m = [re.search(failed, ln) for ln in d.log_lines() if re.search(failed, ln)]
    m = m[before] if hit else None
    t.ok(m and int(m.group(2)) == status and re.search(text, m.group(3)),
         "%s: the master logs \"upgrade failed: %s (pid N) exited with status %d: ...\" "
         "with %r" % (what, c.bin_path, status, text))
    if m:
        t.diag("  " + m.group(0))
        t.ok(not st.pid_alive(int(m.group(1))), "%s: the failed new master %s is gone"
             % (what, m.group(1)))
    else:
        t.diag("log lines about the upgrade: %s"
               % [ln for ln in d.log_lines() if "USR2" in ln or "upgrade" in ln][-4:])
    return bool(m)


def bad_config(t, c, d):
    workers = served_workers(d, d.pid)
    line, restore = sv.break_config(c.conf_abs, "%s = 1;" % BAD_KEY)
    failed_upgrade(t, c, d, 1, r"sluice: %s:%d: .*%s" % (re.escape(c.conf_abs), line,
                                                         re.escape(BAD_KEY)),
                   "4 (unknown key)")
    check_unchanged(t, c, d, workers, "4 (unknown key)")
    restore()
    d2 = plain_upgrade(t, c, d, "4 (config fixed)")
    return d2


def plain_upgrade(t, c, d, what):
    """USR2 that must succeed, with nothing held open: the old master exits 0 and the
    new one serves. Returns the new master's Daemon, or None."""
    send(d.pid, signal.SIGUSR2)
    draining = line_of(d.pid, r"upgrade: new master \(pid (\d+)\) serves; draining$")
    hit = d.wait_log(draining, st.scaled(20))
    n = int(re.search(draining, hit[0]).group(1)) if hit else None
    gone = n is not None and d.wait_exit(st.scaled(10))
    t.ok(n is not None and gone and d.exit_status == 0,
         "%s: SIGUSR2 upgrades: new master %s, the old one %s exits 0 (status %s)"
         % (what, n, d.pid, d.exit_status))
    if n is None:
        return None
    d2 = c.daemon(n)
    w2 = st.wait_until(lambda: served_workers(d2, n), SHORTLY) or []
    ok, why = serves(t, c.port, c.cert)
    t.ok(sv.pidfile_pid(c.pidfile) == n and w2 and ok,
         "%s: the new master %s owns the pidfile, has %d workers and serves (%s)"
         % (what, n, len(w2), why))
    return d2


def broken_binary(t, c, d):
    workers = served_workers(d, d.pid)
    install(c.bin, data=("#!/bin/sh\necho '%s' >&2\nexit 3\n" % BROKEN_TEXT).encode())
    failed_upgrade(t, c, d, 3, re.escape(BROKEN_TEXT), "5 (a binary that exits 3)")
    check_unchanged(t, c, d, workers, "5 (a binary that exits 3)")
    install(c.bin, BUILT)


# ---------------------------------------------------------------------------------------
# 6: SIGUSR2 refused while something else is in progress


def slow_wrapper(c, delay):
    """c.bin becomes a script that sleeps, then executes c.real (a copy of sluice)."""
    install(c.real, BUILT)
    install(c.bin, data=('#!/bin/sh\nsleep %g\nexec "%s" "$@"\n' % (delay, c.real)).encode())


def upgrade_while_upgrading(t, c, d):
    """A second SIGUSR2 while the new master is still starting is refused; the first
    upgrade completes."""
    slow_wrapper(c, st.scaled(1.5))
    m = d.pid
    upgrading = line_of(m, r"SIGUSR2: upgrading to ")
    ignored = line_of(m, r".*SIGUSR2 ignored")
    n_upgrading, n_ignored = c.log_count(upgrading), c.log_count(ignored)
    send(m, signal.SIGUSR2)
    started = c.wait_count(upgrading, n_upgrading + 1, SHORTLY)
    send(m, signal.SIGUSR2)
    t.ok(started and c.wait_count(ignored, n_ignored + 1, SHORTLY),
         "6: a second SIGUSR2 while the new master starts is refused: \"SIGUSR2 ignored\"")
    d2 = plain_upgrade(t, c, d, "6 (the first upgrade goes on)")
    t.ok(started and c.log_count(upgrading) == n_upgrading + 1,
         "6: the refused SIGUSR2 started no second upgrade (%d \"upgrading\" lines, %d "
         "before)" % (c.log_count(upgrading), n_upgrading))
    install(c.bin, BUILT)
    return d2


def deferred_during_reload(t, c, cert, key, be):
    """A foreground sluice whose second generation never serves (fault injection): USR2
    while that reload is in progress waits, and the upgrade runs once generation 1 serves
    alone again (after the rollback), not before."""
    ok, why = st.sluice_has_fault_injection()
    if not ok:
        t.skip(why, 4)
        return
    port, conf, sl = c.single("reloading", env={"SLUICE_FAULT": "start-exit:0:2"})
    pidfile = sv.conf_value_of(conf, "pidfile")
    deferred = line_of(sl.pid, r".*SIGUSR2: upgrade deferred until generation 2 serves alone")
    upgrading = line_of(sl.pid, r".*SIGUSR2: upgrading to ")
    rolled_back = r"generation 1 keeps serving"
    send(sl.pid, signal.SIGHUP)
    hit = sl.wait_log(r"fault injection: slot 0 exits at start", SHORTLY)
    send(sl.pid, signal.SIGUSR2)
    t.ok(hit and sl.wait_log(deferred, SHORTLY) and not sl.wait_log(upgrading, 0),
         "6: SIGUSR2 while a reload is in progress (its generation 2 failing to start) is "
         "deferred: \"upgrade deferred until generation 2 serves alone\", no upgrade yet")
    rolled = sl.wait_log(rolled_back, st.scaled(30))
    started = sl.wait_log(upgrading, st.scaled(15))
    lines = sl.log_lines()
    first = lambda rx: next((i for i, ln in enumerate(lines) if re.search(rx, ln)), None)
    t.ok(rolled and started and first(rolled_back) < first(upgrading),
         "6: ... and it starts once generation 2 is rolled back, not before (rollback at "
         "line %s, upgrade at line %s)" % (first(rolled_back), first(upgrading)))
    served = sl.wait_log(r"upgrade: new master \(pid \d+\) serves; draining", st.scaled(15))
    exited = served and st.wait_until(lambda: not sl.alive(), st.scaled(15))
    status = sl.stop() if exited else None  # already exited: stop() only reaps
    new = sv.pidfile_pid(pidfile)
    ok, why = serves(t, port, cert)
    t.ok(served and status == 0 and new not in (None, sl.pid) and ok,
         "6: ... the new master (pid %s) serves, the old one exited with status %s (%s)"
         % (new, status, why))
    sl.check_log(allow_errors=ALLOWED_ERRORS, what="6: sluice (USR2 in a reload)")
    if new is not None:
        send(new, signal.SIGTERM)
    gone = new is not None and st.wait_until(lambda: not sv.procs_with_arg(conf), SHORTLY)
    t.ok(gone and not os.path.exists(pidfile),
         "6: ... and stops on SIGTERM, removing the pidfile (left: %s)" % sv.procs_with_arg(conf))
    for pid in sv.procs_with_arg(conf):
        send(pid, signal.SIGKILL)


def refused_during_term(t, c, cert, key, be):
    """USR2 during SIGTERM's drain (a connection holds it) is refused."""
    port, conf, sl = c.single("stopping", drain_timeout=DRAIN)
    ignored = line_of(sl.pid, r".*SIGUSR2 ignored")
    upgrading = line_of(sl.pid, r"SIGUSR2: upgrading")
    echo = Echo(port, cert)
    echo.round_trip("before")
    send(sl.pid, signal.SIGTERM)
    hit = sl.wait_log(r"SIGTERM: draining", SHORTLY)
    time.sleep(0.2)
    send(sl.pid, signal.SIGUSR2)
    t.ok(hit and sl.wait_log(ignored, SHORTLY), "6: SIGUSR2 during SIGTERM's drain is "
         "refused: \"SIGUSR2 ignored\"")
    time.sleep(0.2)
    t.ok(not sl.wait_log(upgrading, 0) and sl.alive() and echo.round_trip("draining"),
         "6: ... no upgrade starts and the draining connection still echoes (%s)"
         % echo.error)
    echo.close()
    status = sl.stop(sig=signal.SIGTERM, timeout=st.scaled(10))
    t.ok(status == 0, "6: sluice exits 0 once that connection closed (status %s)" % status)
    sl.check_log(allow_errors=ALLOWED_ERRORS, what="6: sluice (USR2 in SIGTERM)")


def term_while_upgrading(t, c, cert, key, be):
    """SIGTERM to a master whose new master is still starting stops that one too."""
    port, conf, sl = c.single("abort")
    slow_wrapper(c, st.scaled(10))
    workers = sl.worker_pids()
    send(sl.pid, signal.SIGUSR2)
    sl.wait_log(r"\bsluice\[%d\]: \w+: SIGUSR2: upgrading to " % sl.pid, SHORTLY)
    new = st.wait_until(lambda: [p for p in sl.worker_pids() if p not in workers], SHORTLY)
    # TERM once the child runs the wrapper: a signal between fork and exec is a race of
    # its own (see the report of issue 9), not what this point is about
    execd = new and st.wait_until(lambda: not (exe_link(new[0]) or "").startswith(c.bindir),
                                  SHORTLY)
    t.ok(new and len(new) == 1 and execd, "6: SIGUSR2 with a slow binary: the new master %s "
         "is starting (a child besides the worker %s, running %s)"
         % (new, workers, exe_link(new[0]) if new else None))
    status = sl.stop(sig=signal.SIGTERM, timeout=st.scaled(10))
    left = st.wait_pids_gone((new or []) + workers, SHORTLY)
    t.ok(status == 0 and new and not left,
         "6: SIGTERM meanwhile: the master exits 0 and stops the starting new master too "
         "(status %s, left %s)" % (status, left))
    t.ok(not os.path.exists(sv.conf_value_of(conf, "pidfile")),
         "6: ... and removes its pidfile")
    sl.check_log(allow_errors=ALLOWED_ERRORS, what="6: sluice (TERM while upgrading)")
    install(c.bin, BUILT)


def term_to_starting_new_master(t, c, cert, key, be):
    """SIGTERM sent to the new master itself while it starts (its worker keeps failing at
    start-up, so it never serves): it must not hold off SYNs on the sockets it shares
    with the old master, which goes on serving new clients."""
    ok, why = st.sluice_has_fault_injection()
    if not ok:
        t.skip(why, 2)
        return
    port, conf, sl = c.single("shared")
    install(c.real, BUILT)
    install(c.bin, data=('#!/bin/sh\nSLUICE_FAULT=start-exit:0:1 exec "%s" "$@"\n'
                         % c.real).encode())
    workers = sl.worker_pids()
    send(sl.pid, signal.SIGUSR2)
    half = st.wait_until(lambda: sl.wait_log(r"fault injection: slot 0 exits at start", 0)
                         and [p for p in sl.worker_pids() if p not in workers], SHORTLY)
    new = half[0] if half else None
    t.ok(new is not None and not sl.wait_log(r"new master \(pid \d+\) serves", 0),
         "6: a new master (pid %s) is starting and its worker cannot serve" % new)
    if new is not None:
        send(new, signal.SIGTERM)
    gone = new is not None and st.wait_until(lambda: not os.path.exists("/proc/%d" % new)
                                             or sv.ppid(new) != sl.pid, SHORTLY)
    results = [serves(t, port, cert) for _ in range(6)]
    t.ok(gone and sl.alive() and all(r[0] for r in results),
         "6: SIGTERM to it: it exits, and the old master serves 6 new clients at once "
         "(no SYN held off: %s)" % [r[1] for r in results if not r[0]])
    install(c.bin, BUILT)
    sl.stop_and_check(allow_errors=ALLOWED_ERRORS, what="6: sluice (TERM to the new master)")
    for pid in sv.procs_with_arg(conf):
        send(pid, signal.SIGKILL)


def term_right_after_usr2(t, c, cert, key, be, rounds=5):
    """SIGTERM a few milliseconds after SIGUSR2, while the new master is between fork and
    exec or just started: the old master exits 0 and the new one goes too, every round."""
    left, statuses = [], []
    for i in range(rounds):
        port, conf, sl = c.single("race%d" % i)
        send(sl.pid, signal.SIGUSR2)
        time.sleep(0.002)
        statuses.append(sl.stop(sig=signal.SIGTERM, timeout=st.scaled(10)))
        if not st.wait_until(lambda: not sv.procs_with_arg(conf), SHORTLY):
            left.append((i, sv.procs_with_arg(conf)))
            for pid in sv.procs_with_arg(conf):
                send(pid, signal.SIGKILL)
        sl.check_log(allow_errors=ALLOWED_ERRORS, what="6: sluice (TERM right after USR2, %d)"
                     % i)
    t.ok(statuses == [0] * rounds and not left,
         "6: SIGTERM 2 ms after SIGUSR2, %d times: the master exits 0 (%s) and no new master "
         "is left running (left: %s)" % (rounds, statuses, left))


# ---------------------------------------------------------------------------------------


def final_term(t, c, d):
    d.stop_and_check(allow_errors=ALLOWED_ERRORS, what="7: the last master")
    t.ok(not os.path.exists(c.statsfile), "7: the stats file is removed")
    left = st.wait_until(lambda: not c.ours(), SHORTLY)
    t.ok(left, "7: nothing of ours is left running (%s)" % c.ours())
    for older in c.masters[:-1]:
        older.pid_done()


def main(t):
    if not st.SLUICESTAT:
        t.skip_all("SLUICESTAT is not set (run through make check)")
    subreaper = sv.become_subreaper()
    if not subreaper:
        t.skip_all("could not become a subreaper: old masters' exits cannot be seen")
    cert, key = t.make_cert()
    be = t.start_backend("app", "unix")
    c = Chain(t, cert, key, be)
    kill_strays_at_exit(t, c.bindir)
    d = start_chain(t, c)
    d = d and upgrade_under_load(t, c, d)
    d = d and bad_config(t, c, d)
    if d:
        broken_binary(t, c, d)
        d = d if d.alive() else None
    d = d and upgrade_while_upgrading(t, c, d)
    if d:
        final_term(t, c, d)
    else:
        t.ok(False, "the upgrade chain broke off early: later points not run")
        # the processes that ran are still checked for sanitizer reports
        san = sv.sanitizer_files(t, "upgrade")
        t.ok(not san, "no sanitizer report (%s)" % san[:3])
    deferred_during_reload(t, c, cert, key, be)
    refused_during_term(t, c, cert, key, be)
    term_while_upgrading(t, c, cert, key, be)
    term_right_after_usr2(t, c, cert, key, be)
    term_to_starting_new_master(t, c, cert, key, be)


st.Test("binary-upgrade").main(main)
