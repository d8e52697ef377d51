"""Replace a generated block between ``<!-- BEGIN name -->`` and ``<!-- END name -->`` in a markdown file."""
import os


def write_marked_block(path, name, text):
    begin, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
    with open(path) as f:
        s = f.read()
    if begin not in s or end not in s:
        raise SystemExit(f"{path} has no '{begin}' ... '{end}' block to write into")
    s = s[: s.index(begin) + len(begin)] + "\n" + text + "\n" + s[s.index(end):]
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(s)
    os.replace(tmp, path)  # a kill never leaves a half-written page
