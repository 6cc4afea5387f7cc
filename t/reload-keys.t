#!/usr/bin/env python3
# Reload rules (issue 3, DESIGN §1): reloadable keys take effect on HUP (workers,
# log-level); keys fixed for the master's life (stats-file, pidfile, user) are reported
# as needing a restart and keep their running value; a HUP while the previous
# generation still drains is deferred until it has exited, then carried out.
import os
import re
import time

import servicetest as sv
import sluicetest as st
import tlsclient as tc


def rewrite(t, conf, frontends, **globals_):
    """Write the config anew under the same name (write_config's defaults included)."""
    return t.write_config(frontends, name=os.path.basename(conf), **globals_)


def main(t):
    cert, key = t.make_cert()
    be = t.start_backend("app", "unix")
    port = st.free_port()
    fe = [t.frontend(port, be.address, cert, key)]
    conf = t.write_config(fe, workers=2, drain_timeout=30)
    sl = t.start_sluice(conf)
    sl.wait_workers(2)
    statsfile = t.path("sluice.stats")

    # 1. reloadable and fixed keys
    rewrite(t, conf, fe, workers=3, drain_timeout=30, log_level="debug",
            stats_file=t.path("elsewhere.stats"), pidfile=t.path("elsewhere.pid"),
            user="daemon")
    gen, slots = sv.reload(sl)
    t.ok(gen == 2 and sorted(slots) == [0, 1, 2],
         "workers 2 -> 3 on HUP: generation %s runs slots %s" % (gen, sorted(slots)))
    for key in ("stats-file", "pidfile", "user"):
        t.ok(sl.wait_log(r"warning: reload: %s changed, needs a restart" % key, timeout=1),
             "a changed %s is reported as needing a restart" % key)
    t.ok(os.path.exists(statsfile) and not os.path.exists(t.path("elsewhere.stats")),
         "the stats file stays where it was")
    t.ok(not os.path.exists(t.path("elsewhere.pid")), "the pidfile stays where it was")
    ids = [sv.ids(p) for p in slots.values()]
    uids = [i[0] if i else None for i in ids]  # (real, effective, saved, fs) uids
    t.ok(all(u and set(u) == {65534} for u in uids),
         "workers keep the running user nobody, not the new daemon (uids %s)" % uids)
    rc, body, _, _ = t.curl(port, "/after-reload")
    t.ok(rc == 0 and sl.wait_log(r"debug: client=", timeout=2),
         "log-level = debug took effect on HUP (debug lines appear)")

    # 2. a HUP while generation 2 still drains a connection is deferred
    held = tc.connect(port, cert, timeout=st.scaled(10))
    held.sendall(b"GET /held HTTP/1.1\r\nHost: x\r\n\r\n")
    time.sleep(0.3)
    gen3, _ = sv.reload(sl)
    t.ok(gen3 == 3, "HUP: generation 3 serves, generation 2 drains the held connection")
    os.kill(sl.pid, 1)
    t.ok(sl.wait_log(r"info: reload deferred until generation 2 has drained", timeout=2),
         "a second HUP while generation 2 drains is deferred")
    time.sleep(0.5)
    t.ok(not sl.wait_log(r"generation 4", timeout=0.2),
         "no generation 4 while generation 2 still has a connection")
    held.close()
    t.ok(sl.wait_log(r"info: generation 2 has exited", timeout=st.scaled(5)),
         "generation 2 exits once its last connection closes")
    t.ok(sl.wait_log(r"info: reload: generation 4 ready, retiring generation 3",
                     timeout=st.scaled(10)),
         "then the deferred reload is carried out (generation 4)")
    rc, body, _, _ = t.curl(port, "/end")
    t.ok(rc == 0 and body == b"hello from app\n", "generation 4 serves")
    sl.stop_and_check()


st.Test("reload-keys").main(main)
