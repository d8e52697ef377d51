"""The stored records of the ablation runs: result / failure paths, config hash, git commit, json writes, loading.

An arm+seed's results are ``results/ablations/<scale>/<table>/<arm>/seed<s>.json``; a failed training run is
``failed_seed<s>.json`` beside them. A record whose config hash and seed equal another table's trained run
names that run (``same_run_as``) instead of holding metrics of its own.
"""
import glob
import hashlib
import json
import os
import re
import shlex
import subprocess
import sys

from maskrcnn_plugin.checkpoint import atomic_open
from maskrcnn_plugin.pretrained import PREFIX as PRETRAINED_PREFIX
from maskrcnn_plugin.pretrained import pinned, resolve

from .paths import REPO_ROOT, RESULTS_ROOT, repo_relpath

LOG_NAME = "ablation_subprocess.log"  # the arm's train_net.py output, in its output directory
# Results key of an arm+seed whose config (hash) and seed equal another table's stored run, e.g. Table 4's
# keypoint-only arm and Table 5's RoIAlign arm: it names that run ("<table>/<arm>/seed<s>.json" under the
# scale's results dir) instead of training the same model twice; its metrics are read from there.
SHARED_RUN = "same_run_as"


def result_path(table, scale, arm, seed, results_root=RESULTS_ROOT):
    return os.path.join(results_root, scale, table, arm, f"seed{seed}.json")


def failure_path(table, scale, arm, seed, results_root=RESULTS_ROOT):
    """Where a failed training run is recorded (beside the results, committed with them, so the report can
    say which seeds are missing because training failed rather than because they were not run yet)."""
    return os.path.join(results_root, scale, table, arm, f"failed_seed{seed}.json")


def last_error_line(log_path):
    """The last `SomethingError: ...` line of a subprocess log, or None."""
    last = None
    try:
        with open(log_path, errors="replace") as f:
            for line in f:
                if re.match(r"^[A-Za-z_.]*(Error|Exception)\b", line):
                    last = line.strip()
    except OSError:
        return None
    return last


def display_command(argv):
    """`argv` as recorded in results: "python" for the interpreter, repository-relative paths, shell quoting."""
    out = []
    for a in argv:
        a = str(a)
        if a == sys.executable:
            a = "python"
        elif os.path.isabs(a):
            a = repo_relpath(a)
        out.append(a)
    return " ".join(_quote(a) for a in out)


def _quote(arg):
    """shlex.quote, but "('a',)" rather than '('"'"'a'"'"',)' for the tuple-valued config overrides."""
    q = shlex.quote(arg)
    if "'" in arg and not any(c in arg for c in '"$`\\!'):
        return f'"{arg}"'
    return q


def git_commit():
    """(commit sha, dirty) of the repository; (None, None) outside git.

    Dirty means a tracked file differs from the commit, except under results/ and docs/: every finished arm
    rewrites the report and summary there, which would otherwise mark each later arm of a suite dirty."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                             timeout=30).stdout.strip() or None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                ":(exclude)results", ":(exclude)docs"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=30).stdout.strip() != ""
        return sha, (dirty if sha else None)
    except (OSError, subprocess.SubprocessError):
        return None, None


def torch_threads():
    """torch's intra-op thread count (recorded with the wall time), or None without torch."""
    try:
        import torch

        return torch.get_num_threads()
    except ImportError:  # pragma: no cover
        return None


def load_arm_cfg(config_file, opts=()):
    """The arm's full config (plugin keys + yaml + opts) as train_net.py builds it, not frozen."""
    from maskrcnn_plugin.config import get_plugin_cfg

    cfg = get_plugin_cfg()
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts))
    return cfg


# Keys that change how fast the same function is computed, not what (outputs equal to float32 rounding; see
# maskrcnn_plugin/config.py): a run is the same experiment with or without them.
SPEED_ONLY_KEYS = (("TEST", "FOLD_BATCHNORM"), ("TEST", "CHANNELS_LAST"), ("SOLVER", "CHANNELS_LAST"))


def config_hash(cfg):
    """Short hash of the full config except OUTPUT_DIR, SEED and SPEED_ONLY_KEYS (equal for every seed of an
    unchanged arm), with ``shapes-pretrained://R-<depth>`` weights pinned to the recipe they name now: a changed
    pre-training recipe makes new backbones, so the arms trained from the old ones are not "done" any more."""
    c = cfg.clone()
    c.defrost()
    c.OUTPUT_DIR, c.SEED = "", -1
    for section, key in SPEED_ONLY_KEYS:
        c[section].pop(key, None)
    c.MODEL.WEIGHTS = pinned(c.MODEL.WEIGHTS)
    return hashlib.sha1(c.dump().encode()).hexdigest()[:12]


def missing_pretrained_weights(weights):
    """Why `weights` (MODEL.WEIGHTS) cannot be loaded when it is a ``shapes-pretrained://`` backbone that is not
    built yet (the message names the command that builds it), else None; other paths are not checked here."""
    if not (isinstance(weights, str) and weights.startswith(PRETRAINED_PREFIX)):
        return None
    try:
        resolve(weights)
    except (FileNotFoundError, ValueError) as e:
        return str(e)
    return None


def write_json_atomic(path, data):
    """Write `data` as indented json; a kill never leaves a half-written file that would count as "completed"."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with atomic_open(path, "w") as f:  # a temporary file of its own per writer: workers may write one file at once
        json.dump(data, f, indent=2, sort_keys=False)
        f.write("\n")


# ------------------------------------------------------------------------------------------------------------
# Shared runs: an arm+seed whose config equals another table's stored run
# ------------------------------------------------------------------------------------------------------------
def is_trained_run(rec, seed, expected_hash):
    """Whether `rec` is a trained (not shared) run of this seed and config hash."""
    return SHARED_RUN not in rec and rec.get("seed") == seed and rec.get("config_hash") == expected_hash


def identical_run(results_root, scale, seed, current_hash, exclude):
    """The stored run ("<table>/<arm>/seed<s>.json") of this scale with the same seed and config hash, or None."""
    sdir = os.path.join(results_root, scale)
    for path in sorted(glob.glob(os.path.join(sdir, "*", "*", f"seed{seed}.json"))):
        if os.path.abspath(path) == os.path.abspath(exclude):
            continue
        with open(path) as f:
            if is_trained_run(json.load(f), seed, current_hash):
                return os.path.relpath(path, sdir).replace(os.sep, "/")
    return None


def shared_run_valid(results_root, scale, record):
    """Whether the run that `record` shares still exists with the same config hash and seed."""
    path = os.path.join(results_root, scale, *record[SHARED_RUN].split("/"))
    if not os.path.isfile(path):
        return False
    with open(path) as f:
        return is_trained_run(json.load(f), record.get("seed"), record.get("config_hash"))


# ------------------------------------------------------------------------------------------------------------
# Loading every stored record (for the report)
# ------------------------------------------------------------------------------------------------------------
def load_results(results_root=RESULTS_ROOT):
    """{scale: {table: {arm: {seed: record}}}} of every stored results json."""
    out = {}
    if not os.path.isdir(results_root):
        return out
    for scale in sorted(os.listdir(results_root)):
        sdir = os.path.join(results_root, scale)
        if not os.path.isdir(sdir):
            continue
        for table in sorted(os.listdir(sdir)):
            tdir = os.path.join(sdir, table)
            if not os.path.isdir(tdir):
                continue
            for arm in sorted(os.listdir(tdir)):
                adir = os.path.join(tdir, arm)
                if not os.path.isdir(adir):
                    continue
                for name in sorted(os.listdir(adir)):
                    if name.startswith("seed") and name.endswith(".json"):
                        with open(os.path.join(adir, name)) as f:
                            rec = json.load(f)
                        out.setdefault(scale, {}).setdefault(table, {}).setdefault(arm, {})[int(rec["seed"])] = rec
    for scale, tables in out.items():  # a shared run reads its metrics, wall time, commit from the run it names
        for arms in tables.values():
            for recs in arms.values():
                for seed, rec in list(recs.items()):
                    if SHARED_RUN in rec:
                        table, arm = rec[SHARED_RUN].split("/")[:2]
                        source = tables.get(table, {}).get(arm, {}).get(seed, {})
                        if is_trained_run(source, seed, rec.get("config_hash")):
                            recs[seed] = {**source, **rec}
                        else:
                            del recs[seed]  # the runner retrains it
    return out


def load_failures(results_root=RESULTS_ROOT):
    """{scale: {table: {arm: {seed: record}}}} of the recorded failed training runs (see failure_path)."""
    out = {}
    for path in sorted(glob.glob(os.path.join(results_root, "*", "*", "*", "failed_seed*.json"))):
        with open(path) as f:
            rec = json.load(f)
        out.setdefault(rec["scale"], {}).setdefault(rec["table"], {}).setdefault(rec["arm"], {})[int(rec["seed"])] = rec
    return out
