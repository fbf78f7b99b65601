#!/usr/bin/env python3
"""Samples one run of scripts/bench-scale: where CPU time goes and what the benchmark's
PostgreSQL sessions wait on.

Usage: bench-scale-sample.py DATABASE_URL OUT.json SECONDS "NODE_PIDS"

Writes a JSON object: cpu_pg, cpu_nodes, cpu_load (CPU time of the PostgreSQL server
processes, the gateway nodes and the mllp-load processes, as a fraction of the 2 cores
over the sampled time), waits (counts of the benchmark sessions' states over samples
every 50 ms: queue_lock = the advisory queue lock, wal = WAL write/flush, lock = other
locks, client = waiting for the gateway, running = on CPU or other), commits_per_s
(xact_commit of the database, all users).
"""
import json
import os
import subprocess
import sys
import time

url, out, seconds, node_pids = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4].split()
tick = os.sysconf("SC_CLK_TCK")
cores = os.cpu_count() or 1


def cpu_of(pred):
    total = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/comm") as f:
                comm = f.read().strip()
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if pred(pid, comm):
            total += int(fields[11]) + int(fields[12])  # utime + stime
    return total / tick


groups = {
    "cpu_pg": lambda pid, comm: comm.startswith("postgres") or comm.startswith("postmaster"),
    "cpu_nodes": lambda pid, comm: pid in node_pids,
    "cpu_load": lambda pid, comm: comm == "mllp-load",
}

# One psql session reads the activity every 50 ms (one process, not one per sample).
query = (
    "SELECT coalesce(wait_event_type, '') || ':' || coalesce(wait_event, '') || ':' || state "
    "FROM pg_stat_activity WHERE application_name = 'cw-bench-scale';\n"
)
commits_sql = "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"


def commits():
    r = subprocess.run(["psql", url, "-X", "-A", "-t", "-c", commits_sql], capture_output=True, text=True)
    try:
        return int(r.stdout.strip())
    except ValueError:
        return None


# The window: after the load generators' 1 s warm-up until a second before they stop
# (CPU time of a process that has exited can no longer be read).
started = time.time()
time.sleep(1.0)
c0, t0 = commits(), time.time()
cpu0 = {k: cpu_of(p) for k, p in groups.items()}
deadline = started + seconds - 1.0
psql = subprocess.Popen(["psql", url, "-X", "-A", "-t", "-q"], stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE, text=True)
while time.time() < deadline:
    psql.stdin.write(query)
    psql.stdin.flush()
    time.sleep(0.05)
cpu1 = {k: cpu_of(p) for k, p in groups.items()}
c1, t1 = commits(), time.time()
stdout, _ = psql.communicate()
waits = {"queue_lock": 0, "wal": 0, "lock": 0, "client": 0, "running": 0}
for line in stdout.splitlines():
    parts = line.strip().split(":")
    if len(parts) != 3 or parts[2] == "idle":
        continue
    wtype, wevent, _state = parts
    if wtype == "Lock" and wevent == "advisory":
        waits["queue_lock"] += 1
    elif wtype == "Lock" or wtype == "LWLock" and wevent.startswith("Lock"):
        waits["lock"] += 1
    elif wevent.startswith("WAL") or wtype == "IO" and "WAL" in wevent:
        waits["wal"] += 1
    elif wtype == "Client":
        waits["client"] += 1
    else:
        waits["running"] += 1
elapsed = t1 - t0
result = {k: (cpu1[k] - cpu0[k]) / elapsed / cores for k in groups}
result["waits"] = waits
result["commits_per_s"] = (c1 - c0) / elapsed if c0 is not None and c1 is not None else None
with open(out, "w") as f:
    json.dump(result, f)
