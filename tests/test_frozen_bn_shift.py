"""tools/frozen_bn_shift.py: the shift of a frozen-BN backbone's layer inputs from its running statistics, against
a float64 reference, and the report's table of it."""
import importlib.util
import json
import os

import pytest
import torch
from detectron2.layers import FrozenBatchNorm2d
from torch import nn

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_TOOL = os.path.join(REPO, "tools", "frozen_bn_shift.py")
_spec = importlib.util.spec_from_file_location("frozen_bn_shift_tool", _TOOL)
tool = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tool)


def _toy():
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("stem", nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), FrozenBatchNorm2d(4)))
    model.add_module("res2", nn.Sequential(nn.Conv2d(4, 5, 3, stride=2), FrozenBatchNorm2d(5), nn.ReLU(),
                                           nn.Conv2d(5, 5, 1), FrozenBatchNorm2d(5)))
    for m in model.modules():
        if isinstance(m, FrozenBatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.2, 3)
    return model


def _reference(model, batches):
    """float64: collect every BN input, concatenate over images and pixels, then the statistics."""
    inputs = {}
    hooks = [m.register_forward_hook(lambda mod, inp, out, name=name: inputs.setdefault(name, []).append(inp[0]))
             for name, m in model.named_modules() if isinstance(m, FrozenBatchNorm2d)]
    with torch.no_grad():
        for x in batches:
            model(x)
    for h in hooks:
        h.remove()
    out = {}
    for name, xs in inputs.items():
        m = dict(model.named_modules())[name]
        flat = torch.cat([x.double().permute(1, 0, 2, 3).reshape(x.shape[1], -1) for x in xs], dim=1)
        var = m.running_var.double() + m.eps
        z = (flat.mean(1) - m.running_mean.double()).abs() / var.sqrt()
        out[name] = (z.median().item(), (flat.var(1) / var).median().item())
    return out


def test_shift_matches_the_float64_reference_over_batches_of_different_sizes():
    model = _toy()
    batches = [torch.randn(3, 3, 12, 12) * 2 + 0.5, torch.randn(1, 3, 9, 17)]
    got = tool.bn_input_shift(model, batches)
    want = _reference(model, batches)
    assert set(got) == {"stem.1", "res2.1", "res2.4"} == set(want)
    for name in want:
        assert got[name] == pytest.approx(want[name], rel=1e-9, abs=1e-12)
    assert not any(m._forward_hooks for m in model.modules())  # hooks removed


def test_inputs_with_the_running_statistics_give_zero_shift_and_unit_ratio():
    bn = FrozenBatchNorm2d(3)
    bn.running_mean.copy_(torch.tensor([1.0, -2.0, 0.5]))
    bn.running_var.copy_(torch.tensor([4.0, 0.25, 1.0]) - bn.eps)
    torch.manual_seed(1)
    x = torch.randn(64, 3, 32, 32)
    x = (x - x.mean((0, 2, 3), keepdim=True)) / x.std((0, 2, 3), keepdim=True)
    x = x * bn.running_var.add(bn.eps).sqrt().view(1, 3, 1, 1) + bn.running_mean.view(1, 3, 1, 1)
    z, ratio = tool.bn_input_shift(nn.Sequential(bn), [x])["0"]
    assert z == pytest.approx(0, abs=1e-5) and ratio == pytest.approx(1, rel=1e-5)
    z, ratio = tool.bn_input_shift(nn.Sequential(bn), [x * 0.5])["0"]  # var / 4; mean moves by half of itself
    assert ratio == pytest.approx(0.25, rel=1e-5)


def test_stage_medians_group_layers_by_their_first_name():
    shifts = {"stem.conv1.norm": (0.1, 1.0), "res2.0.conv1.norm": (0.2, 0.5), "res2.0.conv2.norm": (0.4, 0.3),
              "res2.1.conv1.norm": (0.3, 0.9)}
    assert tool.stage_medians(shifts) == {"stem": (0.1, 1.0), "res2": (0.3, 0.5)}


def test_report_shows_the_table_and_does_not_read_the_record_as_a_pretraining_log(tmp_path):
    from ablations.pretraining_report import BN_SHIFT_FILE, load_bn_shift, load_pretraining_records, \
        pretrained_backbones_markdown

    record = {"sets": ["pretraining val", "shapes_train"], "images_per_set": 4, "backbones": [
        {"name": "R-18-abc", "depth": 18, "stages": {"pretraining val": {"stem": [0.01, 0.99], "res2": [0.02, 1.0]},
                                                     "shapes_train": {"stem": [0.03, 0.5], "res2": [0.25, 0.34]}}}]}
    (tmp_path / BN_SHIFT_FILE).write_text(json.dumps(record))
    assert load_pretraining_records(str(tmp_path)) == []
    text = "\n".join(pretrained_backbones_markdown([], str(tmp_path / "p.png"), str(tmp_path),
                                                   load_bn_shift(str(tmp_path))))
    assert "| `R-18-abc` | stem | 0.01 | 0.99 | 0.03 | 0.50 |" in text
    assert "|  | res2 | 0.02 | 1.00 | 0.25 | 0.34 |" in text
    assert load_bn_shift(str(tmp_path / "nowhere")) is None


def test_a_backbone_not_built_is_named_with_its_build_command(tmp_path, monkeypatch):
    monkeypatch.setenv("MASKRCNN_PLUGIN_PRETRAINED", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"tools/pretrain_backbone.py --depth 18"):
        tool.main(["--depth", "18", "--out-dir", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_a_json_that_is_not_a_pretraining_log_is_named(tmp_path):
    from ablations.pretraining_report import load_pretraining_records

    (tmp_path / "notes.json").write_text(json.dumps({"name": "x"}))
    with pytest.raises(ValueError, match=r"notes\.json: not a pre-training log .*no finished, recipe, val_top1"):
        load_pretraining_records(str(tmp_path))
