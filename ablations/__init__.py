"""The experiment harness that reproduces the Mask R-CNN paper's Tables 2a-e, 4 and 5 with maskrcnn_plugin.

    python train_net.py --ablation 2c [--scale cpu|coco] [--seeds 0 1 2] [--eval-only] [config opts...]
    python train_net.py --ablation report         # only rebuild docs/ablations.md from the stored results

A top-level package beside train_net.py, not part of the installed plugin: it knows the repository's layout
(configs/ablations/, results/ablations/, output/ablations/, docs/), and maskrcnn_plugin's components never
import it. Each arm of a table is an ordinary detectron2 config, ``configs/ablations/<scale>/<table>/<arm>.yaml``
(runnable alone with ``--config-file``); the arms of a table share their bases and differ only in the ablated
component.

Modules:
    paths    repository paths (train_net.py, configs, results, outputs, docs)
    tables   the Arm / AblationTable types; loads tables/<key>.yaml and notes/*.md
    records  result / failure files, config hash, git commit, json writes, loading the stored results
    metrics  COCOEvaluator metrics, AP per IoU threshold, final training loss
    runner   one train_net.py subprocess per arm+seed (train or re-evaluate), a table's arms x seeds
    claims   claim files: one worker per arm+seed when several share a results directory, dead-claim takeover
    shards   --shard k/n: worker k's share of the grid, then help with the rest and recover dead workers' runs
    slurm    submitit tasks: a training as a SLURM job, the grid as a job array (tools/submit_slurm.py; needs submitit)
    report   statistics, docs/ablations.md, AP-vs-IoU plots, results/ablations/summary.json
    suite_time  the report's suite line: wall time one run at a time, missing runs, several workers' measured
                wall-clock and speed-up
    cli      the --ablation flags of train_net.py: run, then report

Adding a table = its arm configs + ``ablations/tables/<key>.yaml`` (arms, baseline, ablated keys, paper numbers,
note files) + its notes in ``ablations/notes/``; Tables 4 and 5 (keypoints) are examples whose metrics come
from COCOEvaluator's "keypoints" task (``kp_*`` in ``metrics.METRIC_SOURCES``).
"""
