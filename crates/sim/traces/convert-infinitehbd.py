#!/usr/bin/env python3
"""Convert a window of StepFun's public InfiniteHBD fault trace into devheal's trace CSV.

Source: https://github.com/stepfun-ai/InfiniteHBD-Trace (Apache-2.0), file fault_trace.json at
commit 7aacdc8 ("release the trace"): node fault events of 400 GPU servers used for LLM
pre-training, 348 days from 2024-03-30, node ids anonymised (UUIDs), event_time in days from the
first event, each fault a `fault_start` and a `fault_end` record with the same node and
fault_type {Level, Class, Desc}.

Conversion: pair each fault_start with the next fault_end of the same node and fault_type; keep
the faults that start in days [WINDOW_START, WINDOW_START + 54) (54 days, the llama3-16k
scenario's length); write start and end as seconds from the window's start (rounded to the
second), node as "ihbd-" and the first 8 characters of the UUID (unique in the trace), cause as "Class: Desc" (the mapping table
in crates/sim/src/replay.rs reads it), and the Level as a note. Nothing is added or changed.

Usage: python3 convert-infinitehbd.py fault_trace.json > infinitehbd-54d.csv
"""
import csv
import json
import sys

WINDOW_START = 54.0  # days; the second 54-day window holds 151 fault starts (the first only 38)
WINDOW_DAYS = 54.0


def main(path):
    events = json.load(open(path))
    open_faults = {}
    faults = []
    for e in events:
        key = (e["node_id"], json.dumps(e["fault_type"], sort_keys=True))
        if e["event_type"] == "fault_start":
            open_faults.setdefault(key, []).append(e)
        else:
            starts = open_faults.get(key)
            if starts:
                faults.append((starts.pop(0), e))
    for key, starts in open_faults.items():
        for s in starts:
            faults.append((s, None))
    faults.sort(key=lambda f: (f[0]["event_time"], f[0]["node_id"]))
    out = csv.writer(sys.stdout, lineterminator="\n")
    print("# A 54-day window of StepFun's public InfiniteHBD GPU-cluster fault trace (real per-event records).")
    print("# Source: https://github.com/stepfun-ai/InfiniteHBD-Trace fault_trace.json (Apache-2.0), commit 7aacdc8;")
    print("# Shou et al., InfiniteHBD, SIGCOMM 2025 (arXiv 2502.03885). 400 servers, 348 days from 2024-03-30.")
    print(f"# Window: faults starting in days [{WINDOW_START:g}, {WINDOW_START + WINDOW_DAYS:g}) of the trace; times are seconds from day {WINDOW_START:g}.")
    print("# node: 'ihbd-' and the first 8 characters of the anonymised node UUID; cause: the trace's Class and Desc; note: its Level.")
    print("# Converted by crates/sim/traces/convert-infinitehbd.py (see crates/sim/traces/README.md); nothing added or changed.")
    out.writerow(["start", "end", "node", "cause", "note"])
    for start, end in faults:
        t = start["event_time"]
        if not (WINDOW_START <= t < WINDOW_START + WINDOW_DAYS):
            continue
        ft = start["fault_type"]
        s = round((t - WINDOW_START) * 86400)
        e = "" if end is None else round((end["event_time"] - WINDOW_START) * 86400)
        out.writerow([s, e, "ihbd-" + start["node_id"][:8], f'{ft["Class"]}: {ft["Desc"]}', ft["Level"]])


if __name__ == "__main__":
    main(sys.argv[1])
