#!/usr/bin/env python3
# chroot (issue 3): workers change their root to `chroot` right after fork, before they
# drop to user/group; the master stays outside (it reads keys and binds on reload).
# The backend address is then resolved inside the jail: unix:/app.sock reaches
# JAIL/app.sock, which does not exist outside it.
import os

import sluicetest as st


def main(t):
    if os.geteuid() != 0:
        t.skip_all("chroot needs root (this test runs as uid %d)" % os.geteuid())
    cert, key = t.make_cert()
    jail = t.path("jail")
    os.makedirs(jail)
    os.chmod(jail, 0o755)
    be = t.start_backend("app", "unix", path=os.path.join(jail, "app.sock"))
    t.ok(not os.path.exists("/app.sock"), "/app.sock does not exist outside the jail")
    port = st.free_port()
    conf = t.write_config([t.frontend(port, "unix:/app.sock", cert, key)], workers=2,
                          chroot=jail)
    # LeakSanitizer reads /proc, which a chrooted worker cannot see: in a sanitizer build
    # its exit check would fail for that reason alone. Leaks are checked by the other tests.
    asan = os.environ.get("ASAN_OPTIONS", "")
    sl = t.start_sluice(conf, env={"ASAN_OPTIONS": (asan + ":" if asan else "") +
                                   "detect_leaks=0"})
    pids = sl.wait_workers(2)
    roots = [os.readlink("/proc/%d/root" % p) for p in pids]
    t.ok(roots == [jail, jail], "every worker's root is the jail (%s)" % roots)
    t.ok(os.readlink("/proc/%d/root" % sl.pid) == "/", "the master's root stays /")
    rc, body, err, _ = t.curl(port, "/jailed")
    t.ok(rc == 0 and body == b"hello from app\n",
         "a request reaches the backend at unix:/app.sock inside the jail")
    os.kill(sl.pid, 1)
    t.ok(sl.wait_log(r"reload: generation 2 ready", timeout=st.scaled(10)),
         "a reload (keys read by the master outside the jail) still works")
    rc, body, err, _ = t.curl(port, "/after-reload")
    t.ok(rc == 0 and body == b"hello from app\n", "generation 2 serves from the jail too")
    sl.stop_and_check()
    t.ok(not sl.wait_log(r"exited with status [1-9]", timeout=0),
         "every worker exited with status 0")


st.Test("chroot").main(main)
