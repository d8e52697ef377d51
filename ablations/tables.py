"""The ablation tables: the `Arm` / `AblationTable` types and the loading of their data.

Each table is one file, ``ablations/tables/<key>.yaml`` (its arms per scale, baseline, ablated config keys,
metrics, the paper's numbers and the names of its note files; the fields are described in
``ablations/tables/README.md``); the notes are text files in ``ablations/notes/``. Both are read once, at
import, into ``TABLES`` (key -> AblationTable, in the report's order), ``PAPER_TABLES`` and ``PAPER_GAINS``.

The paper numbers are transcribed from ``shared/reference/paper_tables.md`` (beside the repository:
``../shared/reference/``), the project's only source for paper figures; ``tests/test_ablations.py`` parses
that file and checks every number against it. All values are AP in percent: mask AP unless the metric is
prefixed ``box_`` (Table 2d's "AP bb" columns) or ``kp_`` (keypoint AP, Tables 4 and 5: "AP kp", AP50, AP75,
APM, APL). Table 2 and Table 5 are COCO minival, Table 4 is COCO test-dev. A missing metric means the paper
does not report it (the class-agnostic result of Table 2b is given in the text as AP only; Table 4 has
keypoint AP only). Layout: ``PAPER_TABLES[table]["rows"][row] = {metric: value}``, where ``row`` is the row
label of the md file (first column).
"""
import os
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import yaml

TABLES_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tables")
NOTES_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "notes")

SCALES = ("cpu", "coco")
DEFAULT_SEEDS = (0, 1, 2)
DEFAULT_METRICS = ("AP", "AP50", "AP75")
# what a table without `protocol` trains under at each scale (configs/Base-Shapes-RCNN.yaml, Base-Ablation-COCO)
USUAL_PROTOCOL = {"cpu": "from scratch", "coco": "ImageNet-pretrained"}
PAPER_SOURCE = "shared/reference/paper_tables.md (Mask R-CNN, arXiv 1703.06870, Tables 2, 3, 4, 5)"


@dataclass(frozen=True)
class Arm:
    name: str  # file stem of configs/ablations/<scale>/<table>/<name>.yaml and results dir name
    label: str  # what the report calls it
    paper_row: Optional[str]  # row of PAPER_TABLES[table.paper_key] it reproduces (None: no paper number)
    # the arm its gains are measured against (None: the scale's baseline); Table 3's multi-task gain is Mask
    # R-CNN over the RoIAlign detector, not over the table's RoIPool baseline
    gain_over: Optional[str] = None


@dataclass
class AblationTable:
    key: str
    title: str
    arms: Dict[str, List[Arm]]  # scale -> arms, baseline included
    baseline: Dict[str, str]  # scale -> arm name the gains are measured against
    # scale -> config keys (or key prefixes ending with ".") the arms may differ in; tests check this.
    ablated_keys: Dict[str, Tuple[str, ...]]
    metrics: Tuple[str, ...] = DEFAULT_METRICS
    plot_iou: bool = False
    notes: Dict[str, str] = field(default_factory=dict)  # scale -> how the setup differs from the paper
    paper_table: Optional[str] = None  # key into PAPER_TABLES (default: key)
    # the training protocol when it is not the scale's usual one (e.g. "pretrained"): the table is then
    # `paper_table`'s arms under that protocol, and the report sets their gains side by side
    protocol: Optional[str] = None

    def arms_for(self, scale):
        if scale not in self.arms:
            raise ValueError(f"Table {self.key} has no {scale!r} scale (has {sorted(self.arms)})")
        return self.arms[scale]

    @property
    def paper_key(self):
        return self.paper_table or self.key


# ------------------------------------------------------------------------------------------------------------
# Loading the data files
# ------------------------------------------------------------------------------------------------------------
_TABLE_FIELDS = {"title", "metrics", "plot_iou", "paper_table", "protocol", "scales", "paper"}
_SCALE_FIELDS = {"baseline", "ablated_keys", "note", "arms", "same_as", "labels"}
_ARM_FIELDS = {"name", "label", "paper_row", "gain_over"}


def read_note(*names, notes_dir=NOTES_DIR):
    """The text of one or more note files, joined by a space.

    A note file is one paragraph of Markdown: its line breaks are read as spaces (as Markdown renders them),
    so the report prints it as one line however the file is wrapped."""
    parts = []
    for name in names:
        with open(os.path.join(notes_dir, name), encoding="utf-8") as f:
            lines = [ln.strip() for ln in f.read().strip().splitlines()]
        if "" in lines:
            raise ValueError(f"note {name}: a note is one paragraph (no blank lines), the report prints it on one line")
        parts.append(" ".join(lines))
    return " ".join(parts)


def _scale_spec(key, scales, scale):
    """The scale's fields, with ``same_as: <scale>`` resolved: that scale's arms, baseline and ablated keys
    (not its note), each arm's label replaced where ``labels: {arm: label}`` names it."""
    spec = dict(scales[scale])
    unknown = set(spec) - _SCALE_FIELDS
    if unknown:
        raise ValueError(f"ablation table {key}, scale {scale}: unknown fields {sorted(unknown)}")
    source = spec.pop("same_as", None)
    if source is not None:
        for name in ("arms", "baseline", "ablated_keys"):
            if name in spec:
                raise ValueError(f"ablation table {key}, scale {scale}: same_as: {source} and {name} both given")
            spec[name] = scales[source][name]
    labels = spec.pop("labels", {})
    for a in spec["arms"]:
        unknown = set(a) - _ARM_FIELDS
        if unknown:
            raise ValueError(f"ablation table {key}, scale {scale}, arm {a.get('name')!r}: unknown fields "
                             f"{sorted(unknown)} (known: {', '.join(sorted(_ARM_FIELDS))})")
    arms = [Arm(a["name"], labels.get(a["name"], a["label"]), a["paper_row"], a.get("gain_over"))
            for a in spec["arms"]]
    names = {a.name for a in arms}
    unknown_labels = set(labels) - names
    if unknown_labels:
        raise ValueError(f"ablation table {key}, scale {scale}: labels for unknown arms {sorted(unknown_labels)}")
    if spec["baseline"] not in names:
        raise ValueError(f"ablation table {key}, scale {scale}: baseline {spec['baseline']!r} is not an arm")
    for a in arms:
        if a.gain_over is not None and (a.gain_over not in names or a.gain_over == a.name):
            raise ValueError(f"ablation table {key}, scale {scale}, arm {a.name}: gain_over {a.gain_over!r} is "
                             f"not another arm (arms: {', '.join(sorted(names))})")
    return arms, spec["baseline"], tuple(spec["ablated_keys"]), spec.get("note")


def load_table(path, notes_dir=NOTES_DIR):
    """(AblationTable, paper section or None) of one table file; its key is the file's stem."""
    key = os.path.splitext(os.path.basename(path))[0]
    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f)
    unknown = set(data) - _TABLE_FIELDS
    if unknown:
        raise ValueError(f"ablation table {key}: unknown fields {sorted(unknown)}")
    arms, baseline, ablated_keys, notes = {}, {}, {}, {}
    for scale in data["scales"]:
        if scale not in SCALES:
            raise ValueError(f"ablation table {key}: unknown scale {scale!r} (known: {', '.join(SCALES)})")
        arms[scale], baseline[scale], ablated_keys[scale], note = _scale_spec(key, data["scales"], scale)
        if note:
            notes[scale] = read_note(*note, notes_dir=notes_dir)
    table = AblationTable(
        key=key, title=data["title"], arms=arms, baseline=baseline, ablated_keys=ablated_keys,
        metrics=tuple(data.get("metrics", DEFAULT_METRICS)), plot_iou=bool(data.get("plot_iou", False)),
        notes=notes, paper_table=data.get("paper_table"), protocol=data.get("protocol"),
    )
    if table.protocol and not table.paper_table:
        raise ValueError(f"ablation table {key}: protocol {table.protocol!r} needs paper_table (the table whose "
                         "arms it trains under that protocol)")
    return table, data.get("paper")


def _report_order(path):
    """Tables in the report: by number, then by the rest of the key ("2a" < "2a_2x" < "2b" < "4" < "10")."""
    key = os.path.splitext(os.path.basename(path))[0]
    m = re.match(r"(\d*)(.*)", key)
    return int(m.group(1) or 0), m.group(2)


def load_tables(tables_dir=TABLES_DIR, notes_dir=NOTES_DIR):
    """(TABLES, PAPER_TABLES, PAPER_GAINS) from every ``<key>.yaml`` in `tables_dir`."""
    tables, papers, gains = {}, {}, {}
    paths = [os.path.join(tables_dir, n) for n in os.listdir(tables_dir) if n.endswith(".yaml")]
    for path in sorted(paths, key=_report_order):
        table, paper = load_table(path, notes_dir)
        tables[table.key] = table
        if paper is not None:
            papers[table.key] = {"title": paper["title"], "rows": paper["rows"]}
            if "gains" in paper:
                gains[table.key] = paper["gains"]
    return tables, papers, gains


TABLES, PAPER_TABLES, PAPER_GAINS = load_tables()
CPU_COMMON_NOTE = read_note("cpu_common.md")
COCO_COMMON_NOTE = read_note("coco_common.md")


def get_table(key):
    key = str(key)
    key = key[len("table"):] if key.lower().startswith("table") else key
    if key not in TABLES:
        raise KeyError(f"Unknown ablation table {key!r}; known: {', '.join(sorted(TABLES))}")
    return TABLES[key]


def check_arm_names(tab, scale, arms):
    """Raise ValueError naming any of `arms` (--arms) that is not an arm of `tab` at `scale`."""
    names = [a.name for a in tab.arms_for(scale)]
    unknown = sorted(set(arms or ()) - set(names))
    if unknown:
        raise ValueError(f"--arms {' '.join(unknown)}: not an arm of table {tab.key} at scale {scale}; "
                         f"its arms are {', '.join(names)}")


def paper_value(table, row, metric):
    """The paper's value of `metric` for `row` of `table`, or None when the paper does not report it."""
    if row is None:
        return None
    return PAPER_TABLES[table]["rows"].get(row, {}).get(metric)
