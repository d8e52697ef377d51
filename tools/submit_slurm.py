#!/usr/bin/env python
"""Submit to SLURM through submitit (issue #26; docs/scale_out.md): one training on several machines, or the
ablation grid as a job array. ``--cluster local`` runs the same jobs as processes of this machine.

    # one training: 2 nodes x 8 GPUs, one process per GPU; requeued with --resume on preemption / time-out
    python tools/submit_slurm.py train --nodes 2 --gpus-per-node 8 --partition gpu --time 72:00:00 \\
        -- --config-file configs/ablations/coco/2a/r101_fpn.yaml SOLVER.CHECKPOINT_PERIOD 5000
    # the ablation grid: one array task per missing arm+seed (8 GPUs each), the report rebuilt by the last one
    python tools/submit_slurm.py ablation --ablation 2c --scale coco --seeds 0 1 2 --gpus-per-node 8 \\
        --partition gpu --time 48:00:00
    # the CPU grid on CPU nodes: one task per arm+seed, 2 cores each
    python tools/submit_slurm.py ablation --ablation all --scale cpu --cpus-per-task 2 --partition cpu --time 1:00:00

The submitit logs and pickles go to --folder (default output/submitit/); `squeue` / `sacct` show the jobs.
"""
import argparse
import os
import shlex
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def add_executor_arguments(parser, default_time):
    g = parser.add_argument_group("where and how long (submitit / SLURM)")
    g.add_argument("--cluster", choices=("slurm", "local"), default="slurm",
                   help="slurm (sbatch), or local: the same job as processes of this machine (trying it out, tests)")
    g.add_argument("--folder", default=os.path.join(REPO, "output", "submitit"),
                   help="submitit's logs and pickles (on a file system every node sees)")
    g.add_argument("--partition", default=None)
    g.add_argument("--time", default=default_time, help="time limit per job: minutes, HH:MM:SS or D-HH:MM "
                   f"(default {default_time}); at the limit the job is requeued and resumes")
    g.add_argument("--nodes", type=int, default=1)
    g.add_argument("--gpus-per-node", type=int, default=0)
    g.add_argument("--tasks-per-node", type=int, default=None,
                   help="processes per node (train: default --gpus-per-node, or 1 without GPUs; ablation: 1)")
    g.add_argument("--cpus-per-task", type=int, default=None)
    g.add_argument("--mem-gb", type=float, default=None)
    g.add_argument("--account", default=None)
    g.add_argument("--qos", default=None)
    g.add_argument("--constraint", default=None)
    g.add_argument("--max-requeues", type=int, default=3,
                   help="requeues after a time-out (preemptions are always requeued); default 3")
    g.add_argument("--wait", action="store_true", help="wait for the job(s) and print their outcome")


def executor_kwargs(args, tasks_per_node):
    from ablations.slurm import parse_time_min

    return dict(cluster=args.cluster, folder=args.folder, nodes=args.nodes, tasks_per_node=tasks_per_node,
                gpus_per_node=args.gpus_per_node, cpus_per_task=args.cpus_per_task, time_min=parse_time_min(args.time),
                mem_gb=args.mem_gb, partition=args.partition, account=args.account, qos=args.qos,
                constraint=args.constraint, max_requeues=args.max_requeues)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    rest = []
    if "--" in argv:  # what follows goes to train_net.py (train) or is config overrides (ablation)
        i = argv.index("--")
        argv, rest = argv[:i], argv[i + 1:]
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    p_train = sub.add_parser("train", help="one train_net.py training, nodes x tasks-per-node processes; "
                                           "train_net.py's arguments after --")
    add_executor_arguments(p_train, "24:00:00")
    p_abl = sub.add_parser("ablation", help="the missing arm+seed runs of an ablation table as a job array; "
                                            "config overrides for every arm after --")
    add_executor_arguments(p_abl, "4:00:00")
    from ablations.cli import split_seeds_and_opts
    from ablations.paths import CONFIGS_ROOT, DOCS_DIR, OUTPUT_ROOT, RESULTS_ROOT
    from ablations.tables import SCALES, TABLES

    p_abl.add_argument("--ablation", required=True, metavar="TABLE", help=", ".join(sorted(TABLES)) + " or all")
    p_abl.add_argument("--scale", choices=SCALES, default="cpu")
    p_abl.add_argument("--seeds", nargs="+", default=None, metavar="SEED")
    p_abl.add_argument("--arms", nargs="+", default=None, metavar="ARM")
    p_abl.add_argument("--num-gpus", type=int, default=None,
                       help="processes of each arm's train_net.py (default: --gpus-per-node, or 1)")
    p_abl.add_argument("--array-parallelism", type=int, default=None, help="tasks running at once (SLURM's %%N)")
    p_abl.add_argument("--results-dir", default=RESULTS_ROOT)
    p_abl.add_argument("--ablation-output", default=OUTPUT_ROOT)
    p_abl.add_argument("--docs-dir", default=DOCS_DIR)
    p_abl.add_argument("--ablation-configs", default=CONFIGS_ROOT)
    args = parser.parse_args(argv)

    from ablations import slurm

    try:
        if args.what == "train":
            tasks = args.tasks_per_node or max(1, args.gpus_per_node)
            job = slurm.submit_training(rest, **executor_kwargs(args, tasks))
            print(f"submitted {args.nodes * tasks} process(es): job {job.job_id}; logs in {args.folder}")
            jobs = [job]
        else:
            seeds, opts = split_seeds_and_opts(args.seeds, rest)
            tables = [t.key for t in TABLES.values() if args.scale in t.arms] if args.ablation == "all" else [
                args.ablation]
            if args.arms and len(tables) != 1:
                raise ValueError("--arms needs one table (--ablation 2c, not all)")
            suite = "python tools/submit_slurm.py ablation --ablation {} --scale {} --seeds {}{}{}".format(
                args.ablation, args.scale, " ".join(map(str, seeds)), f" --arms {' '.join(args.arms)}" if args.arms
                else "", (" -- " + " ".join(shlex.quote(o) for o in opts)) if opts else "")
            kw = executor_kwargs(args, args.tasks_per_node or 1)
            kw["array_parallelism"] = args.array_parallelism
            jobs = slurm.submit_ablation_array(
                tables, args.scale, seeds, arms=args.arms, opts=opts,
                num_gpus=args.num_gpus or max(1, args.gpus_per_node), configs_root=args.ablation_configs,
                results_root=args.results_dir, output_root=args.ablation_output, docs_dir=args.docs_dir,
                suite_command=suite, **kw)
    except (ValueError, KeyError) as e:
        parser.error(str(e))
    if args.wait:
        failed = 0
        for job in jobs:
            try:
                print(f"job {job.job_id}: {job.results()}")  # one result per task
            except Exception as e:  # the job's traceback, as submitit reports it
                failed += 1
                print(f"job {job.job_id} FAILED: {e}")
        return 1 if failed else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
