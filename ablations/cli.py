"""The command line of the ablation harness: ``python train_net.py --ablation ...`` (or ``python -m ablations.cli``).

    python train_net.py --ablation 2c [--scale cpu|coco] [--seeds 0 1 2] [--eval-only] [config opts...]
    python train_net.py --ablation 5 --scale cpu  # keypoints: RoIPool vs RoIAlign (Table 4: keypoint & mask)
    python train_net.py --ablation all            # every table of the scale
    python train_net.py --ablation report         # only rebuild docs/ablations.md from the stored results
    python train_net.py --ablation all --shard 1/2   # worker 1 of 2 on one results directory (shards.py)

Runs the arms (runner.py; with --shard, shards.py), then rebuilds the report (report.py) from all stored results.
"""
import argparse
import shlex
import sys

from .claims import CLAIM_TIMEOUT_S
from .paths import CONFIGS_ROOT, DOCS_DIR, OUTPUT_ROOT, RESULTS_ROOT, repo_relpath
from .report import write_report
from .runner import run_table
from .shards import parse_shard, run_shard, sigterm_as_exit
from .tables import DEFAULT_SEEDS, SCALES, TABLES, get_table


def add_ablation_arguments(parser: argparse.ArgumentParser):
    """Add the --ablation flags to detectron2's default_argument_parser()."""
    g = parser.add_argument_group("ablations (the ablations package beside train_net.py)")
    g.add_argument("--ablation", metavar="TABLE", default=None,
                   help="run every arm of a paper ablation table: " + ", ".join(sorted(TABLES))
                        + ", 'all', or 'report' (only rebuild docs/ablations.md)")
    g.add_argument("--scale", choices=SCALES, default="cpu", help="configs/ablations/<scale> (default cpu)")
    # Strings, so that config overrides after the seeds are not swallowed as invalid ints (see split below).
    g.add_argument("--seeds", nargs="+", default=None, metavar="SEED", help="seeds (default 0 1 2)")
    g.add_argument("--arms", nargs="+", default=None, metavar="ARM",
                   help="only these arms of the table (e.g. roipool roialign_avg); default: all")
    g.add_argument("--results-dir", default=RESULTS_ROOT, help="where the per-arm results json go")
    g.add_argument("--ablation-output", default=OUTPUT_ROOT, help="checkpoints / logs of the arms")
    g.add_argument("--docs-dir", default=DOCS_DIR, help="where ablations.md and images/ are written")
    g.add_argument("--ablation-configs", default=CONFIGS_ROOT, help="root of the arm configs")
    g.add_argument("--shard", metavar="K/N", default=None,
                   help="worker K of N (K = 1..N) on one results directory: run the K-th share of the missing "
                        "arm+seed runs, claiming each, then help with the rest (see docs/scale_out.md)")
    g.add_argument("--shard-only", action="store_true",
                   help="with --shard: only the K-th share (machines that do not share --results-dir; merge the "
                        "results trees afterwards)")
    g.add_argument("--claim-timeout", type=float, default=CLAIM_TIMEOUT_S, metavar="SECONDS",
                   help="with --shard: a claim of another host untouched this long is dead and taken over "
                        f"(default {CLAIM_TIMEOUT_S:.0f}; claims of this host are checked by process id)")
    g.add_argument("--shard-poll", type=float, default=60.0, metavar="SECONDS",
                   help="with --shard: how often a worker that has nothing left to claim checks the runs other "
                        "workers hold (default 60)")
    return parser


def split_seeds_and_opts(seed_tokens, opts):
    """argparse lets `--seeds 0 1 MODEL.X v` swallow the config overrides: split leading ints from the rest."""
    seeds, rest = [], []
    for i, tok in enumerate(seed_tokens or []):
        try:
            seeds.append(int(tok))
        except ValueError:
            rest = list(seed_tokens[i:])
            break
    opts = [o for o in rest + list(opts or []) if o != "--"]
    return (seeds or list(DEFAULT_SEEDS)), opts


def run_ablation_from_args(args, runner=None, log=print):
    """Entry point of `train_net.py --ablation ...`; returns the process exit status (1 if an arm failed)."""
    seeds, opts = split_seeds_and_opts(args.seeds, args.opts)
    if args.ablation == "report":
        write_report(results_root=args.results_dir, docs_dir=args.docs_dir, configs_root=args.ablation_configs,
                     log=log)
        return 0
    if args.config_file:
        raise SystemExit("--ablation takes its configs from configs/ablations/<scale>/<table>/; drop --config-file")
    tables = [t for t in TABLES.values() if args.scale in t.arms] if args.ablation == "all" else [
        get_table(args.ablation)]
    arms = getattr(args, "arms", None)
    if arms and len(tables) != 1:
        raise SystemExit("--arms needs one table (--ablation 2c, not all)")
    shard = getattr(args, "shard", None)
    if shard is not None:
        try:
            shard = parse_shard(shard)
        except ValueError as e:
            raise SystemExit(str(e)) from None
        if args.eval_only:
            raise SystemExit("--shard runs missing trainings; --eval-only re-evaluates checkpoints: drop one of them")
        for flag, value in (("--claim-timeout", args.claim_timeout), ("--shard-poll", args.shard_poll)):
            if not value > 0:
                raise SystemExit(f"{flag} {value}: must be a positive number of seconds")
    elif getattr(args, "shard_only", False):
        raise SystemExit("--shard-only needs --shard K/N")
    suite = "python train_net.py --ablation {} --scale {} --seeds {}{}{}{}{}".format(
        args.ablation, args.scale, " ".join(map(str, seeds)), f" --arms {' '.join(arms)}" if arms else "",
        " --eval-only" if args.eval_only else "",
        f" --shard {args.shard}" + (" --shard-only" if args.shard_only else "") if shard else "",
        (" " + " ".join(shlex.quote(o) for o in opts)) if opts else "")
    outcomes = []
    if shard is not None:
        with sigterm_as_exit():
            outcomes = run_shard(
                [t.key for t in tables], args.scale, seeds, shard, arms=arms, opts=opts, only_own=args.shard_only,
                claim_timeout_s=args.claim_timeout, configs_root=args.ablation_configs,
                results_root=args.results_dir, output_root=args.ablation_output, num_gpus=args.num_gpus,
                suite_command=suite, runner=runner, log=log, poll_s=args.shard_poll,
            )
    else:
        for tab in tables:
            outcomes += run_table(
                tab.key, args.scale, seeds, arms=arms, eval_only=args.eval_only, opts=opts, num_gpus=args.num_gpus,
                configs_root=args.ablation_configs, results_root=args.results_dir, output_root=args.ablation_output,
                suite_command=suite, runner=runner, log=log,
            )
    write_report(results_root=args.results_dir, docs_dir=args.docs_dir, configs_root=args.ablation_configs, log=log)
    failed = [o for o in outcomes if o.status == "failed"]
    for o in failed:
        log(f"FAILED: {o.arm} seed {o.seed} (log: {repo_relpath(o.log)})")
    statuses = ("done", "shared", "skipped", "failed", "missing") + (("claimed",) if shard else ())
    counts = {k: sum(o.status == k for o in outcomes) for k in statuses}
    log("ablation summary: " + ", ".join(f"{v} {k}" for k, v in counts.items()))
    return 1 if failed else 0


def main(argv=None):
    """`python -m ablations.cli ...`: same flags as train_net.py --ablation."""
    from detectron2.engine import default_argument_parser

    parser = add_ablation_arguments(default_argument_parser())
    args = parser.parse_args(argv)
    if not args.ablation:
        parser.error("--ablation TABLE is required")
    return run_ablation_from_args(args)


if __name__ == "__main__":
    sys.exit(main())
