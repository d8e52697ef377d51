"""tools/reestimate_bn.py and ``shapes-pretrained://R-<depth>@<dataset>``: BN statistics re-estimated on detection
images against a float64 reference, the names and errors of the re-estimated backbones, and a tiny end-to-end
build that a Table 2a_pretrained_bn arm loads."""
import importlib.util
import os

import pytest
import torch
from torch import nn

from maskrcnn_plugin import pretrained
from maskrcnn_plugin.pretrained import (
    ENV_CACHE_DIR,
    PREFIX,
    backbone_checkpoint,
    checkpoint_path,
    pinned,
    recipe_for,
    recipe_name,
    reestimated_checkpoint_path,
    resolve,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("reestimate_bn_tool", os.path.join(REPO, "tools", "reestimate_bn.py"))
tool = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tool)
_spec = importlib.util.spec_from_file_location("frozen_bn_shift_tool", os.path.join(REPO, "tools", "frozen_bn_shift.py"))
shift_tool = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(shift_tool)


def _toy():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.Conv2d(4, 5, 3, stride=2), nn.BatchNorm2d(5))
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 2)
            m.bias.data.uniform_(-1, 1)
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.2, 3)
    return model


def _frozen(model):
    from detectron2.layers import FrozenBatchNorm2d

    return FrozenBatchNorm2d.convert_frozen_batchnorm(model).eval()


def test_first_layer_statistics_are_the_population_statistics_over_all_batches():
    model = _toy()
    weights = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "num_batches" not in k}
    batches = [torch.randn(3, 3, 10, 10) * 2 + 0.5, torch.randn(2, 3, 10, 10) - 1, torch.randn(4, 3, 10, 10)]
    tool.reestimate_bn_statistics(model, batches)
    assert not model.training
    with torch.no_grad():  # float64 reference: the first BN's input, all batches' pixels concatenated
        x = torch.cat([model[0].double()(b.double()) for b in batches]).permute(1, 0, 2, 3).reshape(4, -1)
    torch.testing.assert_close(model[1].running_mean.double(), x.mean(1), rtol=1e-5, atol=1e-6)
    # the population variance (over N pixels, not N - 1), which is also what train-mode BN normalises with
    torch.testing.assert_close(model[1].running_var.double(), x.var(1, correction=0), rtol=1e-5, atol=1e-6)
    for k, v in weights.items():  # the learnt weights and BN affine parameters are kept
        assert torch.equal(model.state_dict()[k], v), k


def test_after_re_estimation_on_one_batch_every_frozen_layer_sees_its_own_statistics():
    """With a single batch, train-mode BN normalises with exactly the statistics it records, so the frozen model
    on the same images has zero mean shift and unit variance ratio at every layer (tools/frozen_bn_shift.py)."""
    model = _toy()
    x = torch.randn(6, 3, 16, 16) * 3 + 2
    before = shift_tool.bn_input_shift(_frozen(_toy()), [x])
    assert min(r for _, r in before.values()) < 0.9 or max(r for _, r in before.values()) > 1.1
    tool.reestimate_bn_statistics(model, [x])
    after = shift_tool.bn_input_shift(_frozen(model), [x])
    for name, (z, ratio) in after.items():  # the ratio's input variance is over N - 1: >= 294 pixels per channel
        assert z == pytest.approx(0, abs=1e-4) and ratio == pytest.approx(1, rel=4e-3), name


def test_names_pin_the_recipe_and_the_procedure_and_name_the_command_when_missing(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_CACHE_DIR, str(tmp_path))
    name = recipe_name(recipe_for(18))
    path = reestimated_checkpoint_path(recipe_for(18), "shapes_train")
    assert os.path.dirname(path) == str(tmp_path)
    assert os.path.basename(path).startswith(f"{name}@shapes_train-") and path.endswith(".pth")
    with pytest.raises(FileNotFoundError, match=r"python tools/reestimate_bn.py --depth 18 --dataset shapes_train"):
        resolve(f"{PREFIX}R-18@shapes_train")
    exact = pinned(f"{PREFIX}R-18@shapes_train")
    assert exact == PREFIX + os.path.basename(path)[:-len(".pth")]
    assert pinned(exact) == exact and pinned(f"{PREFIX}{name}@shapes_train") == exact
    torch.save({"model": {}}, path)
    assert resolve(f"{PREFIX}R-18@shapes_train") == resolve(exact) == path
    with pytest.raises(FileNotFoundError, match="another BN_REESTIMATION"):
        resolve(f"{PREFIX}{name}@shapes_train-00000000")
    # the procedure is part of the name: changing it makes a new file, and stored results go stale
    monkeypatch.setattr(pretrained, "BN_REESTIMATION", {**pretrained.BN_REESTIMATION, "images": 7})
    assert reestimated_checkpoint_path(recipe_for(18), "shapes_train") != path
    assert pinned(f"{PREFIX}R-18@shapes_train") != exact
    with pytest.raises(ValueError, match=r"optionally followed by @<detection dataset>"):
        resolve(f"{PREFIX}R-18@shapes/train")


def test_tiny_build_is_loaded_frozen_by_a_2a_pretrained_bn_arm(tmp_path, monkeypatch):
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.layers import FrozenBatchNorm2d, ShapeSpec
    from detectron2.modeling import build_model, build_resnet_backbone

    from maskrcnn_plugin.config import get_plugin_cfg
    from tools.pretrain_backbone import backbone_cfg

    monkeypatch.setenv(ENV_CACHE_DIR, str(tmp_path / "cache"))
    monkeypatch.setenv("MASKRCNN_PLUGIN_DATA", str(tmp_path / "data"))
    monkeypatch.setattr(tool, "BN_REESTIMATION", {"images": 4, "batch_size": 2, "version": "test"})
    monkeypatch.setattr(pretrained, "BN_REESTIMATION", tool.BN_REESTIMATION)
    dataset = "shapes_bnre_s7_n4_px64"
    with pytest.raises(FileNotFoundError, match="python tools/pretrain_backbone.py --depth 18"):
        tool.main(["--depth", "18", "--dataset", dataset])  # the source backbone is not built
    torch.manual_seed(0)
    source = build_resnet_backbone(backbone_cfg(18), ShapeSpec(channels=3))
    os.makedirs(tmp_path / "cache")
    torch.save(backbone_checkpoint(source.state_dict(), recipe_for(18)), checkpoint_path(recipe_for(18)))
    [built] = tool.main(["--depth", "18", "--dataset", dataset])
    assert built == resolve(f"{PREFIX}R-18@{dataset}") and os.path.isfile(built[:-len(".pth")] + ".json")
    state = torch.load(built, weights_only=False)["model"]
    src = source.state_dict()
    changed = {k for k in state if not torch.equal(state[k], src[k])}
    assert changed and all(k.endswith(("running_mean", "running_var")) for k in changed)
    assert tool.main(["--depth", "18", "--dataset", dataset]) == [built]  # a second call finds it

    cfg = get_plugin_cfg()
    cfg.merge_from_file(os.path.join(REPO, "configs", "ablations", "cpu", "2a_pretrained_bn", "r18_fpn.yaml"))
    cfg.MODEL.WEIGHTS = f"{PREFIX}R-18@{dataset}"  # the arm's shapes_train, built above on the tiny dataset
    model = build_model(cfg)
    DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    resnet = model.backbone.bottom_up
    assert all(isinstance(m, FrozenBatchNorm2d) for m in resnet.modules() if "Norm" in type(m).__name__)
    for k, v in resnet.state_dict().items():
        assert torch.equal(v, state[k]), k
