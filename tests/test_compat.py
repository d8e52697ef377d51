"""Each function of maskrcnn_plugin.compat runs on the installed detectron2."""
import importlib
import sys

from maskrcnn_plugin.compat import tracing_adapter_class


def test_tracing_adapter_class_loads_and_leaves_detectron2_export_alone():
    try:
        importlib.import_module("detectron2.export")
        importable = True
    except ImportError:  # detectron2 <= 0.6 on current torch (no caffe2)
        importable = False
    cls = tracing_adapter_class()
    assert cls.__name__ == "TracingAdapter" and hasattr(cls, "outputs_schema")
    assert ("detectron2.export" in sys.modules) == importable


def _single_process_group(tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", world_size=1, rank=0)


def test_create_local_process_group_gives_detectron2_a_local_rank(tmp_path):
    import torch.distributed as dist
    from detectron2.utils import comm

    from maskrcnn_plugin.compat import create_local_process_group

    _single_process_group(tmp_path)
    try:
        create_local_process_group(num_machines=1, per_machine=1, machine_rank=0)
        assert comm.get_local_rank() == 0 and comm.get_local_size() == 1
    finally:
        dist.destroy_process_group()


def test_trainer_built_without_device_ids_trains_and_keeps_its_last_evaluation(tmp_path):
    # The steps of DefaultTrainer.__init__ that train_net.Trainer runs for gloo processes (here one process in
    # a process group: the 2-process run is tests/test_distributed.py), then the final evaluation's results.
    import argparse
    import os

    from test_train_net import DEFAULT_CONFIG, REPO, tiny_opts

    sys.path.insert(0, REPO)
    import train_net

    from maskrcnn_plugin.compat import init_default_trainer_without_device_ids, last_eval_results

    args = argparse.Namespace(config_file=DEFAULT_CONFIG, opts=tiny_opts(tmp_path, max_iter=2), resume=False,
                              eval_only=False)
    cfg = train_net.setup(args)
    trainer = train_net.Trainer.__new__(train_net.Trainer)
    init_default_trainer_without_device_ids(trainer, cfg)
    assert trainer.max_iter == 2 and trainer.scheduler is not None and trainer.cfg is cfg
    assert last_eval_results(trainer) is None
    trainer.resume_or_load(resume=False)
    trainer.train()
    assert os.path.isfile(os.path.join(cfg.OUTPUT_DIR, "model_final.pth"))
    assert set(last_eval_results(trainer)) == {"bbox", "segm"}


def test_box_inference_is_the_first_stage_of_roi_heads_inference():
    import torch
    from detectron2 import model_zoo
    from detectron2.modeling import build_model

    import maskrcnn_plugin
    from maskrcnn_plugin.compat import box_inference

    cfg = maskrcnn_plugin.get_plugin_cfg()
    cfg.merge_from_file(model_zoo.get_config_file("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml"))
    cfg.MODEL.DEVICE, cfg.MODEL.WEIGHTS, cfg.MODEL.RESNETS.DEPTH = "cpu", "", 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS, cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 64, 0.0
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    inputs = [{"image": torch.rand(3, 64, 96) * 255, "height": 64, "width": 96}]
    with torch.no_grad():
        images = model.preprocess_image(inputs)
        features = model.backbone(images.tensor)
        proposals, _ = model.proposal_generator(images, features, None)
        boxes = box_inference(model.roi_heads, features, proposals)
        full, _ = model.roi_heads(images, features, proposals)
    assert torch.equal(boxes[0].pred_boxes.tensor, full[0].pred_boxes.tensor)
    assert full[0].has("pred_masks") and not boxes[0].has("pred_masks")


def test_has_fast_coco_eval_matches_the_installed_build():
    import importlib.util

    from maskrcnn_plugin.compat import has_fast_coco_eval

    python_only = importlib.util.find_spec("detectron2._C").origin.endswith("_C.py")
    assert has_fast_coco_eval() is not python_only
