"""What a supported detectron2 version lacks, in one place (engineering, not a paper section).

Each function says which detectron2 versions need it; `tests/test_compat.py` runs each on the installed one.
"""
import importlib
import os
import sys
import types
import weakref

import torch.distributed as dist
from detectron2.utils import comm

__all__ = [
    "tracing_adapter_class",
    "create_local_process_group",
    "init_default_trainer_without_device_ids",
    "last_eval_results",
    "box_inference",
    "has_fast_coco_eval",
]


def tracing_adapter_class():
    """detectron2's ``TracingAdapter`` (flattens a model's dict / Instances inputs and outputs for
    ``torch.jit.trace``).

    detectron2 <= 0.6: ``detectron2/export/__init__.py`` imports caffe2, which current torch no longer ships,
    so ``from detectron2.export import TracingAdapter`` fails although the adapter itself needs no caffe2.
    There its module ``detectron2/export/flatten.py`` is imported under a bare package entry that runs no
    ``__init__``; the entry is removed again, so a later ``import detectron2.export`` behaves as before.
    """
    try:
        from detectron2.export import TracingAdapter

        return TracingAdapter
    except ImportError:
        pass
    import detectron2

    name = "detectron2.export"
    bare = types.ModuleType(name)
    bare.__path__ = [os.path.join(os.path.dirname(detectron2.__file__), "export")]
    sys.modules[name] = bare
    try:
        return importlib.import_module(f"{name}.flatten").TracingAdapter
    finally:
        del sys.modules[name]


def create_local_process_group(num_machines, per_machine, machine_rank):
    """Create detectron2's per-machine process group (``comm.get_local_rank()`` / ``get_local_size()``).

    detectron2 after 0.6 has ``comm.create_local_process_group``. detectron2 0.6 creates the group inside its
    own ``launch`` only, into the private ``comm._LOCAL_PROCESS_GROUP``, which is set here.
    """
    if hasattr(comm, "create_local_process_group"):
        comm.create_local_process_group(per_machine)
        return
    for i in range(num_machines):  # every process must take part in creating every group
        group = dist.new_group(list(range(i * per_machine, (i + 1) * per_machine)))
        if i == machine_rank:
            comm._LOCAL_PROCESS_GROUP = group


def init_default_trainer_without_device_ids(trainer, cfg):
    """``DefaultTrainer.__init__(trainer, cfg)`` with the model wrapped in DistributedDataParallel without
    device ids, as DistributedDataParallel requires for a model on the CPU (gloo processes).

    Every detectron2 version to date (0.6 to main of 2026-06): ``DefaultTrainer.__init__`` wraps the model with
    ``create_ddp_model``, which always passes ``device_ids=[local rank]``. The steps below are those of
    ``DefaultTrainer.__init__`` on these versions; the one private name is ``DefaultTrainer._trainer`` (the
    SimpleTrainer / AMPTrainer that runs the steps, which DefaultTrainer's ``run_step`` and state use).
    """
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.engine import AMPTrainer, DefaultTrainer, SimpleTrainer, TrainerBase
    from torch.nn.parallel import DistributedDataParallel

    TrainerBase.__init__(trainer)
    cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
    model = trainer.build_model(cfg)
    optimizer = trainer.build_optimizer(cfg, model)
    data_loader = trainer.build_train_loader(cfg)
    if comm.get_world_size() > 1:
        model = DistributedDataParallel(model, device_ids=None, broadcast_buffers=False)
    trainer._trainer = (AMPTrainer if cfg.SOLVER.AMP.ENABLED else SimpleTrainer)(model, data_loader, optimizer)
    trainer.scheduler = trainer.build_lr_scheduler(cfg, optimizer)
    trainer.checkpointer = DetectionCheckpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(trainer))
    trainer.start_iter = 0
    trainer.max_iter = cfg.SOLVER.MAX_ITER
    trainer.cfg = cfg
    trainer.register_hooks(trainer.build_hooks())


def last_eval_results(trainer):
    """The results of a DefaultTrainer's last evaluation (its EvalHook), or None if it never evaluated.

    Every detectron2 version to date: ``DefaultTrainer.train()`` returns them only when
    ``TEST.EXPECTED_RESULTS`` is set; otherwise they are only in the private ``_last_eval_results``.
    """
    return getattr(trainer, "_last_eval_results", None)


def box_inference(roi_heads, features, proposals):
    """The detections of a StandardROIHeads' box branch alone, in eval mode (the first stage of its inference,
    before ``forward_with_given_boxes`` adds masks / keypoints): for timing the stages separately.

    Every detectron2 version to date: StandardROIHeads has it only as the private ``_forward_box``.
    """
    return roi_heads._forward_box(features, proposals)


def has_fast_coco_eval():
    """True when detectron2's compiled COCO evaluator (``COCOEvaluator(use_fast_impl=True)``) can run.

    Every detectron2 version: the evaluator is in the compiled extension ``detectron2._C``, which a Python-only
    build (ours of 0.6, scripts/detectron2_pyonly/) lacks; there it raises ImportError on first use only.
    """
    try:
        from detectron2 import _C

        _C.COCOevalAccumulate  # noqa: B018  (the Python-only build raises ImportError here)
        return True
    except (ImportError, AttributeError):
        return False
