#!/usr/bin/env python3
# The shared segment (issue 3, DESIGN §7): the master creates it at stats-file before the
# workers start, mode 0640 and readable by the workers' group; the header carries the
# magic, the layout version, the master's pid, the generation and the permit total; each
# running worker has a slot with its pid, generation, state and a fresh heartbeat; the
# file is gone after a clean exit. Read here with struct, as any reader would.
import grp
import os
import stat
import struct
import time

import sluicetest as st

MAGIC = 0x31454349554C5300
HEADER = struct.Struct("<QIIIIIIIIQQQQiIqII")  # through permits_high_water
SLOT = struct.Struct("<iIIIqqI")  # pid, generation, state, reserved, started, heartbeat, permits
READY = 2
SLOTS_PER_GENERATION = 1024


def read_segment(path):
    with open(path, "rb") as f:
        data = f.read(1 << 22)
    h = HEADER.unpack_from(data, 0)
    header = dict(zip(("magic", "version", "header_size", "slot_size", "nslots",
                       "permit_capacity", "reserved", "counters_size", "totals_count",
                       "slots_offset", "permits_offset", "totals_offset", "file_size",
                       "master_pid", "generation", "started_ms", "permits_total",
                       "permits_high_water"), h))
    totals_size = (header["permits_offset"] - header["totals_offset"]) // header["totals_count"]
    slots = []
    for i in range(header["nslots"]):
        off = header["slots_offset"] + i * header["slot_size"]
        if off + SLOT.size > len(data):
            break
        pid, gen, state, _, started, beat, permits = SLOT.unpack_from(data, off)
        worker = i % SLOTS_PER_GENERATION
        restarts = struct.unpack_from("<I", data,
                                      header["totals_offset"] + worker * totals_size)[0]
        if pid:
            slots.append({"index": i, "pid": pid, "generation": gen, "state": state,
                          "restarts": restarts, "heartbeat_ms": beat, "permits": permits})
    return header, slots


def main(t):
    cert, key = t.make_cert()
    be = t.start_backend("app", "unix")
    port = st.free_port()
    conf = t.write_config([t.frontend(port, be.address, cert, key)], workers=2,
                          handshake_permits=37, heartbeat_interval=0.2, watchdog_timeout=2)
    statsfile = t.path("sluice.stats")
    sl = t.start_sluice(conf)
    pids = sl.wait_workers(2)

    st_ = os.stat(statsfile)
    t.ok(stat.S_IMODE(st_.st_mode) == 0o640, "stats-file mode is 0640 (%o)"
         % stat.S_IMODE(st_.st_mode))
    t.ok(st_.st_gid == grp.getgrnam("nogroup").gr_gid,
         "stats-file belongs to the workers' group (gid %d)" % st_.st_gid)

    time.sleep(0.5)  # a heartbeat or two
    header, slots = read_segment(statsfile)
    t.ok(header["magic"] == MAGIC and header["version"] == 2,
         "header: magic and layout version 2 (%#x, %d)" % (header["magic"], header["version"]))
    t.ok(header["master_pid"] == sl.pid and header["generation"] == 1,
         "header: master pid %d, generation %d" % (header["master_pid"], header["generation"]))
    t.ok(header["permits_total"] == 37, "header: permits total %d" % header["permits_total"])
    t.ok(sorted(s["pid"] for s in slots) == sorted(pids),
         "one slot per worker, naming its pid (%s)" % [s["pid"] for s in slots])
    now_ms = time.time() * 1000
    t.ok(all(s["state"] == READY and s["generation"] == 1 for s in slots),
         "every worker slot is ready, generation 1")
    t.ok(all(0 < now_ms - s["heartbeat_ms"] < st.scaled(2) * 1000 for s in slots),
         "every worker slot has a heartbeat from the last 2 s (%s ms ago)"
         % [int(now_ms - s["heartbeat_ms"]) for s in slots])
    t.ok(all(s["permits"] == 0 for s in slots), "no permit held at rest")

    victim = pids[0]
    os.kill(victim, 9)
    st.wait_until(lambda: len([p for p in sl.worker_pids() if p != victim]) == 2, st.scaled(3))
    header, slots = read_segment(statsfile)
    t.ok(victim not in [s["pid"] for s in slots] and len(slots) == 2,
         "the killed worker's slot names its replacement (%s)" % [s["pid"] for s in slots])
    t.ok(sum(s["restarts"] for s in slots) == 1, "the slot counts one restart")

    sl.stop_and_check()
    t.ok(not os.path.exists(statsfile), "stats-file is removed at exit")


st.Test("segment").main(main)
