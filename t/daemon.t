#!/usr/bin/env python3
# Daemon mode (issue 3, point 8). `sluice -d` returns 0 only once the daemon serves (the
# ready line is already logged, the pidfile written) and leaves no inherited stdout open;
# the pidfile holds the detached master's pid; a second start, in the foreground or with
# -d, is refused with "PIDFILE: already running as pid N" and exit status 2; a stale
# pidfile does not block a start; a start that cannot bind returns 2 and leaves no
# pidfile. The init script contrib/sluice.init (run with sh; DAEMON, CONF, PIDFILE in the
# environment): status 3 when stopped, start, status 0, reload (a new generation of
# workers under the same master), stop (the master exits 0, its pidfile is gone).
import os
import re
import socket

import servicetest as sv
import sluicetest as st

WORKERS = 2
READY = r"info: sluice \S+ ready"


def check_running(t, d, port, cafile, what, workers=WORKERS):
    """The daemon d runs detached, with its workers, and serves."""
    pid = d.pid
    t.ok(pid is not None and d.alive() and sv.exe(pid) == os.path.realpath(st.SLUICE)
         and os.getsid(pid) != os.getsid(0),
         "%s: the pidfile holds the pid of a running sluice in a session of its own (%s)"
         % (what, pid))
    kids = st.wait_until(lambda: len(d.workers()) == workers and d.workers(), st.scaled(5))
    t.ok(kids, "%s: the master has %d workers (%s)" % (what, workers, d.workers()))
    rc, body, err, _ = t.curl(port, "/", cacert=cafile)
    t.ok(rc == 0 and body == b"hello from app\n", "%s: it serves HTTPS (curl rc=%s %s)"
         % (what, rc, err.strip()))


def daemon_flag(t, cert, key, be):
    port, port2 = st.free_ports(2)
    logpath = t.path("daemon.log")
    # more workers than elsewhere: a daemon that returned before they are all ready would
    # be caught more surely
    conf = t.write_config([t.frontend(port, be.address, cert, key)], name="daemon.conf",
                          workers=WORKERS * 2, log_file=logpath)
    pidfile = sv.conf_value_of(conf, "pidfile")
    d = sv.Daemon(t, conf, pidfile, logpath, tag="daemon")
    rc, out, err, el = d.start()
    t.ok(rc == 0, "sluice -d returns 0 (after %.2f s; status %s%s)"
         % (el, rc, "" if rc == 0 else ", stderr %r" % err.strip()[-300:]))
    t.ok(re.search(READY, d.log_at_return) and d.pid_at_return == d.pid is not None,
         "sluice -d returns only once serving: the ready line is logged and the pidfile "
         "written by then")
    check_running(t, d, port, cert, "sluice -d", WORKERS * 2)

    # a second start with the same pidfile, on another port (a bind failure can't hide a
    # missing pidfile check)
    conf2 = t.write_config([t.frontend(port2, be.address, cert, key)], name="second.conf",
                           workers=WORKERS, log_file=t.path("second.log"), pidfile=pidfile)
    want = "sluice: %s: already running as pid %d" % (pidfile, d.pid or -1)
    for flag in ("-F", "-d"):
        rc, out, err, _ = st.run([st.SLUICE, flag, "-f", conf2], timeout=st.scaled(15),
                                 env=sv.sanitizer_env(t, "second"))
        err = err.decode(errors="replace")
        t.ok(rc == 2 and want in err,
             "a second start (%s) is refused with exit status 2 and \"%s\" (status %s, "
             "stderr %r)" % (flag, want, rc, err.strip()[-300:]))
        listening = {p for _, p in st.listening_tcp_ports()}
        t.ok(port2 not in listening and not sv.procs_with_arg(conf2),
             "... and leaves nothing running or listening")
    t.ok(d.alive() and sv.pidfile_pid(pidfile) == d.pid,
         "the first daemon still runs and the pidfile still holds its pid")
    t.ok(not sv.sanitizer_files(t, "second"), "the refused starts left no sanitizer report")
    d.stop_and_check(what="sluice -d")


def stale_pidfile(t, cert, key, be):
    port = st.free_port()
    logpath = t.path("stale.log")
    conf = t.write_config([t.frontend(port, be.address, cert, key)], name="stale.conf",
                          workers=WORKERS, log_file=logpath)
    pidfile = sv.conf_value_of(conf, "pidfile")
    dead = st.spawn(["true"])
    dead.wait()
    with open(pidfile, "w") as f:
        f.write("%d\n" % dead.pid)
    d = sv.Daemon(t, conf, pidfile, logpath, tag="stale")
    rc, out, err, _ = d.start()
    t.ok(rc == 0 and d.pid not in (None, dead.pid) and d.alive(),
         "a stale pidfile (pid %d, dead) does not block sluice -d (status %s, new pid %s, "
         "stderr %r)" % (dead.pid, rc, d.pid, err.strip()[-200:] if rc else ""))
    d.stop_and_check(what="sluice -d over a stale pidfile")


def bind_failure(t, cert, key, be):
    blocker = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    blocker.bind(("127.0.0.1", 0))
    blocker.listen(1)
    port = blocker.getsockname()[1]
    conf = t.write_config([t.frontend(port, be.address, cert, key)], name="busy.conf",
                          workers=WORKERS, log_file=t.path("busy.log"))
    pidfile = sv.conf_value_of(conf, "pidfile")
    rc, out, err, el = st.run([st.SLUICE, "-d", "-f", conf], timeout=st.scaled(15),
                              env=sv.sanitizer_env(t, "busy"))
    err = err.decode(errors="replace")
    t.ok(rc == 2 and "sluice: " in err,
         "sluice -d that cannot bind returns 2 with the error on stderr (status %s, %r)"
         % (rc, err.strip()[-300:]))
    left = st.wait_until(lambda: not sv.procs_with_arg(conf), st.scaled(3))
    t.ok(left and not os.path.exists(pidfile),
         "... and leaves no process and no pidfile (%s, pidfile %s)"
         % (sv.procs_with_arg(conf), "present" if os.path.exists(pidfile) else "gone"))
    t.ok(not sv.sanitizer_files(t, "busy"), "... and no sanitizer report")
    blocker.close()


def init_script(t, cert, key, be):
    script = os.path.join(st.SRCDIR or ".", "contrib", "sluice.init")
    if not t.ok(os.path.isfile(script), "the init script %s exists" % script):
        return
    port = st.free_port()
    logpath = t.path("init.log")
    conf = t.write_config([t.frontend(port, be.address, cert, key)], name="init.conf",
                          workers=WORKERS, log_file=logpath)
    pidfile = sv.conf_value_of(conf, "pidfile")
    env = sv.sanitizer_env(t, "init")
    env.update(DAEMON=st.SLUICE, CONF=conf, PIDFILE=pidfile)

    def initd(cmd):
        rc, out, err, _ = st.run(["sh", script, cmd], env=env, timeout=st.scaled(40))
        text = (out + err).decode(errors="replace").strip()
        t.diag("sluice.init %s: status %s: %s" % (cmd, rc, text[-300:]))
        return rc, text

    rc, _ = initd("status")
    t.ok(rc == 3, "init script: status before start is 3 (stopped; got %s)" % rc)
    rc, _ = initd("start")
    d = sv.Daemon(t, conf, pidfile, logpath, tag="init")
    d.adopt()
    t.ok(rc == 0 and d.pid is not None, "init script: start returns 0 and the pidfile is "
         "written (status %s, pid %s)" % (rc, d.pid))
    t.ok(d.wait_log(READY, st.scaled(5)), "init script: the daemon logged its ready line")
    check_running(t, d, port, cert, "init script start")
    rc, _ = initd("status")
    t.ok(rc == 0, "init script: status while running is 0 (got %s)" % rc)

    gens = sv.generations(d.log_lines())
    old = sorted(gens.get(sv.current_generation(d.log_lines()), {}).values())
    master = d.pid
    rc, _ = initd("reload")
    hit = d.wait_log(sv.RELOAD_OK.pattern, st.scaled(10))
    g = int(sv.RELOAD_OK.search(hit[-1]).group(2)) if hit else None
    new = sorted(sv.generations(d.log_lines()).get(g, {}).values())
    t.ok(rc == 0 and hit and len(new) == WORKERS and not set(new) & set(old),
         "init script: reload returns 0 and a new generation %s of workers %s replaces %s"
         % (g, new, old))
    left = st.wait_pids_gone(old, st.scaled(5))
    t.ok(d.alive() and sv.pidfile_pid(pidfile) == master and not left
         and sorted(d.workers()) == new,
         "init script: after reload the same master %d runs the new workers only (%s)"
         % (master, d.workers()))
    rc, body, err, _ = t.curl(port, "/", cacert=cert)
    t.ok(rc == 0 and body == b"hello from app\n", "init script: it serves after reload")

    result = {}

    def stop():
        result["rc"], _ = initd("stop")
        result["alive"] = d.alive()
        result["pidfile"] = os.path.exists(pidfile)

    d.stop_and_check(what="init script stop", stopper=stop)
    t.ok(result.get("rc") == 0 and not result.get("alive") and not result.get("pidfile"),
         "init script: stop returns 0 once the master is gone and its pidfile removed "
         "(status %s, alive %s, pidfile %s)" % (result.get("rc"), result.get("alive"),
                                                result.get("pidfile")))
    rc, _ = initd("status")
    t.ok(rc == 3, "init script: status after stop is 3 (got %s)" % rc)

    # A master killed with SIGKILL leaves its pidfile; its pid may since name another
    # program, which must not be taken for sluice (nor be sent TERM by stop).
    other = st.spawn(["sleep", "60"])
    t.cleanups.append(lambda: (other.kill(), other.wait()))
    with open(pidfile, "w") as f:
        f.write("%d\n" % other.pid)
    rc, _ = initd("status")
    t.ok(rc == 1, "init script: a stale pidfile naming another program is not running "
         "(status 1: dead with a pidfile; got %s)" % rc)
    initd("stop")
    t.ok(other.poll() is None, "init script: stop leaves the unrelated process alone")


def main(t):
    sv.kill_strays_at_exit(t)
    if not sv.become_subreaper():
        t.diag("could not become a subreaper: daemon exit statuses will be unknown")
    cert, key = t.make_cert()
    be = t.start_backend("app", "unix")
    daemon_flag(t, cert, key, be)
    stale_pidfile(t, cert, key, be)
    bind_failure(t, cert, key, be)
    init_script(t, cert, key, be)


st.Test("daemon").main(main)
