"""Several workers on one ablation grid: ``train_net.py --ablation <table> --shard k/n`` (issue #26).

The grid is the table's arm+seed runs (or every table's, with ``--ablation all``), in the runner's order (seed
by seed, then table, then arm). Runs that must not train twice -- an arm whose config and seed equal another
table's (Table 4's keypoint-only arm is Table 5's RoIAlign arm) -- form one unit of work: the first trains, the
others then share its run, in the same worker.

Worker k of n (k = 1..n):
1. its share: the units missing when it starts (some results file absent), every n-th from the k-th. Workers
   that start from the same stored results get disjoint shares that together cover the missing grid once;
2. then (unless ``--shard-only``) the rest: the other units nobody has claimed, from the end of the grid (the
   runs their own workers would reach last), and the units whose claim is dead -- a worker that was killed or
   whose machine died (see claims.py for when a claim counts as dead). While units remain that live workers
   hold, it waits (``poll_s``) and takes over those whose holder dies, so the grid is finished as long as one
   worker lives;
3. it rebuilds the report; the last worker to finish writes the complete one.

Each unit is claimed (claims.py) before it is run, and its results file checked again after the claim: workers
on one results directory never train a run twice, and a result is written by one worker only. A run that
failed (a ``failed_seed<s>.json`` written after this worker started) is not retried by it; the next invocation
retries it, as the serial runner does. ``--shard-only``: only step 1, for machines that do not share a results
directory; copy their ``results/ablations/`` trees together afterwards (the shares are disjoint, so no file is
written twice) and run ``--ablation report``.
"""
import contextlib
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass
from typing import List

from .claims import CLAIM_TIMEOUT_S, HEARTBEAT_S, fs_now, try_claim
from .paths import CONFIGS_ROOT, OUTPUT_ROOT, RESULTS_ROOT, repo_relpath
from .records import failure_path, result_path
from .runner import ArmOutcome, prepare_arm, run_command, train_arm
from .tables import check_arm_names, get_table


def parse_shard(text):
    """"k/n" -> (k, n) with 1 <= k <= n; ValueError naming the problem otherwise."""
    try:
        k, n = (int(x) for x in str(text).split("/"))
    except ValueError:
        raise ValueError(f"--shard {text!r}: expected k/n, e.g. 1/2 (worker k of n, k = 1..n)") from None
    if n < 1 or not 1 <= k <= n:
        raise ValueError(f"--shard {text}: k must be in 1..n and n >= 1 (worker k of n; got k={k}, n={n})")
    return k, n


@dataclass
class Unit:
    """Runs that train once: (table key, arm, seed) of the run that trains, then those that share it."""
    runs: List[tuple]
    scale: str
    results_root: str

    @property
    def key(self):
        return self.runs[0]

    @property
    def claim_file(self):
        table, arm, seed = self.runs[0]
        return result_path(table, self.scale, arm, seed, self.results_root)

    def result_files(self):
        return [result_path(t, self.scale, a, s, self.results_root) for t, a, s in self.runs]

    def finished(self):
        return all(os.path.isfile(p) for p in self.result_files())

    def failed_since(self, t):
        """Whether a run of the unit recorded a failure at or after file-system time `t`."""
        for table, arm, seed in self.runs:
            try:
                if os.stat(failure_path(table, self.scale, arm, seed, self.results_root)).st_mtime >= t:
                    return True
            except FileNotFoundError:
                pass
        return False

    def label(self):
        table, arm, seed = self.runs[0]
        more = f" (+ {', '.join(f'{t}/{a}' for t, a, _ in self.runs[1:])})" if len(self.runs) > 1 else ""
        return f"{table}/{arm} seed {seed}{more}"


def plan_units(tables, scale, seeds, *, arms=None, opts=(), configs_root=CONFIGS_ROOT, results_root=RESULTS_ROOT,
               output_root=OUTPUT_ROOT, log=print):
    """The grid of `tables` (keys) x `seeds` as units, in the runner's order (seed-major)."""
    groups = {}
    for seed in seeds:
        for key in tables:
            tab = get_table(key)
            check_arm_names(tab, scale, arms)
            for name in (a.name for a in tab.arms_for(scale)):
                if arms and name not in arms:
                    continue
                job = prepare_arm(tab.key, scale, name, seed, opts=opts, configs_root=configs_root,
                                  results_root=results_root, output_root=output_root, log=log)
                groups.setdefault((job.config_hash, seed), []).append((tab.key, name, seed))
    return [Unit(runs, scale, results_root) for runs in groups.values()]


def share(units, k, n):
    """Worker k's (1..n) share of the units that are not finished: every n-th from the k-th."""
    missing = [u for u in units if not u.finished()]
    return missing[k - 1::n]


class ShardWorker:
    """Worker k of n on `units` (see the module docstring). `train` holds train_arm's keyword arguments
    (num_gpus, suite_command, runner, log) and prepare_arm's (opts, configs_root, output_root)."""

    def __init__(self, units, k, n, *, only_own=False, poll_s=60.0, claim_timeout_s=CLAIM_TIMEOUT_S,
                 heartbeat_s=None, owner=None, opts=(), configs_root=CONFIGS_ROOT, output_root=OUTPUT_ROOT,
                 num_gpus=1, suite_command=None, runner=None, log=print):
        self.units, self.k, self.n = units, k, n
        self.only_own, self.poll_s, self.claim_timeout_s = only_own, poll_s, claim_timeout_s
        self.heartbeat_s = heartbeat_s or min(HEARTBEAT_S, claim_timeout_s / 4)
        self.owner = owner
        self.opts, self.configs_root, self.output_root = list(opts), configs_root, output_root
        self.num_gpus, self.suite_command, self.runner, self.log = num_gpus, suite_command, runner, log
        self.attempted = set()  # unit keys this worker ran (done or failed): not run again by it
        self.outcomes: List[ArmOutcome] = []
        self.started = None  # file-system time of the start (failures after it are not retried)
        self.worker = {"kind": "shard", "shard": f"{k}/{n}", "n": n, "host": socket.gethostname(),
                       "pid": os.getpid()}

    @property
    def tag(self):
        return f"[shard {self.k}/{self.n}]"

    def run(self):
        """Run the share, then (unless only_own) help with the rest; returns the ArmOutcomes of what it did."""
        if not self.units:
            return []
        results_root = self.units[0].results_root
        self.started = fs_now(results_root)
        mine = share(self.units, self.k, self.n)
        missing = sum(not u.finished() for u in self.units)
        self.log(f"{self.tag} {missing} of {len(self.units)} units missing; this worker's share: {len(mine)}"
                 + (" (only these: --shard-only)" if self.only_own else ", then the rest of the grid"))
        for unit in mine:
            held = self._attempt(unit)
            if held and self.only_own:
                self.outcomes += [ArmOutcome(a, s, "claimed") for _, a, s in unit.runs]
        if not self.only_own:
            self._help()
        return self.outcomes

    def _open_units(self):
        return [u for u in self.units if u.key not in self.attempted and not u.finished()
                and not u.failed_since(self.started)]

    def _help(self):
        """Take unclaimed and dead-claimed units from the end of the grid; wait for those live workers hold."""
        waiting_since = None
        while True:
            progressed, held = False, []
            for unit in reversed(self._open_units()):
                holder = self._attempt(unit)
                if holder:
                    held.append((unit, holder))
                else:
                    progressed = True
            if not held:
                return
            if not progressed:
                if waiting_since is None:
                    waiting_since = time.time()
                    self.log(f"{self.tag} waiting for {len(held)} unit(s) other workers hold (to take over any whose "
                             f"worker dies): " + "; ".join(f"{u.label()} by {h}" for u, h in held[:5]))
                time.sleep(self.poll_s)
            else:
                waiting_since = None

    def _attempt(self, unit):
        """Claim and run `unit`; returns None when it was handled (run, or found finished), else the holder."""
        if unit.finished():
            return None
        claim, holder = try_claim(unit.claim_file, owner=self.owner, timeout_s=self.claim_timeout_s,
                                  info={"worker": self.worker, "unit": unit.label()})
        if claim is None:
            return holder
        with claim.kept_alive(self.heartbeat_s):
            try:
                if unit.finished():
                    return None
                if self.started is not None and unit.failed_since(self.started):
                    return None  # failed in this round (another worker): not retried now
                self.attempted.add(unit.key)
                self.log(f"{self.tag} claimed {unit.label()} ({repo_relpath(claim.path)})")
                for table, arm, seed in unit.runs:
                    job = prepare_arm(table, unit.scale, arm, seed, opts=self.opts, configs_root=self.configs_root,
                                      results_root=unit.results_root, output_root=self.output_root, log=self.log)
                    outcome = train_arm(job, num_gpus=self.num_gpus, suite_command=self.suite_command,
                                        runner=self.runner or run_command, log=self.log,
                                        record_extra={"worker": self.worker})
                    self.outcomes.append(outcome)
                    if outcome.status == "failed":
                        break  # the runs that would share it wait for the next invocation
            finally:
                claim.release()
        return None


def run_shard(tables, scale, seeds, shard, *, arms=None, opts=(), only_own=False, poll_s=60.0,
              claim_timeout_s=CLAIM_TIMEOUT_S, configs_root=CONFIGS_ROOT, results_root=RESULTS_ROOT,
              output_root=OUTPUT_ROOT, num_gpus=1, suite_command=None, runner=None, log=print):
    """Plan the grid of `tables` x `seeds` and run worker `shard` = (k, n) on it; returns its ArmOutcomes."""
    k, n = shard
    units = plan_units(tables, scale, seeds, arms=arms, opts=opts, configs_root=configs_root,
                       results_root=results_root, output_root=output_root, log=log)
    worker = ShardWorker(units, k, n, only_own=only_own, poll_s=poll_s, claim_timeout_s=claim_timeout_s,
                         opts=opts, configs_root=configs_root, output_root=output_root, num_gpus=num_gpus,
                         suite_command=suite_command, runner=runner, log=log)
    return worker.run()


@contextlib.contextmanager
def sigterm_as_exit():
    """Within: SIGTERM raises SystemExit (main thread only), so that a worker stopped with `kill` ends its
    training subprocess and releases its claim instead of leaving both behind. The old handler is restored."""
    def handler(signum, frame):
        raise SystemExit(128 + signum)

    if threading.current_thread() is not threading.main_thread():  # handlers can only be set there
        yield
        return
    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)
