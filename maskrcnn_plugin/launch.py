"""Data-parallel launch: detectron2's ``launch`` on GPUs (NCCL), the same over gloo processes on CPUs.

detectron2's ``launch`` insists on CUDA. `launch` keeps detectron2's signature and, when CUDA is absent, starts
the processes itself with the gloo backend and sets up detectron2's per-machine process group. Nothing changes
on GPUs. detectron2's DefaultTrainer cannot wrap a CPU model for data parallelism (its ``create_ddp_model`` passes
device ids, which DistributedDataParallel rejects on the CPU); train_net.py's Trainer builds itself with
``compat.init_default_trainer_without_device_ids`` there, which a DefaultTrainer subclass of your own can call too.
"""
import datetime
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.engine.launch import launch as d2_launch
from detectron2.utils import comm

from .compat import create_local_process_group

__all__ = ["launch"]


def launch(main_func, num_gpus_per_machine, num_machines=1, machine_rank=0, dist_url=None, args=(),
           timeout=datetime.timedelta(minutes=30)):
    """Run ``main_func(*args)`` in ``num_gpus_per_machine`` processes on each of ``num_machines`` machines.

    On a machine without CUDA, ``num_gpus_per_machine`` is the number of CPU worker processes (gloo backend);
    each gets ``cpu_count // num_gpus_per_machine`` torch threads. ``dist_url`` as in detectron2: "auto"
    (single machine, free local port) or e.g. "tcp://<machine 0 address>:<port>" on every machine.
    """
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


def _cpu_worker(local_rank, main_func, num_machines, per_machine, machine_rank, dist_url, args, timeout):
    # Processes sharing a machine's cores must not each start cpu_count threads.
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // per_machine))
    dist.init_process_group(backend="gloo", init_method=dist_url, world_size=num_machines * per_machine,
                            rank=machine_rank * per_machine + local_rank, timeout=timeout)
    create_local_process_group(num_machines, per_machine, machine_rank)
    comm.synchronize()
    main_func(*args)
