"""Checkpoints that a kill can never leave half-written (engineering, not a paper section).

detectron2's checkpointer writes ``model_XXXX.pth`` and ``last_checkpoint`` in place, so a run killed while
saving leaves a truncated file that ``--resume`` then fails to unpickle. `AtomicDetectionCheckpointer` writes
each file to a temporary sibling, flushes it to disk and renames it over the target (atomic on POSIX), and only
then points ``last_checkpoint`` at it. A damaged checkpoint file gives an error that names it and says what to do;
a write that fails (a full disk) names the file and leaves the previous checkpoint and ``last_checkpoint`` as they
were. A kill cannot run clean-up code, so the temporary files it leaves are removed when the next training run
claims the directory (`claim_output_dir`), which also keeps a second training process out of it.

`RNGStates` puts the global RNG states (torch, CUDA, numpy, ``random``) into each checkpoint so that a resumed
run draws what the uninterrupted run would have drawn (detectron2's RPN / RoI sampling uses torch's RNG).
"""
import contextlib
import errno
import fcntl
import glob
import logging
import os
import pickle
import random
import uuid
import zipfile

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer

__all__ = ["AtomicDetectionCheckpointer", "RNGStates", "atomic_open", "atomic_write", "claim_output_dir"]

logger = logging.getLogger(__name__)
_TMP_TAG = ".tmp-"


@contextlib.contextmanager
def atomic_open(path, mode="wb"):
    """Open a temporary file next to ``path`` for writing; on leaving the block, fsync it and rename it to
    ``path``.

    An ``Exception`` in the block or while writing (e.g. no space left on the device) is raised as an
    ``OSError`` naming ``path``; the file at ``path``, if any, is untouched and the temporary file removed.
    """
    tmp = os.path.join(os.path.dirname(path) or ".", f".{os.path.basename(path)}{_TMP_TAG}{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except Exception as e:
        raise OSError(
            f"Could not write {path} ({type(e).__name__}: {e}); is the disk full? The previous version of "
            "the file, if any, is unchanged."
        ) from e
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_write(path, write_fn, mode="wb"):
    """Call ``write_fn(f)`` on a file opened with `atomic_open`."""
    with atomic_open(path, mode) as f:
        write_fn(f)


def claim_output_dir(output_dir):
    """Make ``output_dir`` this process's training directory: fail if another live process holds it, then
    remove the temporary files that killed runs left there. Returns the open lock file: keep it while
    training (the lock dies with the process, so a killed run never blocks its resume)."""
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, ".train_lock")
    lock = open(path, "a+")
    try:
        # a POSIX record lock, not flock(): data-loader workers forked from this process must not inherit it,
        # or the workers a kill orphans would keep the resumed run out for a while
        fcntl.lockf(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno not in (errno.EACCES, errno.EAGAIN):
            raise
        lock.seek(0)
        holder = lock.read().strip() or "another process"
        lock.close()
        raise RuntimeError(
            f"OUTPUT_DIR {output_dir} is in use by a running training ({holder}); two runs writing one "
            "directory would overwrite each other's checkpoints. Wait for it, or set another OUTPUT_DIR."
        ) from None
    lock.seek(0)
    lock.truncate()
    lock.write(f"pid {os.getpid()}")
    lock.flush()
    stale = glob.glob(os.path.join(glob.escape(output_dir), f".*{_TMP_TAG}*"))
    for tmp in stale:
        os.remove(tmp)
    if stale:
        logger.info(f"Removed {len(stale)} temporary file(s) left in {output_dir} by an interrupted save.")
    return lock


class RNGStates:
    """Checkpointable global RNG states of this process, restored on load.

    Kept as tensors and plain numbers: detectron2 loads checkpoints with ``torch.load``'s default, which is
    ``weights_only=True`` on current torch and refuses numpy arrays.
    """

    def state_dict(self):
        _, keys, pos, has_gauss, gauss = np.random.get_state()
        version, internal, gauss_next = random.getstate()
        state = {
            "torch": torch.get_rng_state(),
            "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "gauss": float(gauss)},
            "python": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64),
                       "gauss_next": gauss_next},
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state):
        torch.set_rng_state(state["torch"])
        n = state["numpy"]
        np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
        p = state["python"]
        random.setstate((p["version"], tuple(p["internal"].tolist()), p["gauss_next"]))
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


class _AtomicLocalWrites:
    """A checkpointer's path manager whose writes to local files go through `atomic_open`; everything else,
    and every remote path, is the wrapped path manager's."""

    def __init__(self, path_manager):
        self.path_manager = path_manager

    def open(self, path, mode="r", **kwargs):
        if "w" in mode and "://" not in path and os.path.isdir(os.path.dirname(path) or "."):
            return atomic_open(path, mode)
        return self.path_manager.open(path, mode, **kwargs)

    def __getattr__(self, name):
        return getattr(self.path_manager, name)


def _loads(path):
    """Whether the checkpoint file at ``path`` unpickles (pickle for .pkl, torch.load otherwise)."""
    try:
        with open(path, "rb") as f:
            if path.endswith(".pkl"):
                pickle.load(f, encoding="latin1")
            else:
                torch.load(f, map_location="cpu")
        return True
    except Exception:
        return False


class AtomicDetectionCheckpointer(DetectionCheckpointer):
    """`DetectionCheckpointer` whose checkpoint files and ``last_checkpoint`` are written atomically on a local
    directory, and whose error for a truncated checkpoint names the file and what to do."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # fvcore's save and tag_last_checkpoint write through this path manager
        self.path_manager = _AtomicLocalWrites(self.path_manager)

    def load(self, path, *args, **kwargs):
        try:
            return super().load(path, *args, **kwargs)
        except (EOFError, RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as e:
            if not path or "://" in path or not os.path.isfile(path) or _loads(path):
                raise  # not a damaged file: an error of the model or of another checkpointable
            hint = (
                f"delete it, then either write the name of an earlier checkpoint into "
                f"{os.path.join(self.save_dir, 'last_checkpoint')} and run again with --resume, or train "
                "without --resume"
                if self.save_dir and os.path.dirname(os.path.abspath(path)) == os.path.abspath(self.save_dir)
                else "pass a complete checkpoint file (e.g. <OUTPUT_DIR>/model_final.pth)"
            )
            raise RuntimeError(
                f"Checkpoint file {path!r} is truncated or corrupt and cannot be loaded "
                f"({type(e).__name__}: {e}); {hint}."
            ) from e
