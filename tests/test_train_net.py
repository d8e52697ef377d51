"""train_net.py end to end: train + evaluate (bbox, segm) on a tiny generated dataset, then --eval-only from
the checkpoint. The full-length default run is marked slow."""
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG = os.path.join(REPO, "configs", "shapes", "mask_rcnn_R18_FPN_shapes.yaml")


def train_net(*args, timeout=600):
    res = subprocess.run(
        [sys.executable, os.path.join(REPO, "train_net.py"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    return res


def tiny_opts(tmp_path, max_iter=3):
    return [
        "DATASETS.SHAPES.ROOT", str(tmp_path / "data"),
        "DATASETS.TRAIN", "('shapes_smoketrain_s5_n8_px128',)",
        "DATASETS.TEST", "('shapes_smokeval_s6_n4_px128',)",
        "INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN", "128",
        "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "128",
        "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", str(max_iter), "SOLVER.STEPS", "()",
        "SOLVER.WARMUP_ITERS", "1", "DATALOADER.NUM_WORKERS", "0", "TEST.VIS_NUM_IMAGES", "2",
        "TEST.VIS_SCORE_THRESH", "0.0", "OUTPUT_DIR", str(tmp_path / "out"),
    ]


def test_train_then_eval_only_smoke(tmp_path):
    train_net("--config-file", DEFAULT_CONFIG, *tiny_opts(tmp_path))
    out = tmp_path / "out"
    results = json.loads((out / "eval_results.json").read_text())
    assert set(results) == {"bbox", "segm"}
    assert all(k in results["segm"] for k in ("AP", "AP50", "AP75"))
    assert (out / "model_final.pth").exists() and (out / "metrics.json").exists()
    assert any(p.name.startswith("events.out.tfevents") for p in out.iterdir())
    assert len(list((out / "vis" / "shapes_smokeval_s6_n4_px128").glob("*.png"))) == 2

    eval_out = tmp_path / "eval"
    opts = tiny_opts(tmp_path)
    opts[opts.index("OUTPUT_DIR") + 1] = str(eval_out)
    res = train_net("--config-file", DEFAULT_CONFIG, "--eval-only", "MODEL.WEIGHTS", str(out / "model_final.pth"), *opts)
    assert "copypaste: Task: segm" in res.stdout + res.stderr
    assert json.loads((eval_out / "eval_results.json").read_text()) == results


def test_eval_only_with_missing_weights_names_the_file(tmp_path):
    missing = tmp_path / "nope.pth"
    res = subprocess.run(
        [sys.executable, os.path.join(REPO, "train_net.py"), "--config-file", DEFAULT_CONFIG, "--eval-only",
         "MODEL.WEIGHTS", str(missing), *tiny_opts(tmp_path)],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )
    assert res.returncode != 0
    assert "MODEL.WEIGHTS" in res.stderr and str(missing) in res.stderr


@pytest.mark.slow
def test_default_cpu_model_full_run(tmp_path):
    """The README's main job at full length (~15 min on 2 cores): mask AP well above chance."""
    train_net("--config-file", DEFAULT_CONFIG, "OUTPUT_DIR", str(tmp_path / "out"), timeout=3600)
    results = json.loads((tmp_path / "out" / "eval_results.json").read_text())
    assert results["segm"]["AP"] > 10 and results["bbox"]["AP"] > 10


@pytest.mark.parametrize("content", [b"", b"not a png at all", None])
def test_corrupt_or_missing_image_error_names_the_file(tmp_path, content):

    import maskrcnn_plugin
    from maskrcnn_plugin.data.mapper import CheckedDatasetMapper

    cfg = maskrcnn_plugin.get_plugin_cfg()
    cfg.merge_from_file(DEFAULT_CONFIG)
    path = tmp_path / "broken.png"
    if content is not None:
        path.write_bytes(content)
    mapper = CheckedDatasetMapper(cfg, is_train=True)
    with pytest.raises(OSError) as e:
        mapper({"file_name": str(path), "image_id": 7, "height": 64, "width": 64, "annotations": []})
    assert str(path) in str(e.value) and "image_id=7" in str(e.value)


# Records GOMP_SPINCOUNT as it is when torch is first imported (libgomp reads it then), imports train_net, and
# prints that value and the one after.
_SPY_ON_TORCH_IMPORT = """
import builtins, os, sys
sys.path.insert(0, os.getcwd())
seen, real_import = [], builtins.__import__
def spy(name, *args, **kwargs):
    if name == "torch" and not seen:
        seen.append(os.environ.get("GOMP_SPINCOUNT"))
    return real_import(name, *args, **kwargs)
builtins.__import__ = spy
import train_net
print(repr(seen[0]), repr(os.environ.get("GOMP_SPINCOUNT")))
"""


@pytest.mark.parametrize("user_env,expected", [({}, "10000"), ({"GOMP_SPINCOUNT": "5"}, "5"),
                                               ({"OMP_WAIT_POLICY": "PASSIVE"}, None)])
def test_openmp_spin_default_is_set_before_torch_loads_and_never_over_the_users(user_env, expected):
    """train_net.py's short OpenMP spin (docs/performance.md, contention) is in the environment before torch is
    first imported; a user's own GOMP_SPINCOUNT or OMP_WAIT_POLICY is left as it is."""
    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    env.update(user_env)
    out = subprocess.run([sys.executable, "-c", _SPY_ON_TORCH_IMPORT], env=env, cwd=REPO, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-2:] == [repr(expected)] * 2
