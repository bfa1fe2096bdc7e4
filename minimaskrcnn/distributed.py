"""Distributed runs: the process group torchrun starts, and the few collective steps training and evaluation take.

Built in notebooks/11_train_on_gpu.ipynb (`torchrun --nproc_per_node=N -m minimaskrcnn train ...`).

Outside torchrun (WORLD_SIZE unset or 1) there is no process group: rank 0 of a world of 1, and every collective
below returns its input. Under torchrun each process joins the group (NCCL on GPUs, gloo on CPUs) and owns one GPU,
cuda:LOCAL_RANK.

Shape glossary
    P      number of processes (world size)
    L      number of loss values reduced per step
"""
import os

import torch
import torch.distributed as dist
from torch import Tensor, nn


def init_distributed() -> tuple[int, int, int]:
    """Join the process group when launched by torchrun (NCCL on GPU, gloo on CPU); (rank, world, local_rank)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)
    return get_rank(), get_world_size(), int(os.environ.get("LOCAL_RANK", "0"))


def cleanup_distributed() -> None:
    """Leave the process group (if any) at the end of a torchrun job."""
    if dist.is_initialized():
        dist.destroy_process_group()


def get_rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def default_device() -> torch.device:
    """This process's GPU (cuda:LOCAL_RANK) when CUDA is available, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def wrap(model: nn.Module, device: torch.device, find_unused_parameters: bool) -> nn.Module:
    """The model to train: in DistributedDataParallel (gradients averaged over the processes) under torchrun."""
    if get_world_size() == 1:
        return model
    return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                               find_unused_parameters=find_unused_parameters)


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model inside a DistributedDataParallel wrapper (or the model itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def mean_over_processes(values: Tensor) -> Tensor:
    """values: Tensor[L] -> their mean over the P processes (every process gets it); in place under torchrun."""
    if get_world_size() > 1:
        dist.all_reduce(values)
        values /= get_world_size()
    return values


def barrier() -> None:
    """Wait until every process gets here (e.g. rank 0 has written the checkpoint)."""
    if get_world_size() > 1:
        dist.barrier()


def gather_objects(obj) -> list:
    """[obj of rank 0, obj of rank 1, ...] on every process (picklable objects); [obj] outside torchrun."""
    if get_world_size() == 1:
        return [obj]
    gathered = [None] * get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast_object(obj):
    """Rank 0's obj, on every process (picklable objects)."""
    if get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
