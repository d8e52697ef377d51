"""The report's suite line: how long a scale's whole suite took (the sum of its trained runs' wall times), about
how long the missing runs take, and the measured wall-clock of runs that several workers (``--shard k/n``, a
submitit job array) trained at once, against the same arms trained one at a time.
"""
import numpy as np

from .records import SHARED_RUN
from .tables import DEFAULT_SEEDS


def trained_runs(have):
    """((table, arm), record) of every stored run that was trained for its own table (shared runs count once)."""
    return [((table, arm), r) for table, arms in have.items() for arm, recs in arms.items() for r in recs.values()
            if SHARED_RUN not in r]


def ran_alone(record):
    """Whether the run's wall time is one run's own: trained by a plain ``--ablation`` run (not one of several
    workers sharing the machine) from start to end (a run resumed after a kill records only its last part)."""
    return record.get("worker") is None and not record.get("resumed") and record.get("wall_s") is not None


def solo_minutes(runs):
    """{(table, arm): mean wall time in minutes of its runs that ran alone}."""
    walls = {}
    for key, r in runs:
        if ran_alone(r):
            walls.setdefault(key, []).append(r["wall_s"] / 60)
    return {k: float(np.mean(v)) for k, v in walls.items()}


def suite_time_line(scale, tables, have):
    """How long the scale's whole suite took so far (sum of the trained runs) and about how long the rest takes."""
    runs = trained_runs(have)
    walls = [r["wall_s"] / 60 for _, r in runs if r.get("wall_s") is not None]
    solo = solo_minutes(runs)
    overall = float(np.mean(list(solo.values()))) if solo else (float(np.mean(walls)) if walls else None)

    def one_at_a_time(key, record=None):
        """A run's minutes one run at a time: its own if it ran alone, else its arm's (else all arms') mean."""
        if record is not None and ran_alone(record):
            return record["wall_s"] / 60
        return solo.get(key, overall or 0.0)

    n_missing, missing_min = 0, 0.0
    for tab in tables:
        for arm in tab.arms_for(scale):
            recs = have.get(tab.key, {}).get(arm.name, {})
            if any(SHARED_RUN in r for r in recs.values()):
                continue  # its missing seeds come with the runs it shares
            missing = [s for s in DEFAULT_SEEDS if s not in recs]
            n_missing += len(missing)
            missing_min += len(missing) * one_at_a_time((tab.key, arm.name))
    line = (f"Whole {scale.upper()} suite so far: {len(runs)} trained arm+seed runs, {sum(walls) / 60:.1f} h of "
            "train + eval wall time in all (each run on its own machine and load, see the per-arm tables; an arm "
            "that shares another table's run is counted once).")
    if n_missing:
        line += (f" Missing for {len(DEFAULT_SEEDS)} seeds per arm: {n_missing} arm+seed runs, about "
                 f"{missing_min / 60:.1f} h more at each arm's mean wall time alone"
                 + (f" ({'the mean over arms' if solo else 'the mean of all runs'}, {overall:.1f} min, for arms "
                    "not run alone yet)." if overall else "."))
    whole_suite_min = sum(one_at_a_time(key, r) for key, r in runs) + missing_min
    return line + " " + parallel_time_sentences(runs, whole_suite_min, n_missing)


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


def most_at_once(intervals):
    """The largest number of (start, end) intervals that overlap: how many workers ran at once."""
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    peak = now = 0
    for _, step in events:  # an end sorts before a start at the same instant: back-to-back runs do not overlap
        now += step
        peak = max(peak, now)
    return peak


def parallel_measurements(runs):
    """Per group of runs trained by several workers at once -- ("shard", n): ``--shard k/n`` workers;
    ("submitit", n): a job array of n tasks -- the runs' count, their wall-clock (the union of their
    start..finish intervals, so idle time between sessions is not counted), their summed durations, the same
    arms' summed time alone (None when an arm of the group never ran alone), the most runs in flight at once (the
    workers; each ``--ablation`` invocation is a new process, so process ids would count a worker again) and the
    hosts. `runs`: ((table, arm), record) pairs; only runs that recorded their worker and start / finish times
    count."""
    solo = solo_minutes(runs)
    groups = {}
    for key, r in runs:
        w = r.get("worker")
        if not isinstance(w, dict) or r.get("started_unix") is None or r.get("finished_unix") is None:
            continue
        groups.setdefault((w.get("kind"), w.get("n")), []).append((key, r))
    out = []
    for (kind, n), members in sorted(groups.items(), key=lambda kv: (str(kv[0][0]), kv[0][1] or 0)):
        rs = [r for _, r in members]
        intervals = [(r["started_unix"], r["finished_unix"]) for r in rs]
        no_solo = sorted({key for key, _ in members if key not in solo})
        out.append({"kind": kind, "n": n, "runs": len(rs), "wall_clock_s": union_seconds(intervals),
                    "serial_s": sum(b - a for a, b in intervals),
                    "solo_s": None if no_solo else 60 * sum(solo[key] for key, _ in members),
                    "arms_never_alone": no_solo,
                    "workers": most_at_once(intervals),
                    "hosts": sorted({str(r["worker"].get("host")) for r in rs})})
    return out


def parallel_time_sentences(runs, whole_suite_min, n_missing=0):
    """The measured wall-clock of the runs that several workers trained at once (see parallel_measurements), the
    speed-up over the same arms one at a time, and the whole suite (`whole_suite_min` one at a time, with its
    `n_missing` runs) at that speed-up, labelled as projected."""
    groups = parallel_measurements(runs)
    if not groups:
        return ("On several machines: not measured yet (no stored run was trained by `--shard k/n` workers or a "
                "SLURM job array; see docs/scale_out.md).")
    out = []
    for g in groups:
        who = (f"`--shard k/{g['n']}` workers" if g["kind"] == "shard"
               else f"a submitit job array of {g['n']} tasks" if g["kind"] == "submitit" else f"{g['kind']} workers")
        text = (f"Measured with {who}: {g['runs']} of these runs took {g['wall_clock_s'] / 3600:.1f} h of wall-clock "
                f"(the time during which at least one of them was running), by {g['workers']} workers at once at "
                f"most, on {len(g['hosts'])} machine(s)")
        speedup = g["solo_s"] / g["wall_clock_s"] if g["solo_s"] and g["wall_clock_s"] > 0 else None
        if speedup:
            text += (f"; the same arms take {g['solo_s'] / 3600:.1f} h one run at a time (each arm's mean wall time "
                     f"alone), so a speed-up of {speedup:.2f}, each run taking {g['serial_s'] / g['solo_s']:.2f}x "
                     "its arm's time alone")
        elif g["arms_never_alone"]:
            text += ("; no speed-up is stated, as these arms never ran alone: "
                     + ", ".join(f"{t}/{a}" for t, a in g["arms_never_alone"]))
        if g["runs"] == len(runs) and not n_missing:
            text += f". The whole suite took {g['wall_clock_s'] / 3600:.1f} h that way."
        elif speedup:
            text += (f". At that speed-up the whole suite ({whole_suite_min / 60:.1f} h one run at a time, its "
                     f"missing runs included) would take about {whole_suite_min / 60 / speedup:.1f} h (projected, "
                     "not measured).")
        else:
            text += "."
        if len(g["hosts"]) == 1 and g["workers"] > 1:
            text += (f" Caveat: all of them ran on one machine ({g['hosts'][0]}), sharing its cores, so this is "
                     f"{g['workers']} workers on one machine (each run slower than alone), not {g['workers']} "
                     "machines.")
        out.append(text)
    return " ".join(out)
