"""train_net.py under torchrun (env://): the processes torchrun starts train like detectron2's launch with the
same world size (issue #26), and an incomplete or contradictory torchrun environment is a clear error."""
import argparse
import json
import os
import subprocess
import sys

import pytest
import torch

from test_train_net import DEFAULT_CONFIG, REPO, tiny_opts

sys.path.insert(0, REPO)

import train_net  # noqa: E402
from maskrcnn_plugin.launch import TORCHRUN_VARIABLES, launch, torchrun_env  # noqa: E402

FULL = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "node0",
        "MASTER_PORT": "29500"}


def test_torchrun_env_reads_torchruns_variables():
    assert torchrun_env({}) is None and torchrun_env({"MASTER_PORT": "1"}) is None
    env = torchrun_env(FULL)
    assert (env.rank, env.world_size, env.local_rank, env.local_world_size) == (3, 4, 1, 2)
    assert (env.machine_rank, env.num_machines, env.master_addr, env.master_port) == (1, 2, "node0", 29500)
    assert torchrun_env({**FULL, "GROUP_RANK": "1"}).machine_rank == 1


@pytest.mark.parametrize("change,message", [
    ({"MASTER_PORT": None, "LOCAL_WORLD_SIZE": None}, "but not LOCAL_WORLD_SIZE, MASTER_PORT"),
    ({"RANK": "4"}, r"RANK=4 is not in \[0, WORLD_SIZE=4\)"),
    ({"LOCAL_RANK": "2"}, r"LOCAL_RANK=2 is not in \[0, LOCAL_WORLD_SIZE=2\)"),
    ({"WORLD_SIZE": "5", "RANK": "1"}, "WORLD_SIZE=5 is not a multiple of LOCAL_WORLD_SIZE=2"),
    ({"GROUP_RANK": "0"}, "ranks of a machine"),
    ({"RANK": "x"}, "RANK='x' is not an integer"),
])
def test_an_inconsistent_torchrun_environment_names_the_problem(change, message):
    environ = {k: v for k, v in {**FULL, **change}.items() if v is not None}
    with pytest.raises(ValueError, match=message):
        torchrun_env(environ)


def test_train_net_refuses_launch_flags_under_torchrun(monkeypatch):
    parser = train_net.default_argument_parser()
    for name in TORCHRUN_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert train_net.started_by_torchrun(parser.parse_args(["--num-gpus", "2"]), parser) is False
    with pytest.raises(ValueError, match="--dist-url env:// needs the variables torchrun sets"):
        train_net.started_by_torchrun(parser.parse_args(["--dist-url", "env://"]), parser)
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(ValueError, match="but not WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR"):
        train_net.started_by_torchrun(parser.parse_args([]), parser)
    for name, value in {**FULL, "RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(name, value)
    assert train_net.started_by_torchrun(parser.parse_args([]), parser) is True
    assert train_net.started_by_torchrun(parser.parse_args(["--dist-url", "env://"]), parser) is True
    with pytest.raises(ValueError, match="--num-gpus 2 --dist-url tcp://h:1: torchrun started the processes"):
        train_net.started_by_torchrun(parser.parse_args(["--num-gpus", "2", "--dist-url", "tcp://h:1"]), parser)
    with pytest.raises(ValueError, match="call launch_from_env"):
        launch(print, 2, dist_url="env://")


def _run(cmd):
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_torchrun_2_processes_train_like_launch_with_2_processes(tmp_path):
    """`torchrun --nproc-per-node 2 train_net.py` and `train_net.py --num-gpus 2` (maskrcnn_plugin.launch: gloo
    processes, as detectron2's launch starts them on GPUs) on the same config and data: the same world size,
    ranks, per-rank batches and seeds, so the same losses and bit-identical final weights and evaluation."""
    from maskrcnn_plugin.data import prepare_dataset, register_datasets_from_cfg

    opts = {name: tiny_opts(tmp_path, max_iter=3) for name in ("launch", "torchrun")}
    for name, o in opts.items():
        o[o.index("OUTPUT_DIR") + 1] = str(tmp_path / name)
        o[o.index("TEST.VIS_NUM_IMAGES") + 1] = "0"
    cfg = train_net.load_cfg(argparse.Namespace(config_file=DEFAULT_CONFIG, opts=opts["launch"]))
    register_datasets_from_cfg(cfg)
    for dataset in (*cfg.DATASETS.TRAIN, *cfg.DATASETS.TEST):
        prepare_dataset(dataset)  # generated once, before the processes start

    train = [os.path.join(REPO, "train_net.py"), "--config-file", DEFAULT_CONFIG]
    procs = {
        "launch": _run([sys.executable, *train, "--num-gpus", "2", *opts["launch"]]),
        # `torchrun` is this module's console script
        "torchrun": _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          *train, *opts["torchrun"]]),
    }
    outs = {name: p.communicate(timeout=600)[0] for name, p in procs.items()}
    for name, p in procs.items():
        assert p.returncode == 0, f"{name}:\n{outs[name][-6000:]}"
    assert "torch.distributed.run" not in outs["launch"]

    def losses(name):
        lines = [json.loads(x) for x in (tmp_path / name / "metrics.json").read_text().splitlines()]
        return [x["total_loss"] for x in lines if "total_loss" in x]

    assert losses("launch") and losses("torchrun") == losses("launch")
    a = torch.load(tmp_path / "launch" / "model_final.pth", weights_only=False)
    b = torch.load(tmp_path / "torchrun" / "model_final.pth", weights_only=False)
    assert a["iteration"] == b["iteration"] == 2
    assert a["model"].keys() == b["model"].keys()
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    assert json.loads((tmp_path / "torchrun" / "eval_results.json").read_text()) == json.loads(
        (tmp_path / "launch" / "eval_results.json").read_text())
    log = (tmp_path / "torchrun" / "log.txt").read_text()
    assert "Rank of current process: 0. World size: 2" in log
