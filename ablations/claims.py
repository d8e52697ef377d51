"""Claims: which worker trains which arm+seed when several workers share one results directory (issue #26).

Before training a run, a worker claims it with a claim file beside the run's results file,
``<results>/<scale>/<table>/<arm>/seed<s>.claim.<g>`` (json: a random token, the owner, host, process id and
start, time claimed). ``<g>`` is the claim's generation: 0 for the first claim of a run, one more than the
highest present for each claim that takes over a dead one. The file is written under a temporary name and
hard-linked to its final name, which fails when that name exists: of two workers creating the same generation,
exactly one wins, and a claim file is never seen half-written. After creating its claim a worker lists the run's
claims again and withdraws if another live one is present (a worker that saw the run unclaimed a moment before
someone else took it over): so at most one live claim of a run goes on to train, whatever the timing.

A claim is live while its holder is: the holder touches its file every ``heartbeat_s`` seconds (`Claim.keep_alive`),
and removes it when the run has finished or failed. A claim is dead when
- its host is this host (same host name, boot and process namespace) and its process no longer exists (or the
  process id now belongs to a process started later), which is known at once; or
- its file was last touched more than ``timeout_s`` ago (another host, whose processes cannot be seen from here:
  the holder's machine died or lost the shared file system); the age is measured against the file system's own
  clock, so clocks of different hosts need not agree; or
- its owner is this worker's owner (a scheduler's task that was requeued: the previous incarnation of itself).
A dead claim is taken over by creating the next generation, so two workers recovering the same dead claim cannot
both win; the winner removes the dead files.

Nothing here imports torch or detectron2.
"""
import contextlib
import datetime
import json
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from typing import List, Optional

CLAIM_TIMEOUT_S = 600.0  # a claim of another host untouched for this long is dead
HEARTBEAT_S = 60.0  # how often a holder touches its claim (at most timeout / 4)


# ------------------------------------------------------------------------------------------------------------
# This process: host identity and liveness of process ids
# ------------------------------------------------------------------------------------------------------------
def _read(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def host_identity():
    """{"host", "boot_id", "pidns"}: processes with equal identities see the same process ids (Linux: boot id and
    pid namespace tell apart containers or reboots with one host name; None where the platform lacks them)."""
    try:
        pidns = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        pidns = None
    return {"host": socket.gethostname(), "boot_id": _read("/proc/sys/kernel/random/boot_id"), "pidns": pidns}


def process_start(pid):
    """The start time of process `pid` in clock ticks since boot (Linux), or None where unknown."""
    stat = _read(f"/proc/{pid}/stat")
    if not stat:
        return None
    try:
        return int(stat[stat.rindex(")") + 2:].split()[19])  # field 22; the command name may hold spaces
    except (ValueError, IndexError):
        return None


def process_alive(pid, start=None):
    """Whether process `pid` of this host exists and is not a zombie, and (when `start` is known) is the process
    that started then rather than a later one that reuses its id."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by another user
    stat = _read(f"/proc/{pid}/stat")
    if stat:
        if stat[stat.rindex(")") + 2:].startswith("Z"):
            return False
        if start is not None and process_start(pid) not in (None, start):
            return False
    return True


def fs_now(directory):
    """The current time by the clock of the file system holding `directory` (a new file's modification time),
    to compare with the heartbeats of claims written from other hosts."""
    os.makedirs(directory, exist_ok=True)
    probe = os.path.join(directory, f".clock-{uuid.uuid4().hex}")
    with open(probe, "w"):
        pass
    try:
        return os.stat(probe).st_mtime
    finally:
        os.unlink(probe)


# ------------------------------------------------------------------------------------------------------------
# Claim files
# ------------------------------------------------------------------------------------------------------------
@dataclass
class ClaimFile:
    path: str
    generation: int
    record: Optional[dict]  # None: unreadable (not a claim this module wrote)
    mtime: float

    def describe(self):
        r = self.record or {}
        owner = f", {r['owner']}" if r.get("owner") else ""
        return f"{r.get('host', '?')} pid {r.get('pid', '?')} since {r.get('claimed', '?')}{owner}"


def claim_prefix(result_file):
    """Claim files of a run are ``<results file without .json>.claim.<generation>``."""
    base = result_file[:-len(".json")] if result_file.endswith(".json") else result_file
    return base + ".claim."


def list_claims(result_file) -> List[ClaimFile]:
    """The run's claim files, by generation (files that vanish while being read are left out)."""
    prefix = claim_prefix(result_file)
    directory, stem = os.path.split(prefix)
    out = []
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return out
    for name in names:
        if not name.startswith(stem) or not name[len(stem):].isdigit():
            continue
        path = os.path.join(directory, name)
        try:
            mtime = os.stat(path).st_mtime
            with open(path) as f:
                record = json.load(f)
            if not isinstance(record, dict):
                record = None
        except FileNotFoundError:
            continue
        except (OSError, ValueError):
            record = None
        out.append(ClaimFile(path, int(name[len(stem):]), record, mtime))
    return sorted(out, key=lambda c: c.generation)


def claim_is_dead(claim, now, *, timeout_s=CLAIM_TIMEOUT_S, me=None, owner=None):
    """Whether `claim` (a ClaimFile) is dead, `now` being the file system's time (see the module docstring)."""
    me = me or host_identity()
    r = claim.record
    if r is not None:
        if owner is not None and r.get("owner") == owner:
            return True
        if all(r.get(k) == me[k] for k in ("host", "boot_id", "pidns")) and isinstance(r.get("pid"), int):
            if not process_alive(r["pid"], r.get("pid_start")):
                return True
    return now - claim.mtime > timeout_s


class Claim:
    """A claim this process holds (see `try_claim`)."""

    def __init__(self, path, record):
        self.path = path
        self.record = record
        self._stop = None

    @property
    def token(self):
        return self.record["token"]

    def touch(self):
        """The heartbeat: mark the claim as live now. False once the file is gone."""
        try:
            os.utime(self.path)
            return True
        except FileNotFoundError:
            return False

    def release(self):
        """Remove the claim file, if it is still this claim's."""
        self.stop_keep_alive()
        try:
            with open(self.path) as f:
                if json.load(f).get("token") != self.token:
                    return
            os.unlink(self.path)
        except (OSError, ValueError):
            pass

    def start_keep_alive(self, period_s=HEARTBEAT_S):
        """Touch the claim every `period_s` seconds in a background thread until released."""
        if self._stop is not None:
            return
        self._stop = threading.Event()

        def beat(stop=self._stop):
            while not stop.wait(period_s):
                if not self.touch():
                    return

        threading.Thread(target=beat, name=f"claim heartbeat {os.path.basename(self.path)}", daemon=True).start()

    def stop_keep_alive(self):
        if self._stop is not None:
            self._stop.set()
            self._stop = None

    @contextlib.contextmanager
    def kept_alive(self, period_s=HEARTBEAT_S):
        self.start_keep_alive(period_s)
        try:
            yield self
        finally:
            self.stop_keep_alive()


def _create_exclusive(path, record):
    """Create `path` holding `record` (json), complete, or raise FileExistsError if `path` exists."""
    tmp = f"{path}.tmp-{record['token']}"
    with open(tmp, "w") as f:
        json.dump(record, f)
        f.write("\n")
    try:
        os.link(tmp, path)  # atomic, and fails when `path` exists (also on NFS, unlike O_EXCL on old clients)
    finally:
        os.unlink(tmp)


def try_claim(result_file, *, owner=None, timeout_s=CLAIM_TIMEOUT_S, info=None):
    """Claim the run whose results go to `result_file`. Returns ``(Claim, None)`` when this process now holds it,
    else ``(None, holder)`` with a description of the live claim that holds it.

    `owner`: an id that survives requeues of a scheduler task (e.g. SLURM's "<array job>_<task>"): a claim of the
    same owner is this task's own from before its requeue, and is taken over at once. `info`: extra fields for
    the claim file (e.g. the shard). The caller checks the results file after claiming: a run that finished just
    before is claimable again.
    """
    directory = os.path.dirname(result_file)
    me = host_identity()
    now = fs_now(directory)
    existing = list_claims(result_file)
    for c in existing:
        if not claim_is_dead(c, now, timeout_s=timeout_s, me=me, owner=owner):
            return None, c.describe()
    generation = existing[-1].generation + 1 if existing else 0
    record = {
        "token": uuid.uuid4().hex, "owner": owner, **me, "pid": os.getpid(), "pid_start": process_start(os.getpid()),
        "claimed": datetime.datetime.now().isoformat(timespec="seconds"), "claimed_unix": time.time(),
        **(info or {}),
    }
    path = claim_prefix(result_file) + str(generation)
    try:
        _create_exclusive(path, record)
    except FileExistsError:
        holder = next((c for c in list_claims(result_file) if c.path == path), None)
        return None, holder.describe() if holder else "a worker that claimed it at the same moment"
    claim = Claim(path, record)
    # Another live claim now? Then someone claimed it between our listing and our claim: withdraw.
    now = fs_now(directory)
    others = [c for c in list_claims(result_file) if c.path != path]
    live = [c for c in others if not claim_is_dead(c, now, timeout_s=timeout_s, me=me, owner=owner)]
    if live:
        claim.release()
        return None, live[0].describe()
    for c in others:  # dead: the winner clears them away
        with contextlib.suppress(FileNotFoundError):
            os.unlink(c.path)
    return claim, None
