"""SLURM through submitit (issue #26): one training on several machines, and the ablation grid as a job array.

The command line is ``tools/submit_slurm.py``; this module holds what runs in the jobs and how they are
submitted. submitit pickles a task, submits it (sbatch) and runs it on the allocated nodes; on preemption or
time-out SLURM sends USR2 (``signal_delay_s`` before the kill), submitit calls the task's ``checkpoint`` and
requeues the job, which then runs what ``checkpoint`` returned. Its local executor (``cluster="local"``) runs the
same tasks as processes of this machine, with the same signal and requeue path: the tests use it.

- `TrainingTask`: one rank of a ``train_net.py`` training. A job of ``nodes x tasks_per_node`` tasks (one per
  GPU) runs one each; submitit's ``TorchDistributedEnvironment`` sets the variables torchrun would (RANK,
  WORLD_SIZE, LOCAL_RANK, ..., MASTER_ADDR = the first node), and train_net's ``launch_from_env`` joins them
  (env://). On requeue it runs again with ``--resume``: training continues from ``OUTPUT_DIR/last_checkpoint``
  (atomic checkpoints: a kill at any moment leaves the previous one usable), losing at most
  ``SOLVER.CHECKPOINT_PERIOD`` iterations.
- `AblationTask`: one task of a job array, one unit of the grid (an arm+seed, with the arms sharing its run; see
  shards.py): it claims the unit (claims.py; its owner is the array task, so its requeued self takes the claim
  over at once), trains it through the runner (``train_net.py --resume`` subprocess, results file), and the task
  that finds every unit of its array finished rebuilds the report. A requeued task resumes its arm from the
  last checkpoint.

submitit is imported here, not by the rest of the harness: ``train_net.py --ablation`` runs without it.
"""
import contextlib
import dataclasses
import os
import shutil
import socket
import sys
from typing import Dict, List, Optional

try:
    import submitit
    from submitit.helpers import Checkpointable, DelayedSubmission, TorchDistributedEnvironment
except ImportError as e:  # pragma: no cover
    raise ImportError("ablations.slurm needs submitit: pip install 'submitit>=1.5,<2' (in requirements/dev.txt)") from e

from .claims import CLAIM_TIMEOUT_S, HEARTBEAT_S, fs_now, try_claim
from .paths import CONFIGS_ROOT, DOCS_DIR, OUTPUT_ROOT, REPO_ROOT, RESULTS_ROOT
from .runner import ArmOutcome, prepare_arm, run_command, train_arm
from .shards import Unit, plan_units
from .tables import AblationTable, get_table

CLUSTERS = ("slurm", "local")  # submitit executors: a SLURM cluster, or processes of this machine


# ------------------------------------------------------------------------------------------------------------
# Executors
# ------------------------------------------------------------------------------------------------------------
def parse_time_min(text):
    """SLURM time limit "minutes", "HH:MM:SS", "MM:SS" or "D-HH:MM[:SS]" -> minutes (int, rounded up)."""
    text = str(text).strip()
    try:
        days, _, rest = text.rpartition("-") if "-" in text else ("0", "", text)
        parts = [int(p) for p in rest.split(":")]
        if "-" in text:  # D-HH[:MM[:SS]]
            parts += [0] * (3 - len(parts))
            h, m, s = parts
        elif len(parts) == 1:
            h, m, s = 0, parts[0], 0
        elif len(parts) == 2:
            h, m, s = 0, parts[0], parts[1]
        else:
            h, m, s = parts
        minutes = int(days) * 1440 + h * 60 + m + (1 if s else 0)
    except ValueError:
        raise ValueError(f"time limit {text!r}: expected minutes, HH:MM:SS or D-HH:MM") from None
    if minutes <= 0:
        raise ValueError(f"time limit {text!r} must be positive")
    return minutes


def make_executor(folder, *, cluster="slurm", name="maskrcnn_plugin", nodes=1, tasks_per_node=1, gpus_per_node=0,
                  cpus_per_task=None, time_min=60, mem_gb=None, partition=None, account=None, qos=None,
                  constraint=None, max_requeues=3, array_parallelism=None, signal_delay_s=120, slurm_extra=None):
    """A submitit executor for this machine's processes (``cluster="local"``) or SLURM, set up for jobs that
    requeue on preemption or time-out (at most `max_requeues` times after a time-out; preemptions do not count)."""
    if cluster not in CLUSTERS:
        raise ValueError(f"cluster {cluster!r}: expected one of {', '.join(CLUSTERS)}")
    if cluster == "local" and nodes != 1:
        raise ValueError(f"--nodes {nodes}: the local executor runs on this machine only (--nodes 1)")
    for flag, value in (("--nodes", nodes), ("--tasks-per-node", tasks_per_node)):
        if value < 1:
            raise ValueError(f"{flag} {value}: must be at least 1")
    if gpus_per_node < 0:
        raise ValueError(f"--gpus-per-node {gpus_per_node}: must be >= 0")
    if cluster == "slurm" and shutil.which("srun") is None:
        raise ValueError("--cluster slurm: no srun on this machine's PATH; submit from a machine of the SLURM "
                         "cluster (a login node), or run the job here with --cluster local")
    ex = submitit.AutoExecutor(folder=folder, cluster=cluster, slurm_max_num_timeout=max_requeues,
                               local_max_num_timeout=max_requeues)
    params = dict(name=name, nodes=nodes, tasks_per_node=tasks_per_node, gpus_per_node=gpus_per_node,
                  timeout_min=int(time_min), cpus_per_task=cpus_per_task, mem_gb=mem_gb)
    if cluster == "slurm":
        extra = {"requeue": True, **(slurm_extra or {})}  # allow scontrol requeue / preemption requeue
        for key, value in (("account", account), ("qos", qos), ("constraint", constraint)):
            if value:
                params[f"slurm_{key}"] = value
        params.update(slurm_partition=partition, slurm_signal_delay_s=signal_delay_s,
                      slurm_additional_parameters=extra)
        if array_parallelism:
            params["slurm_array_parallelism"] = array_parallelism
    ex.update_parameters(**{k: v for k, v in params.items() if v is not None})
    return ex


@contextlib.contextmanager
def repo_on_pythonpath():
    """PYTHONPATH with the repository first while submitting: the job's processes (started with this
    environment, sbatch's default --export=ALL) import train_net and ablations from this checkout."""
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([REPO_ROOT] + ([old] if old else []))
    try:
        yield
    finally:
        if old is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = old


# ------------------------------------------------------------------------------------------------------------
# One training on several machines
# ------------------------------------------------------------------------------------------------------------
def _train_parser():
    from detectron2.engine import default_argument_parser

    return default_argument_parser()


def check_training_args(train_args):
    """The parsed train_net.py arguments of a job; ValueError for flags the job sets itself or a missing config."""
    if REPO_ROOT not in sys.path:
        sys.path.insert(0, REPO_ROOT)
    import train_net

    parser = _train_parser()
    try:
        args = parser.parse_args(list(train_args))
    except SystemExit:
        raise ValueError(f"train_net.py arguments {' '.join(train_args)!r} do not parse (see the message above)")
    given = train_net.launch_flags_given(args, parser)
    if given:
        raise ValueError(f"{' '.join(given)}: the job's processes come from --nodes / --tasks-per-node (one per "
                         "task, joined through env://); drop these from the train_net.py arguments")
    if not args.config_file or not os.path.isfile(args.config_file):
        raise ValueError(f"--config-file {args.config_file!r}: no such file (give the config to train)")
    return args


class TrainingTask(Checkpointable):
    """One rank of ``train_net.py <train_args>`` in a submitit job (see the module docstring)."""

    def __init__(self, train_args):
        self.train_args = list(train_args)

    def __call__(self):
        TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
        if REPO_ROOT not in sys.path:
            sys.path.insert(0, REPO_ROOT)
        import train_net

        from maskrcnn_plugin.launch import launch_from_env

        parser = _train_parser()
        args = parser.parse_args(self.train_args)
        train_net.started_by_torchrun(args, parser)  # checks the variables just exported
        print("Command Line Args:", args, flush=True)
        return launch_from_env(train_net.main, args=(args,))

    def checkpoint(self, *args, **kwargs):
        """On preemption / time-out: the same training, resumed from OUTPUT_DIR's last checkpoint."""
        resume = self.train_args if "--resume" in self.train_args else ["--resume", *self.train_args]
        return DelayedSubmission(TrainingTask(resume))


def submit_training(train_args, *, folder, **executor_kwargs):
    """Submit ``train_net.py <train_args>`` as one job of ``nodes x tasks_per_node`` ranks; returns the job."""
    check_training_args(train_args)
    ex = make_executor(folder, **executor_kwargs)
    with repo_on_pythonpath():
        return ex.submit(TrainingTask(train_args))


# ------------------------------------------------------------------------------------------------------------
# The ablation grid as a job array
# ------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class ArraySettings:
    """What every task of an ablation array shares."""
    tables: Dict[str, AblationTable]  # the tables as submitted (a task needs no table files)
    units: List[Unit]  # the array's units, task i runs units[i]
    submitted: float  # file-system time of the submission (failures after it count as finished)
    opts: List[str]
    num_gpus: int
    configs_root: str
    output_root: str
    docs_dir: str
    suite_command: Optional[str]
    claim_timeout_s: float = CLAIM_TIMEOUT_S
    runner: Optional[object] = None  # None: run_command (train_net.py subprocesses); tests pass a stand-in


class AblationTask(Checkpointable):
    """Task `index` of an ablation job array: claim its unit, train it, rebuild the report if the array is done."""

    def __init__(self, settings, index):
        self.settings = settings
        self.index = index

    def __call__(self):
        from .report import write_report

        s = self.settings
        unit = s.units[self.index]
        env = submitit.JobEnvironment()
        worker = {"kind": "submitit", "n": len(s.units), "host": socket.gethostname(), "pid": os.getpid(),
                  "task": str(env.job_id)}
        print(f"[ablation array task {env.job_id}] pid {os.getpid()}: {unit.label()}", flush=True)
        outcomes = []
        claim, holder = try_claim(unit.claim_file, owner=f"submitit:{env.job_id}", timeout_s=s.claim_timeout_s,
                                  info={"worker": worker, "unit": unit.label()})
        if claim is None:
            print(f"[ablation array task {env.job_id}] {unit.label()} is held by {holder}; not run", flush=True)
            return [dataclasses.asdict(ArmOutcome(a, sd, "claimed")) for _, a, sd in unit.runs]
        try:
            with claim.kept_alive(min(HEARTBEAT_S, s.claim_timeout_s / 4)):
                # (a unit that finished meanwhile, e.g. by a shard worker on the same results, is not rerun)
                for table, arm, seed in [] if unit.finished() else unit.runs:
                    job = prepare_arm(s.tables[table], unit.scale, arm, seed, opts=s.opts,
                                      configs_root=s.configs_root, results_root=unit.results_root,
                                      output_root=s.output_root)
                    outcome = train_arm(job, num_gpus=s.num_gpus, suite_command=s.suite_command,
                                        runner=s.runner or run_command, record_extra={"worker": worker})
                    outcomes.append(outcome)
                    if outcome.status == "failed":
                        break
        finally:
            claim.release()
        if all(u.finished() or u.failed_since(s.submitted) for u in s.units):
            print(f"[ablation array task {env.job_id}] every unit of the array has finished: rebuilding the report",
                  flush=True)
            write_report(results_root=unit.results_root, docs_dir=s.docs_dir, configs_root=s.configs_root)
        return [dataclasses.asdict(o) for o in outcomes]

    def checkpoint(self, *args, **kwargs):
        """On preemption / time-out: the same task again; its arm resumes from the last checkpoint."""
        return DelayedSubmission(AblationTask(self.settings, self.index))


def submit_ablation_array(tables, scale, seeds, *, folder, arms=None, opts=(), num_gpus=1,
                          configs_root=CONFIGS_ROOT, results_root=RESULTS_ROOT, output_root=OUTPUT_ROOT,
                          docs_dir=DOCS_DIR, suite_command=None, claim_timeout_s=CLAIM_TIMEOUT_S, runner=None,
                          log=print, **executor_kwargs):
    """Submit the missing units of `tables` x `seeds` as one job array (one task per unit). Each task gets
    ``gpus_per_node`` GPUs (give ``num_gpus`` the same: the arm's train_net.py starts that many processes).
    Returns the jobs ([] when nothing is missing)."""
    table_objs = {get_table(t).key: get_table(t) for t in tables}
    units = [u for u in plan_units(list(table_objs), scale, seeds, arms=arms, opts=opts, configs_root=configs_root,
                                   results_root=results_root, output_root=output_root, log=log)
             if not u.finished()]
    if not units:
        log("every arm+seed has results: nothing to submit")
        return []
    settings = ArraySettings(tables=table_objs, units=units, submitted=fs_now(results_root), opts=list(opts),
                             num_gpus=num_gpus, configs_root=configs_root, output_root=output_root,
                             docs_dir=docs_dir, suite_command=suite_command, claim_timeout_s=claim_timeout_s,
                             runner=runner)
    ex = make_executor(folder, **executor_kwargs)
    with repo_on_pythonpath():
        jobs = ex.submit_array([AblationTask(settings, i) for i in range(len(units))])
    for job, unit in zip(jobs, units):
        log(f"submitted {unit.label()}: job {job.job_id}")
    return jobs
