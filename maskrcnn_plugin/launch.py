"""Data-parallel launch: detectron2's ``launch`` on GPUs (NCCL), the same over gloo processes on CPUs.

detectron2 0.6's ``launch`` insists on CUDA, and its ``create_ddp_model`` passes ``device_ids=[local_rank]``,
which torch's DistributedDataParallel rejects for a CPU model. `launch` keeps detectron2's signature and, when
CUDA is absent, starts the processes itself with the gloo backend, sets up detectron2's per-machine process
group and lets DistributedDataParallel wrap CPU models without device ids. Nothing changes on GPUs.
"""
import datetime
import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.engine import defaults as d2_defaults
from detectron2.engine.launch import _find_free_port
from detectron2.engine.launch import launch as d2_launch
from detectron2.utils import comm

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
        dist_url = f"tcp://127.0.0.1:{_find_free_port()}"
    mp.start_processes(
        _cpu_worker,
        nprocs=num_gpus_per_machine,
        args=(main_func, num_machines, num_gpus_per_machine, machine_rank, dist_url, args, timeout),
        daemon=False,
        start_method="spawn",
    )


def _cpu_worker(local_rank, main_func, num_machines, per_machine, machine_rank, dist_url, args, timeout):
    # Processes sharing a machine's cores must not each start cpu_count threads.
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // per_machine))
    dist.init_process_group(backend="gloo", init_method=dist_url, world_size=num_machines * per_machine,
                            rank=machine_rank * per_machine + local_rank, timeout=timeout)
    if hasattr(comm, "create_local_process_group"):  # detectron2 after 0.6
        comm.create_local_process_group(per_machine)
    else:
        for i in range(num_machines):
            group = dist.new_group(list(range(i * per_machine, (i + 1) * per_machine)))
            if i == machine_rank:
                comm._LOCAL_PROCESS_GROUP = group
    d2_defaults.create_ddp_model = _create_cpu_ddp_model
    comm.synchronize()
    main_func(*args)


_d2_create_ddp_model = d2_defaults.create_ddp_model


def _create_cpu_ddp_model(model, **kwargs):
    # DistributedDataParallel wants device_ids=None for a module whose parameters live on the CPU.
    if next(model.parameters()).device.type == "cpu":
        kwargs.setdefault("device_ids", None)
    return _d2_create_ddp_model(model, **kwargs)
