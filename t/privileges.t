#!/usr/bin/env python3
# Privilege drop (issue 3, point 9). Started as root with user = "nobody" and group =
# "nogroup", and a key file readable by root only (mode 0600): TLS works; every worker
# runs with all four uids and gids (real, effective, saved, fs) of nobody/nogroup, no
# supplementary group and no capability, while the master stays root; the same holds for
# the workers of a new generation after SIGHUP (the root master re-reads the key). With
# neither key set, workers started by root still drop to nobody/nogroup. sluice starts
# with supplementary groups (0 and 4), which the workers must not keep.
import grp
import os
import pwd

import servicetest as sv
import sluicetest as st

WORKERS = 2


def check_ids(t, sl, uid, gid, what):
    pids = sl.wait_workers(WORKERS)
    t.ok(len(pids) == WORKERS, "%s: %d workers run (%s)" % (what, WORKERS, pids))
    bad = []
    for pid in pids:
        got = sv.ids(pid)
        if got is None:
            bad.append("%d gone" % pid)
            continue
        uids, gids, groups = got
        if uids != [uid] * 4 or gids != [gid] * 4 or set(groups) - {gid}:
            bad.append("%d: Uid %s Gid %s Groups %s" % (pid, uids, gids, groups))
    t.ok(pids and not bad, "%s: every worker's Uid and Gid lines are %d/%d four times, no "
         "other group (%s)" % (what, uid, gid, "; ".join(bad) or "ok"))
    caps = []
    for pid in pids:
        s = sv.status_fields(pid)
        for k in ("CapPrm", "CapEff", "CapAmb"):
            if s.get(k, ["0"])[0].strip("0"):
                caps.append("%d %s=%s" % (pid, k, s[k][0]))
    t.ok(pids and not caps, "%s: workers hold no capability (%s)"
         % (what, "; ".join(caps) or "none"))
    master = sv.ids(sl.pid)
    t.ok(master is not None and master[0] == [0] * 4,
         "%s: the master stays root (Uid %s)" % (what, master and master[0]))
    return pids


def serves(t, port, cert, what):
    rc, body, err, _ = t.curl(port, "/", cacert=cert)
    t.ok(rc == 0 and body == b"hello from app\n", "%s: TLS works (curl rc=%s %s)"
         % (what, rc, err.strip()))


def main(t):
    if os.geteuid() != 0:
        t.skip_all("dropping privileges needs root (this test runs as uid %d)" % os.geteuid())
    try:
        nobody = pwd.getpwnam("nobody").pw_uid
        nogroup = grp.getgrnam("nogroup").gr_gid
    except KeyError as e:
        t.skip_all("no user nobody or group nogroup on this system (%s)" % e)
    # root's supplementary groups, which the workers must shed (setgroups): give the
    # test, and so sluice, some (it may have none in a container)
    extra = [0, 4]
    os.setgroups(extra)
    t.ok(sorted(os.getgroups()) == extra, "sluice is started with supplementary groups %s"
         % os.getgroups())
    cert, key = t.make_cert()
    os.chown(key, 0, 0)
    os.chmod(key, 0o600)
    s = os.stat(key)
    rc, _, _, _ = st.run(["setpriv", "--reuid=%d" % nobody, "--regid=%d" % nogroup,
                          "--clear-groups", "cat", key])
    t.ok(s.st_mode & 0o777 == 0o600 and s.st_uid == 0 and rc not in (0, None),
         "the key file is mode 0600, owned by root, unreadable by nobody (cat as nobody: "
         "status %s)" % rc)
    be = t.start_backend("app", "unix")

    port = st.free_port()
    conf = t.write_config([t.frontend(port, be.address, cert, key)], workers=WORKERS,
                          user="nobody", group="nogroup")
    sl = t.start_sluice(conf)
    serves(t, port, cert, "user nobody")
    old = check_ids(t, sl, nobody, nogroup, "user nobody")

    g, slots = sv.reload(sl)
    new = sorted(slots.values())
    t.ok(g is not None and len(new) == WORKERS and not set(new) & set(old),
         "SIGHUP: a new generation %s of workers %s" % (g, new))
    st.wait_pids_gone(old, st.scaled(5))
    serves(t, port, cert, "after SIGHUP")
    check_ids(t, sl, nobody, nogroup, "after SIGHUP")
    sl.stop_and_check()

    port = st.free_port()
    conf = t.write_config([t.frontend(port, be.address, cert, key)], name="default.conf",
                          workers=WORKERS)
    sl = t.start_sluice(conf, name="sluice-default")
    serves(t, port, cert, "no user or group set")
    check_ids(t, sl, nobody, nogroup, "no user or group set")
    sl.stop_and_check(what="sluice (no user or group set)")


st.Test("privileges").main(main)
