"""Data-parallel launch: detectron2's ``launch`` on GPUs (NCCL), the same over gloo processes on CPUs, and the
processes that ``torchrun`` (or a cluster scheduler) started, joined through ``env://``.

detectron2's ``launch`` insists on CUDA. `launch` keeps detectron2's signature and, when CUDA is absent, starts
the processes itself with the gloo backend and sets up detectron2's per-machine process group. Nothing changes
on GPUs. detectron2's DefaultTrainer cannot wrap a CPU model for data parallelism (its ``create_ddp_model`` passes
device ids, which DistributedDataParallel rejects on the CPU); train_net.py's Trainer builds itself with
``compat.init_default_trainer_without_device_ids`` there, which a DefaultTrainer subclass of your own can call too.

detectron2's ``launch`` always starts the processes itself, so it cannot join processes that ``torchrun
--nproc-per-node N --nnodes M ...`` started (each with ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT`` in its environment). `torchrun_env` reads those
variables and `launch_from_env` does, in the calling process, what detectron2's worker does in each process it
starts: the process group (``env://``; NCCL with CUDA, gloo without), detectron2's per-machine group, the
device (GPU) or the thread count (CPU), then ``main_func``.
"""
import datetime
import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.engine.launch import launch as d2_launch
from detectron2.utils import comm

from .compat import create_local_process_group

__all__ = ["launch", "launch_from_env", "torchrun_env", "TorchrunEnv", "TORCHRUN_VARIABLES"]

DEFAULT_TIMEOUT = datetime.timedelta(minutes=30)
# What torchrun sets in every process it starts (and what env:// initialisation reads).
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def launch(main_func, num_gpus_per_machine, num_machines=1, machine_rank=0, dist_url=None, args=(),
           timeout=DEFAULT_TIMEOUT):
    """Run ``main_func(*args)`` in ``num_gpus_per_machine`` processes on each of ``num_machines`` machines.

    On a machine without CUDA, ``num_gpus_per_machine`` is the number of CPU worker processes (gloo backend);
    each gets ``cores // num_gpus_per_machine`` torch threads. ``dist_url`` as in detectron2: "auto"
    (single machine, free local port) or e.g. "tcp://<machine 0 address>:<port>" on every machine. For
    processes started by torchrun (``env://``) use `launch_from_env`.
    """
    if dist_url == "env://":
        raise ValueError("dist_url='env://' means the processes were started by torchrun (or a scheduler): "
                         "call launch_from_env in each of them instead of launch, which starts processes itself")
    world_size = num_machines * num_gpus_per_machine
    if world_size == 1 or torch.cuda.is_available():
        return d2_launch(main_func, num_gpus_per_machine, num_machines=num_machines,
                         machine_rank=machine_rank, dist_url=dist_url, args=args, timeout=timeout)
    if dist_url == "auto":
        if num_machines != 1:
            raise ValueError("dist_url='auto' only works on one machine; pass --dist-url tcp://<host>:<port>")
        dist_url = f"tcp://127.0.0.1:{free_local_port()}"
    mp.start_processes(
        _cpu_worker,
        nprocs=num_gpus_per_machine,
        args=(main_func, num_machines, num_gpus_per_machine, machine_rank, dist_url, args, timeout),
        daemon=False,
        start_method="spawn",
    )


def free_local_port():
    """A TCP port that is free on this machine now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


def cpu_threads_per_process(processes_on_this_machine):
    """Torch threads for each of N processes that share this machine's cores (at least 1).

    The cores are those this process may run on (its CPU affinity, which a scheduler such as SLURM restricts
    to the job's share), or all of the machine's where the platform cannot tell."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, processes_on_this_machine))


def _cpu_worker(local_rank, main_func, num_machines, per_machine, machine_rank, dist_url, args, timeout):
    # Processes sharing a machine's cores must not each start cpu_count threads.
    torch.set_num_threads(cpu_threads_per_process(per_machine))
    dist.init_process_group(backend="gloo", init_method=dist_url, world_size=num_machines * per_machine,
                            rank=machine_rank * per_machine + local_rank, timeout=timeout)
    create_local_process_group(num_machines, per_machine, machine_rank)
    comm.synchronize()
    main_func(*args)


# ------------------------------------------------------------------------------------------------------------
# Processes started by torchrun (or a scheduler that sets the same variables): env://
# ------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TorchrunEnv:
    """The place of this process in a job that torchrun started (read by `torchrun_env`)."""
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int  # processes on this machine
    machine_rank: int
    master_addr: str
    master_port: int

    @property
    def num_machines(self):
        return self.world_size // self.local_world_size


def _int_var(environ, name):
    value = environ[name]
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def torchrun_env(environ=None):
    """This process's `TorchrunEnv` when it was started by torchrun, else None.

    Started by torchrun means that any of ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` is set; then all of
    ``TORCHRUN_VARIABLES`` must be, consistently, or a ValueError names what is missing or wrong. Every machine
    must run the same number of processes (torchrun's ``--nproc-per-node``) with consecutive ranks, as
    detectron2's per-machine process group assumes; the machine's index is torchrun's ``GROUP_RANK`` when set.
    """
    environ = os.environ if environ is None else environ
    if not any(name in environ for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK")):
        return None
    missing = [name for name in TORCHRUN_VARIABLES if not environ.get(name)]
    if missing:
        raise ValueError(
            f"env:// launch: the environment sets {', '.join(n for n in TORCHRUN_VARIABLES if environ.get(n))} "
            f"but not {', '.join(missing)}; start train_net.py with torchrun (e.g. torchrun --nproc-per-node 2 "
            "train_net.py ...), which sets all of " + ", ".join(TORCHRUN_VARIABLES))
    rank, world, local_rank, local_world, port = (_int_var(environ, n) for n in (
        "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_PORT"))
    if not 0 <= rank < world:
        raise ValueError(f"env:// launch: RANK={rank} is not in [0, WORLD_SIZE={world})")
    if not 0 <= local_rank < local_world:
        raise ValueError(f"env:// launch: LOCAL_RANK={local_rank} is not in [0, LOCAL_WORLD_SIZE={local_world})")
    if world % local_world:
        raise ValueError(f"env:// launch: WORLD_SIZE={world} is not a multiple of LOCAL_WORLD_SIZE={local_world}; "
                         "every machine must run the same number of processes (torchrun --nproc-per-node)")
    machine_rank = _int_var(environ, "GROUP_RANK") if environ.get("GROUP_RANK") else rank // local_world
    if rank != machine_rank * local_world + local_rank:
        raise ValueError(
            f"env:// launch: RANK={rank} is not GROUP_RANK * LOCAL_WORLD_SIZE + LOCAL_RANK = {machine_rank} * "
            f"{local_world} + {local_rank}; detectron2's per-machine process group needs the ranks of a machine "
            "to be consecutive (torchrun with the same --nproc-per-node on every machine gives that)")
    return TorchrunEnv(rank=rank, world_size=world, local_rank=local_rank, local_world_size=local_world,
                       machine_rank=machine_rank, master_addr=environ["MASTER_ADDR"], master_port=port)


def launch_from_env(main_func, args=(), timeout=DEFAULT_TIMEOUT):
    """Run ``main_func(*args)`` in this process as one rank of the job torchrun started (``env://``).

    The counterpart, for one process, of what `launch` does in each process it starts: NCCL and this
    process's GPU (``LOCAL_RANK``) when CUDA is available, gloo and ``cores // LOCAL_WORLD_SIZE`` torch threads
    otherwise; detectron2's per-machine process group (``comm.get_local_rank()`` etc.). The process group is
    destroyed when ``main_func`` returns. Returns what ``main_func`` returns.
    """
    env = torchrun_env()
    if env is None:
        raise ValueError("launch_from_env: none of RANK, WORLD_SIZE, LOCAL_RANK is set; start the program with "
                         "torchrun, or use launch() to start the processes")
    if torch.cuda.is_available():
        if env.local_world_size > torch.cuda.device_count():
            raise ValueError(
                f"env:// launch: {env.local_world_size} processes on this machine (LOCAL_WORLD_SIZE) but "
                f"{torch.cuda.device_count()} visible GPU(s); each process needs its own GPU, device LOCAL_RANK "
                "(make every GPU of the machine visible to every process)")
        torch.cuda.set_device(env.local_rank)
        backend = "nccl"
    else:
        torch.set_num_threads(cpu_threads_per_process(env.local_world_size))
        backend = "gloo"
    # env:// reads MASTER_ADDR / MASTER_PORT (and, under torchrun, joins its agent's store) from os.environ
    dist.init_process_group(backend=backend, init_method="env://", world_size=env.world_size, rank=env.rank,
                            timeout=timeout)
    create_local_process_group(env.num_machines, env.local_world_size, env.machine_rank)
    comm.synchronize()
    result = main_func(*args)
    # Only after success: after an error the other ranks may be blocked in a collective (torchrun ends them).
    comm.synchronize()
    dist.destroy_process_group()
    return result
