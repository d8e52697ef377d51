"""Running the arms: one ``train_net.py`` subprocess per arm+seed, which trains it or re-evaluates its checkpoint.

For every arm and seed the runner starts ``train_net.py --config-file <arm> --resume SEED <s> OUTPUT_DIR <dir>
[opts]`` as a subprocess (a crash of one arm does not stop the suite; a killed arm resumes from its last
checkpoint), then stores the final metrics (see metrics.py), the wall time, the commit and the command in the
arm+seed's results json (see records.py). An arm+seed whose results file exists is skipped; one whose config
(hash) and seed equal a stored run of another table is not trained again: its results file names that run.
With ``eval_only`` the existing checkpoints (``<dir>/model_final.pth``) are re-evaluated without training.
The runner writes no report: ``cli.py`` rebuilds it after the runs. Several workers on one grid (``--shard``,
a SLURM job array): shards.py and slurm.py, which run each arm+seed through `train_arm` here.
"""
import ctypes
import datetime
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import List, Optional

from .metrics import collect_metrics
from .paths import (CONFIGS_ROOT, OUTPUT_ROOT, REPO_ROOT, RESULTS_ROOT, TRAIN_NET, arm_config_path, arm_output_dir,
                    repo_relpath)
from .records import (LOG_NAME, SHARED_RUN, config_hash, display_command, failure_path, git_commit,
                      identical_run, last_error_line, load_arm_cfg, missing_pretrained_weights, result_path,
                      shared_run_valid, torch_threads, write_json_atomic)
from .tables import DEFAULT_SEEDS, AblationTable, Arm, check_arm_names, get_table

CONFIG_STAMP = "arm_config_hash.txt"  # the config hash an output directory's checkpoints were trained with


try:  # Linux: prctl(PR_SET_PDEATHSIG) for the training subprocesses
    _PRCTL = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None
except (OSError, AttributeError):  # pragma: no cover
    _PRCTL = None


def _die_with_parent():
    """preexec_fn (Linux): the subprocess gets SIGTERM when the runner dies, even by SIGKILL, so a killed runner
    (or shard worker) leaves no training behind that would hold its OUTPUT_DIR and claim."""
    _PRCTL(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def run_command(argv, log_path):
    """Run one arm's train_net.py subprocess with stdout+stderr in `log_path`; returns its exit status.

    The subprocess ends with the runner: on an exception here (Ctrl-C, a worker's SIGTERM) subprocess.run kills
    it, and on Linux it gets SIGTERM when the runner dies in any other way."""
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    with open(log_path, "a") as log:
        log.write(f"\n===== {datetime.datetime.now().isoformat(timespec='seconds')}: {display_command(argv)}\n")
        log.flush()
        return subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT,
                              preexec_fn=_die_with_parent if _PRCTL is not None else None).returncode


def _now():
    return datetime.datetime.now().isoformat(timespec="seconds")


def _load_average():
    """The 1/5/15-minute load averages (None where the OS has none): a wall time measured beside other work
    (the arm's own 2 threads count ~2) is not a quiet machine's, and the record should say so."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):  # pragma: no cover (Windows)
        return None


# ------------------------------------------------------------------------------------------------------------
# Output directories: the config stamp
# ------------------------------------------------------------------------------------------------------------
def config_stamp(out_dir):
    """The config hash the runner stamped into `out_dir` before training there, or None."""
    path = os.path.join(out_dir, CONFIG_STAMP)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return f.read().strip()


def set_aside_stale_output(out_dir, current_hash, tag, log):
    """A checkpoint in `out_dir` resumes training only if it was trained with the arm's current config.

    The runner stamps the config hash into the output directory before training. An output directory with
    checkpoints and another (or no) stamp -- e.g. the arm's config or dataset changed since -- is renamed
    to `<out_dir>.stale-<n>` (kept, not deleted), so the arm trains from scratch instead of silently
    resuming, or re-evaluating, a model of the old config."""
    has_checkpoint = any(os.path.isfile(os.path.join(out_dir, n)) for n in ("last_checkpoint", "model_final.pth"))
    stamp = config_stamp(out_dir)
    if has_checkpoint and stamp != current_hash:
        n = 0
        while os.path.exists(f"{out_dir}.stale-{n}"):
            n += 1
        os.replace(out_dir, f"{out_dir}.stale-{n}")
        log(f"{tag} WARNING: {repo_relpath(out_dir)} holds checkpoints of another config (hash {stamp} != "
            f"{current_hash}); moved to {repo_relpath(out_dir)}.stale-{n}, training from scratch")
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, CONFIG_STAMP), "w") as f:
        f.write(current_hash + "\n")


def clean_intermediate_checkpoints(output_dir):
    for name in os.listdir(output_dir):
        if name.startswith("model_") and name.endswith(".pth") and name != "model_final.pth":
            os.remove(os.path.join(output_dir, name))


# ------------------------------------------------------------------------------------------------------------
# One arm+seed
# ------------------------------------------------------------------------------------------------------------
@dataclass
class ArmOutcome:
    arm: str
    seed: int
    # "done", "shared" (another table's identical run), "skipped", "failed", "missing" (eval-only without
    # checkpoint or results; a shapes-pretrained:// backbone not built yet)
    status: str
    result_file: Optional[str] = None
    log: Optional[str] = None


@dataclass
class ArmJob:
    """One arm+seed of a table, with what both run modes (train_arm, evaluate_arm) derive from it."""
    table: AblationTable
    scale: str
    arm: Arm
    seed: int
    opts: List[str]  # the user's config overrides, as recorded
    run_opts: List[str]  # opts + SEED + OUTPUT_DIR: what the subprocess gets
    config_file: str
    result_file: str
    failure_file: str
    output_dir: str
    results_root: str
    config_hash: str  # of the arm's config with run_opts
    weights: str  # its MODEL.WEIGHTS
    previous: Optional[dict]  # the stored results record of this arm+seed, if any

    @property
    def tag(self):
        return f"[{self.scale} {self.table.key}/{self.arm.name} seed {self.seed}]"


def prepare_arm(table, scale, arm, seed, *, opts=(), configs_root=CONFIGS_ROOT, results_root=RESULTS_ROOT,
                output_root=OUTPUT_ROOT, log=print):
    """The ArmJob of `arm` + `seed` of `table` (a key, or an AblationTable: a task on another machine gets the
    table it was submitted with); a stored record that shares a run which is gone (or changed) is dropped."""
    tab = table if isinstance(table, AblationTable) else get_table(table)
    arm_obj = {a.name: a for a in tab.arms_for(scale)}[arm]
    config_file = arm_config_path(tab.key, scale, arm, configs_root)
    out_dir = arm_output_dir(tab.key, scale, arm, seed, output_root)
    run_opts = list(opts) + ["SEED", str(seed), "OUTPUT_DIR", out_dir]
    cfg = load_arm_cfg(config_file, run_opts)
    job = ArmJob(
        table=tab, scale=scale, arm=arm_obj, seed=seed, opts=list(opts), run_opts=run_opts, config_file=config_file,
        result_file=result_path(tab.key, scale, arm, seed, results_root),
        failure_file=failure_path(tab.key, scale, arm, seed, results_root), output_dir=out_dir,
        results_root=results_root, config_hash=config_hash(cfg), weights=cfg.MODEL.WEIGHTS, previous=None,
    )
    if os.path.isfile(job.result_file):
        with open(job.result_file) as f:
            job.previous = json.load(f)
        if SHARED_RUN in job.previous and not shared_run_valid(results_root, scale, job.previous):
            log(f"{job.tag} the run it shared ({job.previous[SHARED_RUN]}) is gone or has another config; "
                f"dropping {repo_relpath(job.result_file)}")
            os.remove(job.result_file)
            job.previous = None
    return job


def _train_net_argv(job, num_gpus):
    argv = [sys.executable, TRAIN_NET]
    if num_gpus and num_gpus > 1:
        argv += ["--num-gpus", str(num_gpus)]
    return argv + ["--config-file", job.config_file]


def _launch(job, argv, verb, runner, log):
    """Run the subprocess; (exit status, wall seconds, log path)."""
    log_path = os.path.join(job.output_dir, LOG_NAME)
    log(f"{job.tag} {verb}: {display_command(argv)}")
    start = time.time()
    rc = runner(argv, log_path)
    wall = time.time() - start
    if rc != 0:
        log(f"{job.tag} FAILED (exit {rc}) after {wall / 60:.1f} min; log: {repo_relpath(log_path)}")
    return rc, wall, log_path


def _collect_record(job, run_opts, num_gpus, log):
    """The results record of a finished subprocess, or None (logged) when its evaluation cannot be read."""
    cfg = load_arm_cfg(job.config_file, run_opts)
    try:
        collected = collect_metrics(cfg, job.output_dir)
    except Exception as e:  # e.g. no eval_results.json: count as a failed arm, keep the suite going
        log(f"{job.tag} FAILED: could not read the evaluation of {repo_relpath(job.output_dir)}: {e!r}")
        return None
    commit, dirty = git_commit()
    return {
        "table": job.table.key, "scale": job.scale, "arm": job.arm.name, "label": job.arm.label,
        "paper_row": job.arm.paper_row, "seed": job.seed, "config": repo_relpath(job.config_file),
        "opts": list(job.opts), "config_hash": config_hash(cfg),
        "max_iter": int(cfg.SOLVER.MAX_ITER), "ims_per_batch": int(cfg.SOLVER.IMS_PER_BATCH),
        "device": str(cfg.MODEL.DEVICE), "num_gpus": int(num_gpus or 1), "torch_threads": torch_threads(),
        **collected,
        "commit": commit, "dirty": dirty, "date": _now(),
    }


def _store(job, record, wall, log_path, log):
    write_json_atomic(job.result_file, record)
    if os.path.isfile(job.failure_file):  # an earlier failure of this arm+seed, superseded by this run
        os.remove(job.failure_file)
    aps = ", ".join(f"{label} AP {record['metrics'][task].get('AP')}"
                    for task, label in (("segm", "mask"), ("bbox", "box"), ("keypoints", "keypoint"))
                    if task in record["metrics"])
    log(f"{job.tag} done in {wall / 60:.1f} min: {aps or 'no AP'} -> {repo_relpath(job.result_file)}")
    return ArmOutcome(job.arm.name, job.seed, "done", job.result_file, log_path)


def train_arm(job, *, num_gpus=1, suite_command=None, runner=run_command, log=print, record_extra=None):
    """Train the arm+seed (resuming a killed run of the same config) unless it has results or shares another
    table's identical run; store its results, or record the failure. `record_extra`: fields added to the
    results record (e.g. which worker of several trained it)."""
    tag, current = job.tag, job.config_hash
    if job.previous is not None:
        if job.previous.get("config_hash") not in (None, current):
            log(f"{tag} WARNING: the stored results were produced with a different config (hash "
                f"{job.previous.get('config_hash')} != {current}); delete {repo_relpath(job.result_file)} to "
                "rerun this arm")
        log(f"{tag} done already ({repo_relpath(job.result_file)}), skipped")
        return ArmOutcome(job.arm.name, job.seed, "skipped", job.result_file)
    twin = identical_run(job.results_root, job.scale, job.seed, current, job.result_file)
    if twin is not None:
        write_json_atomic(job.result_file, {
            "table": job.table.key, "scale": job.scale, "arm": job.arm.name, "label": job.arm.label,
            "paper_row": job.arm.paper_row, "seed": job.seed, "config": repo_relpath(job.config_file),
            "opts": list(job.opts), "config_hash": current, SHARED_RUN: twin, "date": _now(),
        })
        log(f"{tag} same config (hash {current}) and seed as {twin}: its run is shared, not retrained -> "
            f"{repo_relpath(job.result_file)}")
        return ArmOutcome(job.arm.name, job.seed, "shared", job.result_file)
    missing = missing_pretrained_weights(job.weights)
    if missing:  # not a failure of the arm: it cannot start (and would fail in seconds) until this is built
        log(f"{tag} not trained: {missing}")
        return ArmOutcome(job.arm.name, job.seed, "missing")
    set_aside_stale_output(job.output_dir, current, tag, log)
    # --resume: continue from <OUTPUT_DIR>/last_checkpoint after a kill
    argv = _train_net_argv(job, num_gpus) + ["--resume"] + job.run_opts
    resumed = os.path.isfile(os.path.join(job.output_dir, "last_checkpoint"))
    started, load_start = time.time(), _load_average()
    rc, wall, log_path = _launch(job, argv, "training", runner, log)
    if rc != 0:
        commit, dirty = git_commit()
        write_json_atomic(job.failure_file, {
            "table": job.table.key, "scale": job.scale, "arm": job.arm.name, "seed": job.seed,
            "config_hash": current, "exit_status": rc, "error": last_error_line(log_path), "wall_s": wall,
            "command": display_command(argv), "commit": commit, "dirty": dirty, "date": _now(),
        })
        return ArmOutcome(job.arm.name, job.seed, "failed", log=log_path)
    record = _collect_record(job, job.run_opts, num_gpus, log)
    if record is None:
        return ArmOutcome(job.arm.name, job.seed, "failed", log=log_path)
    # started / finished (epoch seconds): when it ran, so the report can measure several workers' wall-clock
    record.update(wall_s=wall, command=display_command(argv), suite_command=suite_command, resumed=resumed,
                  started_unix=started, finished_unix=time.time(),
                  load_average={"start": load_start, "end": _load_average()}, **(record_extra or {}))
    clean_intermediate_checkpoints(job.output_dir)
    return _store(job, record, wall, log_path, log)


def evaluate_arm(job, *, num_gpus=1, suite_command=None, runner=run_command, log=print):
    """Re-evaluate the arm+seed's final checkpoint (if it was trained with the arm's current config) and store
    its results, keeping the training's wall time and command; never trains."""
    tag, previous = job.tag, job.previous
    checkpoint = os.path.join(job.output_dir, "model_final.pth")
    if config_stamp(job.output_dir) not in (None, job.config_hash):
        log(f"{tag} --eval-only: {repo_relpath(checkpoint)} was trained with another config; not evaluated "
            f"(rerun the arm without --eval-only)")
        return ArmOutcome(job.arm.name, job.seed, "skipped" if previous is not None else "missing",
                          job.result_file if previous is not None else None)
    if not os.path.isfile(checkpoint):
        if previous is not None:
            log(f"{tag} no checkpoint {repo_relpath(checkpoint)}; keeping the stored results")
            return ArmOutcome(job.arm.name, job.seed, "skipped", job.result_file)
        log(f"{tag} --eval-only: no checkpoint {repo_relpath(checkpoint)} and no results; missing")
        return ArmOutcome(job.arm.name, job.seed, "missing")
    run_opts = job.run_opts + ["MODEL.WEIGHTS", checkpoint]
    argv = _train_net_argv(job, num_gpus) + ["--eval-only"] + run_opts
    rc, wall, log_path = _launch(job, argv, "evaluating", runner, log)
    if rc != 0:
        return ArmOutcome(job.arm.name, job.seed, "failed", log=log_path)
    record = _collect_record(job, run_opts, num_gpus, log)
    if record is None:
        return ArmOutcome(job.arm.name, job.seed, "failed", log=log_path)
    record.update({k: previous[k] for k in ("wall_s", "command", "suite_command", "resumed", "started_unix",
                                            "finished_unix", "worker", "load_average") if previous and k in previous})
    record.update(eval_wall_s=wall, eval_command=display_command(argv), eval_suite_command=suite_command)
    if "command" not in record:  # evaluated from a checkpoint trained elsewhere
        record["command"] = None
    return _store(job, record, wall, log_path, log)


def run_arm(table, scale, arm, seed, *, eval_only=False, opts=(), num_gpus=1, configs_root=CONFIGS_ROOT,
            results_root=RESULTS_ROOT, output_root=OUTPUT_ROOT, suite_command=None, runner=None, log=print):
    """Train (or with eval_only re-evaluate) one arm+seed in a subprocess and store its results json."""
    job = prepare_arm(table, scale, arm, seed, opts=opts, configs_root=configs_root, results_root=results_root,
                      output_root=output_root, log=log)
    run_mode = evaluate_arm if eval_only else train_arm
    return run_mode(job, num_gpus=num_gpus, suite_command=suite_command, runner=runner or run_command, log=log)


def run_table(table, scale="cpu", seeds=DEFAULT_SEEDS, *, arms=None, eval_only=False, opts=(), num_gpus=1,
              configs_root=CONFIGS_ROOT, results_root=RESULTS_ROOT, output_root=OUTPUT_ROOT, suite_command=None,
              runner=None, log=print):
    """Run every arm (or only ``arms``, in the table's order) x seed of `table` (seed-major: all arms of seed 0
    first, so a partial suite is balanced). Returns the list of ArmOutcome; writes no report."""
    tab = get_table(table)
    check_arm_names(tab, scale, arms)
    outcomes = []
    for seed in seeds:
        for arm in tab.arms_for(scale):
            if arms and arm.name not in arms:
                continue
            outcomes.append(run_arm(
                tab.key, scale, arm.name, seed, eval_only=eval_only, opts=opts, num_gpus=num_gpus,
                configs_root=configs_root, results_root=results_root, output_root=output_root,
                suite_command=suite_command, runner=runner, log=log,
            ))
    return outcomes
