"""Exact resume: a run killed at any moment (mid-save included) and resumed with --resume ends with the very
weights and evaluation of the uninterrupted run; the data stream is a function of the iteration alone."""
import glob
import json
import os
import random
import signal
import subprocess
import sys
import time

import itertools

import numpy as np
import pytest
import torch
from detectron2.data.samplers import TrainingSampler

from test_train_net import DEFAULT_CONFIG, REPO, tiny_opts, train_net

sys.path.insert(0, REPO)

import train_net as train_net_module  # noqa: E402
from maskrcnn_plugin.checkpoint import claim_output_dir  # noqa: E402
from maskrcnn_plugin.data import ResumableTrainLoader  # noqa: E402


def _augmenting_mapper(d):
    # the mapper's randomness as detectron2's augmentations draw it: numpy, random and torch global RNGs
    return (d["i"], float(np.random.rand()), random.random(), float(torch.rand(())))


def _loader(num_workers):
    dicts = [{"i": i, "width": 4 + i % 3, "height": 5} for i in range(7)]  # two aspect-ratio groups
    return ResumableTrainLoader(dicts, _augmenting_mapper, lambda seed: TrainingSampler(7, seed=seed), 2,
                                seed=11, num_workers=num_workers)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_data_stream_resumes_at_the_batch_after_the_checkpoint(num_workers):
    full = list(itertools.islice(iter(_loader(0)), 9))
    assert all(len({x[0] % 3 == 2 for x in b}) == 1 for b in full)  # grouped by aspect ratio (w > h)
    stopped = _loader(num_workers)
    head = list(itertools.islice(iter(stopped), 4))
    state = stopped.state_dict()
    assert head == full[:4] and state == {"seed": 11, "batches_consumed": 4}
    torch.manual_seed(123)  # the trainer's RNG state must not matter, nor be touched (no workers: same process)
    before = torch.get_rng_state()
    resumed = _loader(num_workers)
    resumed.load_state_dict(state)
    assert list(itertools.islice(iter(resumed), 5)) == full[4:]
    assert torch.equal(torch.get_rng_state(), before)


def _opts(tmp_path, out):
    # 2 workers: the stream must not depend on which worker maps which image
    return tiny_opts(tmp_path, max_iter=14) + [
        "SOLVER.CHECKPOINT_PERIOD", "3", "SOLVER.BASE_LR", "0.002", "SEED", "7",
        "DATALOADER.NUM_WORKERS", "2", "INPUT.RANDOM_FLIP", "horizontal", "OUTPUT_DIR", str(out),
    ]


def _start(opts, resume, log):
    cmd = [sys.executable, os.path.join(REPO, "train_net.py"), "--config-file", DEFAULT_CONFIG, *opts]
    if resume:
        cmd.insert(2, "--resume")
    with open(log, "w") as f:
        return subprocess.Popen(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT)


def _wait_for(condition, proc, what, timeout=300):
    deadline = time.time() + timeout
    while not condition():
        if proc.poll() is not None:
            return False  # finished before the kill point
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.002)
    return True


def _temp_files(out):
    return glob.glob(os.path.join(out, ".*.tmp-*"))


def _training_started(out, resumes):
    log = os.path.join(out, "log.txt")
    return lambda: os.path.exists(log) and open(log).read().count("Starting training from iteration") > resumes


def _final_state(out):
    return torch.load(os.path.join(out, "model_final.pth"), map_location="cpu", weights_only=False)


def test_killed_three_times_and_resumed_equals_uninterrupted_run(tmp_path):
    ref_out, out = tmp_path / "ref", tmp_path / "killed"
    train_net("--config-file", DEFAULT_CONFIG, *_opts(tmp_path, ref_out))

    rng = random.Random(0)
    kills = []
    for attempt in range(3):
        stale = set(_temp_files(out))
        log = tmp_path / f"attempt{attempt}.log"
        proc = _start(_opts(tmp_path, out), resume=attempt > 0, log=log)
        try:
            if not _wait_for(_training_started(out, attempt), proc, "training to start"):
                assert proc.returncode == 0, log.read_text()[-3000:]
                break
            if attempt == 1:  # during a checkpoint write
                reached = _wait_for(lambda: set(_temp_files(out)) - stale, proc, "a checkpoint write")
            else:  # at a random moment of training
                time.sleep(rng.uniform(0.5, 3.0))
                reached = proc.poll() is None
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        if not reached:
            break
        tag = out / "last_checkpoint"
        kills.append((attempt, tag.read_text() if tag.exists() else None, bool(set(_temp_files(out)) - stale)))
    assert len(kills) >= 2, f"the run finished before it could be killed enough: {kills}"
    assert kills[1][2], "the second kill was meant to land during a checkpoint write"
    train_net("--config-file", DEFAULT_CONFIG, "--resume", *_opts(tmp_path, out))

    assert _temp_files(out) == [], "temporary files of the interrupted save are left"
    ref, got = _final_state(ref_out), _final_state(out)
    assert ref["iteration"] == got["iteration"] == 13
    assert ref["model"].keys() == got["model"].keys()
    differ = [k for k in ref["model"] if not torch.equal(ref["model"][k], got["model"][k])]
    assert differ == [], f"{len(differ)} tensors differ after kills {kills}, e.g. {differ[:3]}"
    assert json.loads((ref_out / "eval_results.json").read_text()) == json.loads((out / "eval_results.json").read_text())


def test_second_training_into_the_same_output_dir_is_refused(tmp_path):
    out = tmp_path / "out"
    holder = subprocess.Popen(  # holds the directory as a running train_net.py does
        [sys.executable, "-c", "import sys; from maskrcnn_plugin.checkpoint import claim_output_dir as c; "
         f"lock = c({str(out)!r}); print('held', flush=True); sys.stdin.read()"],
        cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        args = train_net_module.default_argument_parser().parse_args(
            ["--config-file", DEFAULT_CONFIG, *tiny_opts(tmp_path), "OUTPUT_DIR", str(out)]
        )
        with pytest.raises(RuntimeError, match=f"OUTPUT_DIR {out} is in use by a running training \\(pid {holder.pid}\\)"):
            train_net_module.main(args)
        assert not (out / "config.yaml").exists(), "the refused run must not write into the directory"
    finally:
        holder.kill()
        holder.wait()
    (out / ".model_0000009.pth.tmp-deadbeef").write_bytes(b"partial")
    claim_output_dir(str(out)).close()  # the holder is gone: claiming works and removes what a kill left
    assert _temp_files(out) == []
