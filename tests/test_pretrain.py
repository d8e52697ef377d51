"""Backbone pre-training, the stand-in for the paper's ImageNet initialisation (issue #25, part 2): the generated
classification set (maskrcnn_plugin/data/pretrain_classes.py), the recipes, cache and ``shapes-pretrained://``
weights (maskrcnn_plugin/pretrained.py), the pre-training run with its exact resume (tools/pretrain_backbone.py), and the "pretrained" CPU protocol of Table 2a (configs/ablations/cpu/2a_pretrained/):
frozen BN, frozen stem + res2, the cached weights loaded into both model kinds and one training step.

Everything trains tiny recipes (32 px images, a few classes, a few iterations) into temporary caches; the real
recipes are only hashed and resolved, never trained.
"""
import collections
import contextlib
import glob
import hashlib
import importlib.util
import io
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import yaml

import maskrcnn_plugin  # noqa: F401  (registers the shapes-pretrained:// handler)
from maskrcnn_plugin.data.pretrain_classes import (
    MAX_CLASSES,
    PATTERNS,
    SHAPES,
    VAL_START,
    PretrainClasses,
    class_name,
    render_sample,
)
from maskrcnn_plugin.pretrained import (
    ENV_CACHE_DIR,
    RECIPES,
    backbone_checkpoint,
    checkpoint_path,
    recipe_for,
    recipe_hash,
    recipe_name,
    resolve,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_TOOL = os.path.join(REPO, "tools", "pretrain_backbone.py")
_spec = importlib.util.spec_from_file_location("pretrain_backbone_tool", _TOOL)
pretrain_tool = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(pretrain_tool)
main, pretrain, BackboneClassifier = pretrain_tool.main, pretrain_tool.pretrain, pretrain_tool.BackboneClassifier

# the protocol's arms with different backbones: 2a's four, and 2d's stride-32 one (res5 is its output)
LOADING_ARMS = [("2a_pretrained", "r18_s16"), ("2a_pretrained", "r34_s16"), ("2a_pretrained", "r18_fpn"),
                ("2a_pretrained", "r34_fpn"), ("2d_pretrained", "roipool")]

# a recipe that trains in about a second: 32 px, 4 classes, batches of 4
TINY = {"image_size": 32, "num_classes": 4, "batch_size": 4, "val_size": 8, "warmup_iters": 1, "base_lr": 0.01}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The tiny models gain nothing from threads, and beside other work (a shared 2-core machine) a second
    spin-waiting OpenMP thread made this file 5x slower; the killed run's process gets one thread too."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny(depth=18, max_iter=3, **extra):
    return recipe_for(depth, {**TINY, "max_iter": max_iter, **extra})


def quiet_pretrain(recipe, cache_dir, **kw):
    return pretrain(recipe, str(cache_dir), progress=False, log=lambda *a: None, **kw)


def state_of(path):
    return torch.load(path, map_location="cpu", weights_only=True)


# ------------------------------------------------------------------------------------------------------------
# The generated classification set
# ------------------------------------------------------------------------------------------------------------
def test_images_are_a_function_of_seed_and_index():
    a, la = render_sample(3, 17, MAX_CLASSES, 64)
    b, lb = render_sample(3, 17, MAX_CLASSES, 64)
    assert a.dtype == np.uint8 and a.shape == (3, 64, 64) and la == lb == 17
    assert np.array_equal(a, b)
    assert not np.array_equal(a, render_sample(4, 17, MAX_CLASSES, 64)[0])  # another seed
    assert not np.array_equal(a, render_sample(3, 17 + MAX_CLASSES, MAX_CLASSES, 64)[0])  # same class, next image
    # the Dataset: fresh instances (as in a resumed run or a loader worker) give the same items
    ds1, ds2 = PretrainClasses("train", seed=5, size=50, image_size=48), PretrainClasses("train", seed=5, size=50,
                                                                                         image_size=48)
    x, y = ds1[7]
    assert x.dtype == torch.uint8 and tuple(x.shape) == (3, 48, 48) and y == 7
    assert torch.equal(x, ds2[7][0]) and torch.equal(ds2[49][0], ds1[49][0])
    # not a blank canvas: a real spread of values in every channel
    assert all(float(x[c].float().std()) > 10 for c in range(3))


def test_classes_are_balanced_and_named():
    names = [class_name(c) for c in range(MAX_CLASSES)]
    assert len(set(names)) == MAX_CLASSES == len(SHAPES) * len(PATTERNS) >= 100
    for split in ("train", "val"):
        ds = PretrainClasses(split, size=3 * MAX_CLASSES, image_size=16)
        labels = [(ds.start + i) % ds.num_classes for i in range(len(ds))]  # what __getitem__ returns, unrendered
        assert labels[:5] == [ds[i][1] for i in range(5)]
        assert set(collections.Counter(labels).values()) == {3}
    ds = PretrainClasses("train", size=40, num_classes=4, image_size=16)
    assert collections.Counter(ds[i][1] for i in range(40)) == {0: 10, 1: 10, 2: 10, 3: 10}
    with pytest.raises(ValueError, match="num_classes must be in 1..120"):
        PretrainClasses("train", num_classes=121)


def test_train_and_val_splits_are_disjoint():
    train = PretrainClasses("train", size=VAL_START, image_size=24)
    val = PretrainClasses("val", size=60, image_size=24)
    assert train.start + len(train) <= val.start  # disjoint global index ranges
    digests = lambda ds, n: {hashlib.sha1(ds[i][0].numpy().tobytes()).hexdigest() for i in range(n)}  # noqa: E731
    assert not digests(train, 60) & digests(val, 60)
    with pytest.raises(ValueError, match=f"size must be in 1..{VAL_START}"):
        PretrainClasses("train", size=VAL_START + 1)
    with pytest.raises(IndexError, match="out of range for the val split of 60"):
        val[60]
    with pytest.raises(ValueError, match="split must be 'train' or 'val'"):
        PretrainClasses("test")


# ------------------------------------------------------------------------------------------------------------
# Recipes and their names
# ------------------------------------------------------------------------------------------------------------
def test_recipes_hash_and_checks():
    assert set(RECIPES) >= {18, 34}
    r18, r34 = recipe_for(18), recipe_for(34)
    # one recipe, two depths: the same images, schedule and seed
    assert {k for k in r18 if r18[k] != r34[k]} == {"depth"}
    # the detection configs' input normalisation
    base = yaml.safe_load(open(os.path.join(REPO, "configs", "Base-Shapes-RCNN.yaml")))["MODEL"]
    assert r18["pixel_mean"] == base["PIXEL_MEAN"] and r18["pixel_std"] == base["PIXEL_STD"]
    assert recipe_name(r18).startswith("R-18-") and len(recipe_hash(r18)) == 12
    assert recipe_hash(r18) == recipe_hash(recipe_for(18)) != recipe_hash(r34)
    assert recipe_hash(tiny()) != recipe_hash(r18)  # overrides never name the real file
    assert recipe_for(18, {"base_lr": 1})["base_lr"] == 1.0  # an int where a float is expected
    with pytest.raises(ValueError, match="unknown recipe key 'lr'; the keys are"):
        recipe_for(18, {"lr": 0.1})
    with pytest.raises(ValueError, match="'max_iter' takes a int"):
        recipe_for(18, {"max_iter": "many"})
    with pytest.raises(ValueError, match=r"recipes exist for depths \[18, 34"):
        recipe_for(50)
    with pytest.raises(ValueError, match="num_classes must be in 1..120"):
        recipe_for(18, {"num_classes": 500})


# ------------------------------------------------------------------------------------------------------------
# Pre-training runs
# ------------------------------------------------------------------------------------------------------------
def test_tiny_run_writes_a_loadable_backbone_and_the_second_call_is_a_cache_hit(tmp_path):
    from detectron2.checkpoint import DetectionCheckpointer


    args = ["--depth", "18", "--max-iter", "3", "--classes", "4", "--image-size", "32", "--cache-dir", str(tmp_path),
            "--recipe-override", "batch_size=4", "--recipe-override", "val_size=8", "--recipe-override",
            "warmup_iters=1", "--workers", "0", "--no-progress"]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(args) == 0
    recipe = recipe_for(18, {"max_iter": 3, "num_classes": 4, "image_size": 32, "batch_size": 4, "val_size": 8,
                             "warmup_iters": 1})
    path = checkpoint_path(recipe, str(tmp_path))
    assert os.path.isfile(path) and "wrote " + path in out.getvalue()
    assert sorted(f for f in os.listdir(tmp_path) if not f.endswith(".lock")) == [
        recipe_name(recipe) + ".json", recipe_name(recipe) + ".pth"]
    log = json.load(open(path[:-4] + ".json"))
    assert log["recipe"] == recipe and log["hash"] == recipe_hash(recipe)
    # the command that rebuilds it: the overrides, in a form --recipe-override reads back
    assert log["command"].startswith("python tools/pretrain_backbone.py --depth 18 --recipe-override max_iter=3")
    for key in ("wall_s", "train_images_per_s", "final_train_loss", "val_top1", "loadavg_start", "loadavg_end"):
        assert log[key] is not None, key
    assert 0 <= log["val_top1"] <= 100
    # the file: the bare ResNet (no classifier, no BN step counters) in detectron2's format with suffix matching
    ckpt = state_of(path)
    assert ckpt["matching_heuristics"] is True and set(ckpt) == {"model", "__author__", "matching_heuristics"}
    model = BackboneClassifier(recipe)
    expected = {k for k in model.backbone.state_dict() if not k.endswith("num_batches_tracked")}
    assert set(ckpt["model"]) == expected
    assert "stem.conv1.weight" in expected and "res5.1.conv2.norm.running_var" in expected
    DetectionCheckpointer(model.backbone).load(path)
    for k, v in ckpt["model"].items():
        assert torch.equal(model.backbone.state_dict()[k], v), k
    # again: nothing is trained or written
    mtime = os.path.getmtime(path)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(args) == 0
    assert "already built, nothing to do: " + path in out.getvalue() and os.path.getmtime(path) == mtime
    # so does the command in the log (with the cache directory added)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(shlex.split(log["command"])[2:] + ["--cache-dir", str(tmp_path), "--no-progress"]) == 0
    assert "already built" in out.getvalue()
    # --print-recipe names the same file
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        main(args + ["--print-recipe"])
    assert json.loads(out.getvalue())["file"] == path


def test_zero_init_residual_starts_every_block_as_the_identity():
    """The recipes zero each residual block's last BN scale (the block's branch then adds 0), nothing else."""
    for depth in (18, 34):
        for zero in (True, False):
            model = BackboneClassifier(recipe_for(depth, {**TINY, "zero_init_residual": zero}))
            blocks = [m for name, m in model.backbone.named_children() if name.startswith("res")]
            last_norms = {f"{stage}.{i}.conv2.norm.weight" for stage, n in zip(
                ("res2", "res3", "res4", "res5"), {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}[depth]) for i in range(n)}
            assert len(blocks) == 4
            for name, p in model.backbone.named_parameters():
                if name.endswith("norm.weight"):
                    assert torch.all(p == 0) == (zero and name in last_norms), (depth, zero, name)
    assert recipe_for(18)["zero_init_residual"] is True


def test_the_log_of_a_backbone_the_configs_use_is_copied_for_the_report(tmp_path):
    """A recipe without overrides (what shapes-pretrained://R-<D> means) gets its log copied into --results-dir,
    also when it was built before; a recipe with overrides (a test's, an experiment's) never does."""
    cache, results = tmp_path / "cache", tmp_path / "results"
    cache.mkdir()
    real = checkpoint_path(recipe_for(18), str(cache))
    open(real, "wb").close()  # "built": pretrain() trains nothing when the file exists
    log = {"name": recipe_name(recipe_for(18)), "val_top1": 50.0}
    open(real[:-4] + ".json", "w").write(json.dumps(log))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["--depth", "18", "--cache-dir", str(cache), "--results-dir", str(results), "--no-progress"]) == 0
    assert "already built" in out.getvalue()
    assert json.load(open(results / (log["name"] + ".json"))) == log
    tiny_args = ["--depth", "18", "--max-iter", "1", "--classes", "4", "--image-size", "32", "--recipe-override",
                 "batch_size=4", "--recipe-override", "val_size=8", "--cache-dir", str(cache), "--results-dir",
                 str(tmp_path / "results_tiny"), "--workers", "0", "--no-progress"]
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(tiny_args) == 0
    assert not (tmp_path / "results_tiny").exists()


def test_stopped_and_resumed_run_equals_the_uninterrupted_run(tmp_path, monkeypatch):
    """4 iterations at once vs 2, stop (what a kill leaves: the resume state of iteration 2), then 2 more."""
    monkeypatch.setattr(pretrain_tool, "_RECENT", 1)  # a loss-curve point per iteration
    recipe = tiny(max_iter=4)
    full = quiet_pretrain(recipe, tmp_path / "full", checkpoint_period=100)
    assert quiet_pretrain(recipe, tmp_path / "split", checkpoint_period=100, stop_after=2) is None
    resume_file = tmp_path / "split" / (recipe_name(recipe) + ".resume.pth")
    assert state_of(resume_file)["progress"]["iteration"] == 2
    torch.manual_seed(999)  # the caller's RNG state must not matter: the resume state restores it
    np.random.seed(999)
    split = quiet_pretrain(recipe, tmp_path / "split", checkpoint_period=100)
    assert not resume_file.exists()  # removed once the backbone is written
    a, b = state_of(full)["model"], state_of(split)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    la, lb = (json.load(open(p[:-4] + ".json")) for p in (full, split))
    assert la["final_train_loss"] == lb["final_train_loss"] and la["val_top1"] == lb["val_top1"]
    assert [it for it, _ in la["loss_curve"]] == [1, 2, 3, 4] and la["loss_curve"] == lb["loss_curve"]
    # and the weights did train: not the initialisation
    init = tiny(max_iter=4, base_lr=0.0)
    c = state_of(quiet_pretrain(init, tmp_path / "lr0"))["model"]
    assert not torch.equal(a["res5.1.conv2.weight"], c["res5.1.conv2.weight"])


def test_killed_process_resumes_to_the_same_weights(tmp_path):
    """SIGKILL a real tools/pretrain_backbone.py process once it has saved a resume state, run the command again:
    the same weights as an uninterrupted run (in this process, with the same thread count; the killed run renders
    its images in a loader worker, the uninterrupted one in the training process)."""
    n = 8
    flags = ["--depth", "18", "--max-iter", str(n), "--classes", "4", "--image-size", "32", "--workers", "1",
             "--checkpoint-period", "1", "--no-progress"] + [
        a for k, v in TINY.items() if k not in ("image_size", "num_classes") for a in ("--recipe-override", f"{k}={v}")]
    recipe = tiny(max_iter=n)
    killed = tmp_path / "killed"
    resume_file = killed / (recipe_name(recipe) + ".resume.pth")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, os.path.join(REPO, "tools", "pretrain_backbone.py"), *flags, "--cache-dir", str(killed)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 60
        while not resume_file.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    if not resume_file.exists():
        pytest.fail("no resume state before the kill: " + proc.stderr.read().decode()[-2000:])
    stopped_at = state_of(resume_file)["progress"]["iteration"]
    assert 1 <= stopped_at <= n
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert main(flags + ["--cache-dir", str(killed)]) == 0
    full = quiet_pretrain(recipe, tmp_path / "full")
    a, b = state_of(full)["model"], state_of(checkpoint_path(recipe, str(killed)))["model"]
    assert all(torch.equal(a[k], b[k]) for k in a), f"killed after iteration {stopped_at}"
    assert not glob.glob(str(killed / ".*tmp*"))  # no temporary file left by the kill is kept after the run


def test_a_second_process_on_the_same_recipe_is_refused(tmp_path):
    """Two runs of one recipe into one cache would overwrite each other's resume state: the second stops with an
    error naming the first; another recipe (another depth) in the same cache is not blocked."""
    recipe = tiny()
    lock_file = tmp_path / f".{recipe_name(recipe)}.lock"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, sys, time\n"
        f"f = open({str(lock_file)!r}, 'a+'); fcntl.lockf(f, fcntl.LOCK_EX); f.write('pid 4242'); f.flush()\n"
        "print('locked', flush=True); time.sleep(60)")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RuntimeError, match=f"{recipe_name(recipe)} is being pre-trained into .* by pid 4242"):
            quiet_pretrain(recipe, tmp_path)
        assert quiet_pretrain(tiny(34, max_iter=1), tmp_path)
    finally:
        holder.kill()
        holder.wait()
    assert quiet_pretrain(recipe, tmp_path)  # the lock dies with its process


# ------------------------------------------------------------------------------------------------------------
# shapes-pretrained:// weights
# ------------------------------------------------------------------------------------------------------------
def test_path_handler_resolves_and_names_the_command_when_missing(tmp_path, monkeypatch):
    from detectron2.utils.file_io import PathManager

    monkeypatch.setenv(ENV_CACHE_DIR, str(tmp_path))
    with pytest.raises(FileNotFoundError) as e:
        PathManager.get_local_path("shapes-pretrained://R-34")
    msg = str(e.value)
    assert "python tools/pretrain_backbone.py --depth 34" in msg and checkpoint_path(recipe_for(34)) in msg
    assert ENV_CACHE_DIR in msg
    # through detectron2's checkpointer (what train_net.py and the ablation runner use): the same error
    from detectron2.checkpoint import DetectionCheckpointer

    with pytest.raises(FileNotFoundError, match="python tools/pretrain_backbone.py --depth 34"):
        DetectionCheckpointer(torch.nn.Linear(1, 1)).load("shapes-pretrained://R-34")
    target = checkpoint_path(recipe_for(18))
    assert os.path.dirname(target) == str(tmp_path)
    torch.save(backbone_checkpoint({"stem.conv1.weight": torch.ones(1)}, recipe_for(18)), target)
    assert PathManager.get_local_path("shapes-pretrained://R-18") == target
    assert PathManager.isfile("shapes-pretrained://R-18") and not PathManager.exists("shapes-pretrained://R-34")
    with PathManager.open("shapes-pretrained://R-18", "rb") as f:
        assert f.read(2) == open(target, "rb").read(2)
    # one exact recipe by its hash
    name = recipe_name(recipe_for(18))
    assert resolve(f"shapes-pretrained://{name}") == target
    other = recipe_name(tiny())
    with pytest.raises(FileNotFoundError, match=f"{other} is not the current R-18 recipe"):
        resolve(f"shapes-pretrained://{other}")
    with pytest.raises(ValueError, match="expected shapes-pretrained://R-<depth>"):
        resolve("shapes-pretrained://R-50")
    # without the variable: ./pretrained_cache in the working directory
    monkeypatch.delenv(ENV_CACHE_DIR)
    monkeypatch.chdir(tmp_path)
    assert checkpoint_path(recipe_for(18)) == os.path.join(str(tmp_path), "pretrained_cache", name + ".pth")


# ------------------------------------------------------------------------------------------------------------
# The "pretrained" protocol: Table 2a's arms from the cached backbones
# ------------------------------------------------------------------------------------------------------------
def _flat(cfg, prefix=""):
    out = {}
    for k, v in cfg.items():
        out.update(_flat(v, f"{prefix}{k}.") if hasattr(v, "items") else {f"{prefix}{k}": v})
    return out


def _arm_cfg(path):
    from maskrcnn_plugin.config import get_plugin_cfg

    cfg = get_plugin_cfg()
    cfg.merge_from_file(path)
    return cfg


@pytest.mark.parametrize("table,weights_suffix,frozen", [
    ("2a_pretrained", "", True), ("2a_pretrained_bn", "@shapes_train", True), ("2a_pretrained_init", "", False),
    ("2c_pretrained", "", True), ("2d_pretrained", "", True), ("2e_pretrained", "", True)])
def test_protocol_arms_are_the_paper_tables_arms_with_pretrained_frozen_backbones(table, weights_suffix, frozen):
    """Each arm is its from-scratch table's arm plus exactly the protocol: the pre-trained backbone of its
    depth (2a_pretrained_bn: with BN statistics re-estimated on shapes_train), frozen BN, stem + res2 frozen (so
    the protocol is equal in every Base-*_pretrained*.yaml); 2a_pretrained_init (the control) only the weights."""
    from ablations.tables import TABLES

    tab = TABLES[table]
    arm_dir = os.path.join(REPO, "configs", "ablations", "cpu", table)
    names = [a.name for a in tab.arms["cpu"]]
    assert names == [a.name for a in TABLES[tab.paper_key].arms["cpu"]]
    on_disk = [os.path.basename(p)[:-5] for p in glob.glob(os.path.join(arm_dir, "*.yaml"))]
    assert sorted(n for n in on_disk if not n.startswith("Base-")) == sorted(names)
    for arm in names:
        ours = _flat(_arm_cfg(os.path.join(arm_dir, f"{arm}.yaml")))
        theirs = _flat(_arm_cfg(os.path.join(REPO, "configs", "ablations", "cpu", tab.paper_key, f"{arm}.yaml")))
        diff = {k for k in ours if ours[k] != theirs[k]} - {"OUTPUT_DIR"}
        assert diff == ({"MODEL.WEIGHTS", "MODEL.RESNETS.NORM", "MODEL.BACKBONE.FREEZE_AT"} if frozen
                        else {"MODEL.WEIGHTS"}), arm
        depth = ours["MODEL.RESNETS.DEPTH"]
        assert ours["MODEL.WEIGHTS"] == f"shapes-pretrained://R-{depth}{weights_suffix}"
        assert (ours["MODEL.RESNETS.NORM"], ours["MODEL.BACKBONE.FREEZE_AT"]) == (("FrozenBN", 2) if frozen
                                                                                 else ("BN", 0))
        assert ours["OUTPUT_DIR"] == f"./output/ablations/cpu/{table}/{arm}/seed0"


@pytest.fixture(scope="module")
def protocol_cache(tmp_path_factory):
    """Tiny R-18 and R-34 backbones made by the pre-training run, stored under the real recipes' names."""
    root = tmp_path_factory.mktemp("pretrained")
    cache = root / "cache"
    cache.mkdir()
    for depth in (18, 34):
        made = quiet_pretrain(tiny(depth, max_iter=2), root / "made")
        shutil.copy(made, checkpoint_path(recipe_for(depth), str(cache)))
    return cache


def _one_training_step(model):
    from detectron2.structures import BitMasks, Boxes, Instances
    from detectron2.utils.events import EventStorage

    masks = torch.zeros(2, 96, 128, dtype=torch.bool)
    masks[0, 10:60, 20:90] = True
    masks[1, 40:90, 60:120] = True
    inst = Instances((96, 128), gt_boxes=Boxes(torch.tensor([[20.0, 10, 90, 60], [60, 40, 120, 90]])),
                     gt_classes=torch.tensor([0, 2]), gt_masks=BitMasks(masks))
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01)
    model.train()
    with EventStorage(0):
        losses = model([{"image": torch.rand(3, 96, 128) * 255, "instances": inst}])
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    optimizer.step()


@pytest.mark.parametrize("table,arm", LOADING_ARMS)
def test_protocol_arm_loads_the_cached_backbone_frozen_and_trains(table, arm, protocol_cache, monkeypatch):
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.layers import FrozenBatchNorm2d
    from detectron2.modeling import build_model

    monkeypatch.setenv(ENV_CACHE_DIR, str(protocol_cache))
    cfg = _arm_cfg(os.path.join(REPO, "configs", "ablations", "cpu", table, f"{arm}.yaml"))
    depth, fpn = cfg.MODEL.RESNETS.DEPTH, arm.endswith("_fpn")
    model = build_model(cfg)
    DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    resnet = model.backbone.bottom_up if fpn else model.backbone
    file_weights = state_of(checkpoint_path(recipe_for(depth), str(protocol_cache)))["model"]
    state = resnet.state_dict()
    # every backbone parameter and BN statistic came from the file (the stride-16 model has no res5)
    has_res5 = fpn or "res5" in cfg.MODEL.RESNETS.OUT_FEATURES
    assert set(state) == {k for k in file_weights if has_res5 or not k.startswith("res5.")}
    for k, v in state.items():
        assert torch.equal(v, file_weights[k]), k
    norms = [m for m in resnet.modules() if "Norm" in type(m).__name__]
    assert norms and all(isinstance(m, FrozenBatchNorm2d) for m in norms)
    for name, p in resnet.named_parameters():
        assert p.requires_grad == (not name.startswith(("stem.", "res2."))), name
    before = {k: v.clone() for k, v in resnet.state_dict().items()}
    _one_training_step(model)
    after = resnet.state_dict()
    for k in before:
        if k.startswith(("stem.", "res2.")) or ".norm." in k:
            assert torch.equal(before[k], after[k]), k  # frozen: stem, res2, and every BN's scale, shift, statistics
    assert not torch.equal(before["res4.0.conv1.weight"], after["res4.0.conv1.weight"])  # fine-tuned


def test_init_control_arm_loads_the_cached_backbone_into_trainable_bn(protocol_cache, monkeypatch):
    """2a_pretrained_init (the control): the same weights and BN statistics, but every layer, BN included, trains."""
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model

    monkeypatch.setenv(ENV_CACHE_DIR, str(protocol_cache))
    cfg = _arm_cfg(os.path.join(REPO, "configs", "ablations", "cpu", "2a_pretrained_init", "r18_fpn.yaml"))
    model = build_model(cfg)
    DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    resnet = model.backbone.bottom_up
    file_weights = state_of(checkpoint_path(recipe_for(18), str(protocol_cache)))["model"]
    state = {k: v for k, v in resnet.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert set(state) == set(file_weights)
    for k, v in state.items():
        assert torch.equal(v, file_weights[k]), k
    norms = [m for m in resnet.modules() if "Norm" in type(m).__name__]
    assert norms and all(isinstance(m, torch.nn.BatchNorm2d) for m in norms)
    assert all(p.requires_grad for p in resnet.parameters())
    before = {k: v.clone() for k, v in state.items()}
    _one_training_step(model)
    after = resnet.state_dict()
    for k in ("stem.conv1.weight", "stem.conv1.norm.weight", "stem.conv1.norm.running_mean"):
        assert not torch.equal(before[k], after[k]), k  # nothing frozen: BN statistics move too
