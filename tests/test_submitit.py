"""SLURM through submitit (issue #26; ablations/slurm.py, tools/submit_slurm.py).

submitit's local executor runs the jobs as processes of this machine through the same code path as on SLURM
(pickled task, USR2 on preemption, checkpoint, requeue): a 2-task ablation array of the fake table of
tests/test_ablations.py, one task preempted mid-run, and a 2-rank training. What sbatch is given is checked with
stand-in `srun` / `sbatch` commands that record it.
"""
import os
import signal
import sys
import time

import pytest

from test_shards import TESTS, TracedFake, _trace, fake_table, write_fake_table
from test_train_net import DEFAULT_CONFIG, REPO, tiny_opts

sys.path.insert(0, REPO)

from ablations import slurm  # noqa: E402
from ablations.tables import TABLES  # noqa: E402


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    """`srun` and `sbatch` stand-ins on PATH; sbatch keeps each submission file in <tmp>/sbatch/."""
    bin_dir, kept = tmp_path / "bin", tmp_path / "sbatch"
    bin_dir.mkdir()
    kept.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "sbatch").write_text(f'#!/bin/sh\nn=$(ls {kept} | wc -l)\ncp "$1" {kept}/$n.sh\n'
                                    'echo "Submitted batch job 4242"\n')
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return kept


def test_sbatch_gets_nodes_gpus_requeue_and_the_usr2_warning(fake_slurm, tmp_path, monkeypatch):
    train_args = ["--config-file", DEFAULT_CONFIG, "SOLVER.CHECKPOINT_PERIOD", "500"]
    job = slurm.submit_training(train_args, folder=str(tmp_path / "sub"), nodes=2, tasks_per_node=8, gpus_per_node=8,
                                partition="gpu", time_min=slurm.parse_time_min("72:00:00"))
    assert job.job_id == "4242"
    text = (fake_slurm / "0.sh").read_text()
    for line in ("--nodes=2", "--ntasks-per-node=8", "--gpus-per-node=8", "--partition=gpu", "--time=4320",
                 "--requeue", "--signal=USR2@120"):
        assert f"#SBATCH {line}\n" in text, line
    assert "srun --unbuffered" in text and "submitit.core._submit" in text
    # what runs there, and what runs after a requeue: the same training with --resume
    task = job.submission().function
    assert isinstance(task, slurm.TrainingTask) and task.train_args == train_args
    assert task.checkpoint().function.train_args == ["--resume", *train_args]
    # the ablation grid: one array task per missing arm+seed
    monkeypatch.setitem(TABLES, "fake", fake_table())
    roots = write_fake_table(tmp_path)
    jobs = slurm.submit_ablation_array(["fake"], "cpu", [0], folder=str(tmp_path / "sub"), gpus_per_node=1,
                                       partition="gpu", time_min=240, log=lambda *a: None, **roots)
    assert [j.job_id for j in jobs] == ["4242_0", "4242_1"]
    text = (fake_slurm / "1.sh").read_text()
    assert "#SBATCH --array=0-1%2\n" in text and "#SBATCH --gpus-per-node=1\n" in text
    assert [j.submission().function.settings.units[j.submission().function.index].key for j in jobs] == [
        ("fake", "a", 0), ("fake", "b", 0)]


def test_bad_submissions_name_the_problem(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no srun
    with pytest.raises(ValueError, match="no srun on this machine's PATH"):
        slurm.make_executor(str(tmp_path), cluster="slurm")
    with pytest.raises(ValueError, match="the local executor runs on this machine only"):
        slurm.make_executor(str(tmp_path), cluster="local", nodes=2)
    with pytest.raises(ValueError, match="--num-gpus 2 --dist-url tcp://h:1: the job's processes come from --nodes"):
        slurm.check_training_args(["--num-gpus", "2", "--dist-url", "tcp://h:1", "--config-file", DEFAULT_CONFIG])
    with pytest.raises(ValueError, match="--config-file 'nope.yaml': no such file"):
        slurm.check_training_args(["--config-file", "nope.yaml"])
    for text, minutes in (("90", 90), ("1:30:00", 90), ("10:30", 11), ("1-00:00", 1440)):
        assert slurm.parse_time_min(text) == minutes
    with pytest.raises(ValueError, match="expected minutes, HH:MM:SS"):
        slurm.parse_time_min("soon")


def _wait_for(condition, what, timeout=240):
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_local_array_runs_two_arms_and_a_preempted_task_requeues_and_resumes(tmp_path, monkeypatch):
    """A 2-task array (arms a and b, seed 0) on submitit's local executor. Task a gets USR2 in the middle of its
    run (what SLURM sends before preempting): submitit checkpoints and requeues it, and the rerun resumes the arm
    from its checkpoint (the runner's --resume); the task that finishes last rebuilds the report."""
    monkeypatch.setitem(TABLES, "fake", fake_table())
    monkeypatch.setenv("PYTHONPATH", TESTS)  # the tasks import the stand-in for train_net.py from the tests
    roots, trace = write_fake_table(tmp_path), str(tmp_path / "trace")
    jobs = slurm.submit_ablation_array(["fake"], "cpu", [0], folder=str(tmp_path / "submitit"), cluster="local",
                                       time_min=30, runner=TracedFake(trace, delay=0.2, hang=("a", 0)),
                                       log=lambda *a: None, **roots)
    assert len(jobs) == 2
    _wait_for(lambda: any(t[:3] == ["start", "a", "0"] for t in _trace(trace)), "arm a to start")
    first_pid = int(next(t[3] for t in _trace(trace) if t[:3] == ["start", "a", "0"]))
    os.kill(first_pid, signal.SIGUSR2)  # preemption warning -> checkpoint -> requeue
    outcomes = [job.result() for job in jobs]  # waits
    assert [[(o["arm"], o["status"]) for o in out] for out in outcomes] == [[("a", "done")], [("b", "done")]]
    starts = [int(t[3]) for t in _trace(trace) if t[:3] == ["start", "a", "0"]]
    assert len(starts) == 2 and starts[0] == first_pid != starts[1]
    assert "Requeued job" in (jobs[0].stderr() or "") + (jobs[0].stdout() or "")
    from ablations.records import load_results

    results = load_results(roots["results_root"])["cpu"]["fake"]
    assert results["a"][0]["resumed"] is True and results["b"][0]["resumed"] is False
    assert results["a"][0]["worker"]["kind"] == "submitit" and results["a"][0]["worker"]["n"] == 2
    assert not list((tmp_path / "results").rglob("*.claim.*"))
    report = (tmp_path / "docs" / "ablations.md").read_text()
    assert "Measured with a submitit job array of 2 tasks: 2 of these runs took" in report


def test_local_training_job_runs_two_gloo_ranks(tmp_path):
    """tools/submit_slurm.py train --cluster local --tasks-per-node 2: two ranks joined through env:// (submitit's
    TorchDistributedEnvironment -> launch_from_env) train and evaluate."""
    import subprocess

    opts = tiny_opts(tmp_path, max_iter=2)
    opts[opts.index("TEST.VIS_NUM_IMAGES") + 1] = "0"
    res = subprocess.run(
        [sys.executable, os.path.join(REPO, "tools", "submit_slurm.py"), "train", "--cluster", "local",
         "--tasks-per-node", "2", "--time", "20", "--folder", str(tmp_path / "submitit"), "--wait", "--",
         "--config-file", DEFAULT_CONFIG, *opts], capture_output=True, text=True, timeout=600, cwd=REPO)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "submitted 2 process(es)" in res.stdout
    out = tmp_path / "out"
    assert (out / "model_final.pth").exists() and (out / "eval_results.json").exists()
    assert "Rank of current process: 0. World size: 2" in (out / "log.txt").read_text()
