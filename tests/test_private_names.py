"""Private detectron2 / fvcore names are used in maskrcnn_plugin/compat.py only (issue #24): an import of an
underscore name, an underscore attribute of an imported detectron2 / fvcore module or class, or a call of an
underscore method through super() anywhere else in the plugin, the entry points, the harness or the tools fails
this test with the file and line."""
import ast
import glob
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALLOWED = {os.path.join("maskrcnn_plugin", "compat.py")}
SOURCES = ["maskrcnn_plugin/**/*.py", "ablations/*.py", "tools/*.py", "benchmarks/*.py", "train_net.py", "demo.py"]


def _private(name):
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _is_upstream(module):
    return module.split(".")[0] in ("detectron2", "fvcore")


def private_uses(source, filename):
    tree = ast.parse(source, filename)
    upstream = set()  # local names bound to detectron2 / fvcore modules or objects
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if _is_upstream(alias.name):
                    upstream.add(alias.asname or alias.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and _is_upstream(node.module):
            for alias in node.names:
                if _private(alias.name):
                    found.append((node.lineno, f"from {node.module} import {alias.name}"))
                upstream.add(alias.asname or alias.name)
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute) or not _private(node.attr):
            continue
        base = node.value
        if isinstance(base, ast.Name) and base.id in upstream:
            found.append((node.lineno, f"{base.id}.{node.attr}"))
        elif isinstance(base, ast.Call) and isinstance(base.func, ast.Name) and base.func.id == "super":
            found.append((node.lineno, f"super().{node.attr}"))
    return found


def test_the_checker_finds_each_kind_of_private_use():
    source = (
        "import detectron2.utils.comm as comm\nfrom detectron2.engine.launch import _find_free_port\n"
        "from detectron2.modeling import GeneralizedRCNN\n"
        "comm._LOCAL_PROCESS_GROUP = 1\nGeneralizedRCNN._postprocess(1, 2, 3)\n"
        "class A(GeneralizedRCNN):\n    def f(self):\n        return super()._move_to_current_device(1)\n"
        "import os\nos._exit\nself_made = 1\n"
    )
    assert [line for line, _ in private_uses(source, "x.py")] == [2, 4, 5, 8]


def test_no_private_detectron2_names_outside_the_compat_module():
    files = sorted({f for pattern in SOURCES for f in glob.glob(os.path.join(REPO, pattern), recursive=True)})
    assert len(files) > 20
    offenders = []
    for path in files:
        rel = os.path.relpath(path, REPO)
        if rel in ALLOWED:
            continue
        with open(path) as f:
            offenders += [f"{rel}:{line}: {what}" for line, what in private_uses(f.read(), rel)]
    assert not offenders, "private detectron2 / fvcore names (move them into maskrcnn_plugin/compat.py):\n" + "\n".join(
        offenders
    )
