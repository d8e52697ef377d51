"""Nothing lost: atomic checkpoints, resume after SIGKILL, truncated checkpoints, non-finite losses."""
import argparse
import json
import os
import re
import resource
import signal
import subprocess
import sys
import time

import pytest
import torch

from test_train_net import DEFAULT_CONFIG, REPO, tiny_opts, train_net

sys.path.insert(0, REPO)

import train_net as train_net_module  # noqa: E402
from maskrcnn_plugin.checkpoint import AtomicDetectionCheckpointer, atomic_write  # noqa: E402


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "model.pth"
    target.write_bytes(b"old")

    def fail(f):
        f.write(b"partial")
        raise KeyboardInterrupt  # e.g. killed mid-write

    with pytest.raises(KeyboardInterrupt):
        atomic_write(str(target), fail)
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["model.pth"]  # no temporary file left behind
    atomic_write(str(target), lambda f: f.write(b"new"))
    assert target.read_bytes() == b"new"


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))


def test_save_writes_complete_file_and_tags_it(tmp_path):
    ckpt = AtomicDetectionCheckpointer(_model(), save_dir=str(tmp_path))
    ckpt.save("model_0000009", iteration=9)
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000009.pth"
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000009.pth"]
    other = _model()
    with torch.no_grad():
        for p in other.parameters():
            p.add_(1.0)
    extra = AtomicDetectionCheckpointer(other, save_dir=str(tmp_path)).resume_or_load("", resume=True)
    assert extra["iteration"] == 9
    for a, b in zip(_model().state_dict().values(), other.state_dict().values()):
        assert torch.equal(a, b)


def test_full_disk_during_save_names_the_file_and_keeps_the_previous_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(500, 500)
    ckpt = AtomicDetectionCheckpointer(model, save_dir=str(tmp_path))
    ckpt.save("model_0000001", iteration=1)
    previous = (tmp_path / "model_0000001.pth").read_bytes()
    # The disk "fills up" half-way through the next checkpoint: writes past the file-size limit fail (EFBIG)
    # as they would with ENOSPC.
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (len(previous) // 2, hard))
    try:
        with torch.no_grad():
            model.weight.add_(1.0)
        with pytest.raises(OSError, match=f"Could not write {tmp_path / 'model_0000002.pth'} .*disk full"):
            ckpt.save("model_0000002", iteration=2)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000001.pth"]
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"
    assert (tmp_path / "model_0000001.pth").read_bytes() == previous
    assert AtomicDetectionCheckpointer(_model(), save_dir=str(tmp_path)).has_checkpoint()


@pytest.mark.parametrize("keep", [0, 100, 0.5])
def test_truncated_checkpoint_error_names_the_file_and_what_to_do(tmp_path, keep):
    AtomicDetectionCheckpointer(_model(), save_dir=str(tmp_path)).save("model_0000003", iteration=3)
    path = tmp_path / "model_0000003.pth"
    data = path.read_bytes()
    path.write_bytes(data[: int(keep * len(data)) if isinstance(keep, float) else keep])
    with pytest.raises(RuntimeError) as e:
        AtomicDetectionCheckpointer(_model(), save_dir=str(tmp_path)).resume_or_load("", resume=True)
    msg = str(e.value)
    assert str(path) in msg and "truncated or corrupt" in msg and "last_checkpoint" in msg


def _setup_cfg(config_file, opts, resume=False):
    args = argparse.Namespace(config_file=config_file, opts=list(opts), resume=resume, eval_only=False,
                              num_gpus=1, num_machines=1, machine_rank=0, dist_url="auto")
    return train_net_module.setup(args)


def test_sigkill_then_resume_continues_from_last_checkpoint(tmp_path):
    # A small lr: 40 steps of batch 2 at the default 0.02 can diverge on 8 images.
    opts = tiny_opts(tmp_path, max_iter=40) + ["SOLVER.CHECKPOINT_PERIOD", "4", "SOLVER.BASE_LR", "0.002"]
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, os.path.join(REPO, "train_net.py"), "--config-file", DEFAULT_CONFIG,
                             *opts], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    tag = out / "last_checkpoint"
    deadline = time.time() + 400
    try:
        while not (tag.exists() and tag.read_text() == "model_0000003.pth"):
            assert proc.poll() is None, "training ended before its first checkpoint"
            assert time.time() < deadline, "no checkpoint within 400 s"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not (out / "model_final.pth").exists(), "killed too late: the run had finished"
    last = tag.read_text()
    saved = torch.load(out / last, map_location="cpu", weights_only=False)

    # The restarted trainer starts right after the checkpoint's iteration with exactly its weights.
    cfg = _setup_cfg(DEFAULT_CONFIG, opts, resume=True)
    trainer = train_net_module.Trainer(cfg)
    trainer.resume_or_load(resume=True)
    assert trainer.start_iter == saved["iteration"] + 1
    state = trainer.model.state_dict()
    assert state.keys() == saved["model"].keys()
    for k, v in saved["model"].items():
        assert torch.equal(state[k], v), k
    del trainer

    train_net("--config-file", DEFAULT_CONFIG, "--resume", *opts)
    iters = [json.loads(line)["iteration"] for line in (out / "metrics.json").read_text().splitlines()
             if '"iteration"' in line]
    assert 39 in iters and any(i > saved["iteration"] for i in iters)
    assert (out / "model_final.pth").exists() and (out / "eval_results.json").exists()
    assert tag.read_text() == "model_final.pth"


def test_non_finite_loss_stops_training_naming_term_and_iteration(tmp_path):
    opts = tiny_opts(tmp_path, max_iter=8) + ["SOLVER.CHECKPOINT_PERIOD", "2"]
    cfg = _setup_cfg(DEFAULT_CONFIG, opts)
    trainer = train_net_module.Trainer(cfg)
    trainer.resume_or_load(resume=False)
    model = trainer._trainer.model
    forward = model.forward

    def forward_with_nan_at_iteration_5(*args, **kwargs):
        losses = forward(*args, **kwargs)
        if trainer.iter == 5:
            losses["loss_mask"] = losses["loss_mask"] * float("nan")
        return losses

    model.forward = forward_with_nan_at_iteration_5
    with pytest.raises(FloatingPointError) as e:
        trainer.train()
    assert "iteration=5" in str(e.value) and re.search(r"'loss_mask': (np\.float64\()?nan", str(e.value))
    out = tmp_path / "out"
    assert (out / "last_checkpoint").read_text() == "model_0000003.pth"
    good = torch.load(out / "model_0000003.pth", map_location="cpu", weights_only=False)
    assert all(torch.isfinite(v).all() for v in good["model"].values() if v.is_floating_point())
    fresh = train_net_module.Trainer.build_model(cfg)
    AtomicDetectionCheckpointer(fresh, save_dir=str(out)).resume_or_load("", resume=True)
