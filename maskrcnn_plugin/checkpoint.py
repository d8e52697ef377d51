"""Checkpoints that a kill can never leave half-written (engineering, not a paper section).

detectron2's checkpointer writes ``model_XXXX.pth`` and ``last_checkpoint`` in place, so a run killed while
saving leaves a truncated file that ``--resume`` then fails to unpickle. `AtomicDetectionCheckpointer` writes
each file to a temporary sibling, flushes it to disk and renames it over the target (atomic on POSIX), and only
then points ``last_checkpoint`` at it. A damaged checkpoint file gives an error that names it and says what to do.
"""
import os
import pickle
import uuid
import zipfile

import torch
from detectron2.checkpoint import DetectionCheckpointer

__all__ = ["AtomicDetectionCheckpointer", "atomic_write"]


def atomic_write(path, write_fn, mode="wb"):
    """Call ``write_fn(f)`` on a temporary file next to ``path``, fsync it, then rename it to ``path``."""
    tmp = os.path.join(os.path.dirname(path) or ".", f".{os.path.basename(path)}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, mode) as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


class AtomicDetectionCheckpointer(DetectionCheckpointer):
    """`DetectionCheckpointer` whose ``save`` and ``tag_last_checkpoint`` are atomic on a local directory."""

    def _local(self):
        return bool(self.save_dir) and os.path.isdir(self.save_dir)

    def save(self, name, **kwargs):
        if not self.save_dir or not self.save_to_disk:
            return
        if not self._local():  # remote storage (path_manager handlers): keep detectron2's behaviour
            return super().save(name, **kwargs)
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info(f"Saving checkpoint to {save_file}")
        atomic_write(save_file, lambda f: torch.save(data, f))
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename):
        if not self._local():
            return super().tag_last_checkpoint(last_filename_basename)
        atomic_write(os.path.join(self.save_dir, "last_checkpoint"),
                     lambda f: f.write(last_filename_basename), mode="w")

    def _load_file(self, filename):
        try:
            return super()._load_file(filename)
        except (EOFError, RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as e:
            hint = (
                f"delete it, then either write the name of an earlier checkpoint into "
                f"{os.path.join(self.save_dir, 'last_checkpoint')} and run again with --resume, or train "
                "without --resume"
                if self.save_dir and os.path.dirname(os.path.abspath(filename)) == os.path.abspath(self.save_dir)
                else "pass a complete checkpoint file (e.g. <OUTPUT_DIR>/model_final.pth)"
            )
            raise RuntimeError(
                f"Checkpoint file {filename!r} is truncated or corrupt and cannot be loaded "
                f"({type(e).__name__}: {e}); {hint}."
            ) from e
