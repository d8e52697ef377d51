#!/usr/bin/env python
"""Train and evaluate Mask R-CNN with maskrcnn_plugin's components (detectron2's DefaultTrainer).

    python train_net.py --config-file configs/shapes/mask_rcnn_R18_FPN_shapes.yaml
    python train_net.py --config-file ... --eval-only MODEL.WEIGHTS output/.../model_final.pth
"""
import json
import os
import weakref

# OpenMP's idle threads spin for a while before they sleep (libgomp: 300,000 spins by default). On a 2-core
# machine with other work the spinning thread holds a core the other job needs: a training step took 2.6-2.9x
# its quiet time beside one busy process. 10,000 spins keep it at 2.1-2.4x with no quiet cost that the
# measurements could tell from their spread; shorter spins come nearer 2x but cost a quiet machine 5-15% (each
# parallel region then wakes sleeping threads): benchmarks/bench_contention.py, docs/performance.md. libgomp
# reads its variables once, when torch loads it, so they are set before any import of torch, and never over a
# value the user chose (e.g. GOMP_SPINCOUNT=3000 or OMP_WAIT_POLICY=PASSIVE on a busy laptop).
OPENMP_DEFAULTS = {"GOMP_SPINCOUNT": "10000"}
if not {"GOMP_SPINCOUNT", "OMP_WAIT_POLICY"} & set(os.environ):
    os.environ.update(OPENMP_DEFAULTS)

import detectron2.utils.comm as comm  # noqa: E402  (after the OpenMP defaults)
from detectron2.data import build_detection_test_loader  # noqa: E402
from detectron2.engine import DefaultTrainer, TrainerBase, default_argument_parser, default_setup  # noqa: E402

import maskrcnn_plugin  # noqa: E402
from maskrcnn_plugin import compat  # noqa: E402
from maskrcnn_plugin.checkpoint import AtomicDetectionCheckpointer, RNGStates, claim_output_dir  # noqa: E402
from maskrcnn_plugin.data import check_num_classes, register_datasets_from_cfg  # noqa: E402
from maskrcnn_plugin.data.mapper import CheckedDatasetMapper  # noqa: E402
from maskrcnn_plugin.data.train_loader import build_checked_train_loader  # noqa: E402
from maskrcnn_plugin.evaluation import build_evaluator  # noqa: E402
from maskrcnn_plugin.inference import prepare_for_inference, to_channels_last  # noqa: E402
# detectron2's launch plus gloo processes on CPU-only machines; launch_from_env for processes torchrun started
from maskrcnn_plugin.launch import launch, launch_from_env, torchrun_env  # noqa: E402


class Trainer(DefaultTrainer):
    def __init__(self, cfg):
        if comm.get_world_size() > 1 and cfg.MODEL.DEVICE == "cpu":
            # gloo processes: detectron2 would wrap the CPU model with GPU device ids, which torch rejects
            compat.init_default_trainer_without_device_ids(self, cfg)
        else:
            super().__init__(cfg)

    def build_hooks(self):
        # DefaultTrainer.__init__ has just made a plain DetectionCheckpointer; swap in the atomic one before the
        # PeriodicCheckpointer hook captures it, so a kill while saving never leaves a truncated checkpoint.
        # With the data stream's position and the RNG states in each checkpoint, --resume continues the very
        # run that was killed (same images, augmentations and RPN / RoI samples).
        resume_state = {"data_stream": self.data_loader, "rng_states": RNGStates()}
        if DefaultTrainer.state_dict is TrainerBase.state_dict:
            # detectron2 <= 0.6 leaves the optimizer (SGD momentum) out of the trainer's state; later versions
            # save it with the trainer
            resume_state["optimizer"] = self.optimizer
        self.checkpointer = AtomicDetectionCheckpointer(
            self.checkpointer.model, self.cfg.OUTPUT_DIR, trainer=weakref.proxy(self), **resume_state
        )
        return super().build_hooks()

    @classmethod
    def build_model(cls, cfg):
        model = super().build_model(cfg)
        if cfg.SOLVER.CHANNELS_LAST:
            to_channels_last(model)  # before the optimizer is built on its parameters
        return model

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        return build_evaluator(cfg, dataset_name, output_folder)

    @classmethod
    def build_train_loader(cls, cfg):
        return build_checked_train_loader(cfg)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        return build_detection_test_loader(cfg, dataset_name, mapper=CheckedDatasetMapper(cfg, is_train=False))


def load_cfg(args):
    """The checked, frozen config of ``args`` (no side effects beyond registering its datasets)."""
    cfg = maskrcnn_plugin.get_plugin_cfg()
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    # Unknown registry names and invalid plugin values fail here, naming the key and the valid choices.
    maskrcnn_plugin.check_maskrcnn_plugin_config(cfg)
    cfg.freeze()
    register_datasets_from_cfg(cfg)
    check_num_classes(cfg)
    return cfg


def setup(args):
    cfg = load_cfg(args)
    default_setup(cfg, args)
    return cfg


def check_weights_exist(weights):
    # detectron2 would silently evaluate a randomly initialised model when the file is missing.
    if "://" not in weights and not os.path.isfile(weights):
        raise FileNotFoundError(
            f"--eval-only: MODEL.WEIGHTS file {weights!r} does not exist; pass the checkpoint to evaluate, "
            "e.g. MODEL.WEIGHTS <OUTPUT_DIR>/model_final.pth"
        )


def write_results(cfg, results):
    if comm.is_main_process():
        with open(os.path.join(cfg.OUTPUT_DIR, "eval_results.json"), "w") as f:
            json.dump(results, f, indent=2)


def main(args):
    cfg = load_cfg(args)
    if not args.eval_only and comm.is_main_process():
        # before default_setup writes config.yaml and the log: a second run into this OUTPUT_DIR stops here
        output_dir_lock = claim_output_dir(cfg.OUTPUT_DIR)  # noqa: F841  (held until the process ends)
    default_setup(cfg, args)
    if args.eval_only:
        check_weights_exist(cfg.MODEL.WEIGHTS)
        model = Trainer.build_model(cfg)
        AtomicDetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        # TEST.FOLD_BATCHNORM / TEST.CHANNELS_LAST: same outputs to float32 rounding, less time
        prepare_for_inference(model, cfg)
        results = Trainer.test(cfg, model)
        write_results(cfg, results)
        return results
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    trainer.train()
    # DefaultTrainer.train() returns the final evaluation only when TEST.EXPECTED_RESULTS is set.
    results = compat.last_eval_results(trainer)
    if results is not None:
        write_results(cfg, results)
    return results


def launch_flags_given(args, parser):
    """The process-starting flags of detectron2's parser that `args` sets to other than their defaults."""
    given = []
    for flag, dest in (("--num-gpus", "num_gpus"), ("--num-machines", "num_machines"),
                       ("--machine-rank", "machine_rank"), ("--dist-url", "dist_url")):
        value = getattr(args, dest)
        if value != parser.get_default(dest) and not (dest == "dist_url" and value == "env://"):
            given.append(f"{flag} {value}")
    return given


def started_by_torchrun(args, parser):
    """Whether this process is one that torchrun (or a scheduler setting its variables) started: then it joins
    the job through env:// (`launch_from_env`) rather than starting processes. Raises ValueError, naming the
    problem, for an incomplete torchrun environment or for launch flags that would start processes too."""
    if torchrun_env() is None:  # ValueError when the torchrun variables are incomplete or inconsistent
        if args.dist_url == "env://":
            raise ValueError("--dist-url env:// needs the variables torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK, "
                             "...); start with torchrun --nproc-per-node N train_net.py ...")
        return False
    if getattr(args, "ablation", None):
        raise ValueError("--ablation under torchrun: the harness starts one train_net.py per arm itself; run it as "
                         "one plain process (with --num-gpus N for each arm's processes)")
    given = launch_flags_given(args, parser)
    if given:
        raise ValueError(f"{' '.join(given)}: torchrun started the processes (its --nproc-per-node / --nnodes / "
                         "--node-rank / --rdzv-endpoint); drop these flags")
    return True


if __name__ == "__main__":
    from ablations.cli import add_ablation_arguments, run_ablation_from_args

    # --ablation <table> [--scale cpu|coco] [--seeds ...] [--eval-only] [--shard k/n]: run a paper ablation table
    # (every arm+seed as its own train_net.py subprocess) and rebuild docs/ablations.md; see ablations/ (beside
    # this file).
    parser = add_ablation_arguments(default_argument_parser())
    args = parser.parse_args()
    try:
        # torchrun --nproc-per-node N [--nnodes M ...] train_net.py ...: this process is one of the ranks
        env_launch = started_by_torchrun(args, parser)
    except ValueError as e:
        parser.error(str(e))
    if args.ablation:
        raise SystemExit(run_ablation_from_args(args))
    print("Command Line Args:", args)
    if env_launch:
        launch_from_env(main, args=(args,))
    else:
        launch(
            main,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(args,),
        )
