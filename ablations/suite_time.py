"""The report's suite line: how long a scale's whole suite took (the sum of its trained runs' wall times), about
how long the missing runs take, and the measured wall-clock of runs that several workers (``--shard k/n``, a
submitit job array) trained at once.
"""
import numpy as np

from .records import SHARED_RUN
from .tables import DEFAULT_SEEDS


def suite_time_line(scale, tables, have):
    """How long the scale's whole suite took so far (sum of the trained runs) and about how long the rest takes."""
    runs = [r for arms in have.values() for recs in arms.values() for r in recs.values() if SHARED_RUN not in r]
    walls = [r["wall_s"] / 60 for r in runs if r.get("wall_s") is not None]
    overall = float(np.mean(walls)) if walls else None
    n_missing, missing_min = 0, 0.0
    for tab in tables:
        for arm in tab.arms_for(scale):
            recs = have.get(tab.key, {}).get(arm.name, {})
            if any(SHARED_RUN in r for r in recs.values()):
                continue  # its missing seeds come with the runs it shares
            missing = [s for s in DEFAULT_SEEDS if s not in recs]
            arm_walls = [r["wall_s"] / 60 for r in recs.values() if r.get("wall_s") is not None]
            n_missing += len(missing)
            missing_min += len(missing) * (float(np.mean(arm_walls)) if arm_walls else (overall or 0.0))
    runs_all = runs
    line = (f"Whole {scale.upper()} suite so far: {len(runs)} trained arm+seed runs, {sum(walls) / 60:.1f} h of "
            "train + eval wall time in all (each run on its own machine and load, see the per-arm tables; an arm "
            "that shares another table's run is counted once).")
    if n_missing:
        line += (f" Missing for {len(DEFAULT_SEEDS)} seeds per arm: {n_missing} arm+seed runs, about "
                 f"{missing_min / 60:.1f} h more at each arm's measured mean wall time"
                 + (f" (the mean of all runs, {overall:.1f} min, for arms not run yet)." if overall else "."))
    return line + " " + parallel_time_sentences(runs_all, sum(walls) / 60)


def union_seconds(intervals):
    """Total length of the union of (start, end) intervals: the wall-clock during which at least one ran."""
    total, reach = 0.0, None
    for start, end in sorted(intervals):
        if reach is None or start > reach:
            total += end - start
            reach = end
        elif end > reach:
            total += end - reach
            reach = end
    return total


def parallel_measurements(runs):
    """Per group of runs trained by several workers at once -- ("shard", n): ``--shard k/n`` workers;
    ("submitit", n): a job array of n tasks -- the runs' count, their wall-clock (the union of their
    start..finish intervals, so idle time between sessions is not counted), their summed durations (one after
    another), the workers and the hosts. Only runs that recorded their worker and start / finish times."""
    groups = {}
    for r in runs:
        w = r.get("worker")
        if not isinstance(w, dict) or r.get("started_unix") is None or r.get("finished_unix") is None:
            continue
        groups.setdefault((w.get("kind"), w.get("n")), []).append(r)
    out = []
    for (kind, n), rs in sorted(groups.items(), key=lambda kv: (str(kv[0][0]), kv[0][1] or 0)):
        intervals = [(r["started_unix"], r["finished_unix"]) for r in rs]
        out.append({"kind": kind, "n": n, "runs": len(rs), "wall_clock_s": union_seconds(intervals),
                    "serial_s": sum(b - a for a, b in intervals),
                    "workers": len({(r["worker"].get("host"), r["worker"].get("pid"),
                                     r["worker"].get("task")) for r in rs}),
                    "hosts": sorted({str(r["worker"].get("host")) for r in rs})})
    return out


def parallel_time_sentences(runs, serial_min):
    """The measured wall-clock of the runs that several workers trained at once (see parallel_measurements)."""
    groups = parallel_measurements(runs)
    if not groups:
        return ("On several machines: not measured yet (no stored run was trained by `--shard k/n` workers or a "
                "SLURM job array; see docs/scale_out.md).")
    out = []
    for g in groups:
        who = (f"`--shard k/{g['n']}` workers" if g["kind"] == "shard"
               else f"a submitit job array of {g['n']} tasks" if g["kind"] == "submitit" else f"{g['kind']} workers")
        speedup = g["serial_s"] / g["wall_clock_s"] if g["wall_clock_s"] > 0 else None
        text = (f"Measured with {who}: {g['runs']} of these runs took {g['wall_clock_s'] / 3600:.1f} h of wall-clock "
                f"(the time during which at least one of them was running), {g['serial_s'] / 3600:.1f} h one after "
                f"another" + (f" (speed-up {speedup:.2f})" if speedup else "") + f", by {g['workers']} worker "
                f"process(es) on {len(g['hosts'])} machine(s)")
        if g["runs"] == len(runs):
            text += f": the whole suite so far took {g['wall_clock_s'] / 3600:.1f} h that way."
        elif speedup:
            text += (f"; at that speed-up the {serial_min / 60:.1f} h of all runs would take about "
                     f"{serial_min / 60 / speedup:.1f} h (projected, not measured).")
        else:
            text += "."
        if len(g["hosts"]) == 1 and g["workers"] > 1:
            text += (f" Caveat: all of them ran on one machine ({g['hosts'][0]}), sharing its cores, so this is "
                     f"{g['workers']} workers on one machine (each run slower than alone), not {g['workers']} "
                     "machines.")
        out.append(text)
    return " ".join(out)
