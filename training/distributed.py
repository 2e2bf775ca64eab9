"""Multi-process training: the shipped ``accelerate`` configs, rank helpers, FSDP wrap classes, and the guard that
keeps ``ssmvl train-*`` out of ``torch.nn.DataParallel``.

Every recipe (``recipes.train_causal_lm`` / ``train_image_classifier``, ``vlm.train_vlm``,
``video.train_video_classifier``, ``dual_encoder.train_dual_encoder``) runs unchanged under a launcher; ``Trainer``
picks the process group up from the environment the launcher sets (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``,
``MASTER_ADDR`` / ``MASTER_PORT``)::

    torchrun --nproc_per_node 2 -m ssmvl.training.cli train-image --model vim-digits --out runs/vim
    accelerate launch --config_file "$(ssmvl accelerate-config ddp)" -m ssmvl.training.cli train-image ...

``accelerate_config("ddp")`` is DistributedDataParallel, one process per GPU (on a machine without CUDA the same
file starts CPU processes that talk over gloo); ``accelerate_config("fsdp")`` is FSDP2 (``fully_shard``) with
parameters, gradients and optimizer state sharded, one unit per block class of the model, full state dicts on save.

Why a 2-process run follows the 1-process run with the same global batch: accelerate's sampler is seeded the same
way in every process (``SeedableRandomSampler``: ``data_seed`` + epoch), so all processes draw the same permutation,
and its ``BatchSamplerShard`` hands process ``k`` of ``n`` the ``k``-th of each ``n`` consecutive per-device batches;
DDP averages the per-process mean gradients, which is the mean over the global batch when the per-device batches are
equally full (tests/test_distributed.py measures the per-step loss difference).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

ACCELERATE_CONFIG_DIR = Path(__file__).resolve().parent / "accelerate_configs"
# Environment variables that torchrun / accelerate launch / mpirun / SLURM set in every process they start.
LAUNCH_ENV_VARS = ("WORLD_SIZE", "LOCAL_RANK", "RANK", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE")
NO_RELAUNCH_ENV = "SSMVL_NO_RELAUNCH"


# ---------------------------------------------------------------------------------------------------------------------
# shipped accelerate configs
# ---------------------------------------------------------------------------------------------------------------------
def available_accelerate_configs() -> List[str]:
    return sorted(p.stem for p in ACCELERATE_CONFIG_DIR.glob("*.yaml"))


def accelerate_config(name: str = "ddp") -> Path:
    """Path of a shipped ``accelerate launch --config_file`` YAML: ``"ddp"`` or ``"fsdp"``."""
    path = ACCELERATE_CONFIG_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(f"no shipped accelerate config {name!r}; available: {available_accelerate_configs()} "
                         f"(in {ACCELERATE_CONFIG_DIR})")
    return path


# ---------------------------------------------------------------------------------------------------------------------
# ranks (plain torch.distributed: no side effects when no process group exists)
# ---------------------------------------------------------------------------------------------------------------------
def launched_by_a_launcher(environ: Optional[Dict[str, str]] = None) -> bool:
    """True inside a process started by torchrun / accelerate launch / mpirun (any of ``LAUNCH_ENV_VARS`` set)."""
    environ = os.environ if environ is None else environ
    return any(environ.get(name) not in (None, "") for name in LAUNCH_ENV_VARS)


def world_size() -> int:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def is_main_process() -> bool:
    """Rank 0 of the process group, or True without one (the process that writes shared files)."""
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def barrier() -> None:
    """Waits for every process (no-op without a process group)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


# ---------------------------------------------------------------------------------------------------------------------
# FSDP
# ---------------------------------------------------------------------------------------------------------------------
def fsdp_enabled(environ: Optional[Dict[str, str]] = None) -> bool:
    """True when ``accelerate launch`` runs with an FSDP config (it sets ``ACCELERATE_USE_FSDP``)."""
    environ = os.environ if environ is None else environ
    return str(environ.get("ACCELERATE_USE_FSDP", "false")).lower() in ("1", "true", "yes")


def fsdp_wrap_classes(model) -> List[str]:
    """The class names of ``model._no_split_modules`` that occur in ``model``: what FSDP's transformer auto-wrap
    makes one unit each (``VimBlock``, ``MambaBlock``, ``VMambaBlock``, ``StormBlock``, ``BridgeBlock``, and the
    layers of transformers towers / decoders such as ``SiglipEncoderLayer``, ``ViTLayer``, ``Qwen2DecoderLayer``).

    transformers collects ``_no_split_modules`` from every sub-model, and our VLM / STORM classes list every block
    they may hold, so the raw set names classes the model does not contain (a SigLIP + Mamba VLM lists ``VimBlock``
    and ``SiglipTextEmbeddings``); accelerate's ``set_auto_wrap_policy`` / ``fsdp2_prepare_auto_wrap_policy`` raise
    ``Could not find the transformer layer class ...`` for such a name (accelerate/utils/dataclasses.py,
    accelerate/utils/fsdp_utils.py)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    names = set()
    for module in base.modules():  # every sub-model's list (transformers 5.0 does not merge them into the top one)
        names.update(getattr(module, "_no_split_modules", None) or [])
    present = {type(m).__name__ for m in base.modules()}
    return sorted(n for n in names if n in present)


def prepare_for_fsdp(model, force: bool = False):
    """Under an FSDP launch (or ``force``), sets ``model._no_split_modules`` to ``fsdp_wrap_classes(model)`` so that
    accelerate's transformer auto-wrap policy finds every class it is given. No-op otherwise; returns ``model``."""
    if not (force or fsdp_enabled()):
        return model
    classes = fsdp_wrap_classes(model)
    if not classes:
        raise ValueError(f"{type(model).__name__} names no block class in _no_split_modules, so FSDP's "
                         f"TRANSFORMER_BASED_WRAP would make the whole model one unit; use a size-based wrap "
                         f"(accelerate launch --fsdp_auto_wrap_policy SIZE_BASED_WRAP --fsdp_min_num_params 1000000)")
    model._no_split_modules = classes  # read by accelerate via getattr (PeftModel forwards it to the base model)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    base._no_split_modules = classes
    return model


def is_fsdp_model(model) -> bool:
    """True for a model sharded by FSDP2 (``fully_shard``) or wrapped by FSDP1."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover (torch < 2.6)
        FSDPModule = ()  # noqa: N806
    try:
        from torch.distributed.fsdp import FullyShardedDataParallel
    except ImportError:  # pragma: no cover
        FullyShardedDataParallel = ()  # noqa: N806
    return isinstance(model, (FSDPModule, FullyShardedDataParallel)) or any(
        isinstance(m, (FSDPModule, FullyShardedDataParallel)) for m in model.modules())


@contextlib.contextmanager
def original_class(model):
    """While inside, an FSDP2 module has its own class again. ``fully_shard`` swaps a module's class for a dynamic
    subclass ``FSDP<Name>`` whose ``__module__`` is torch's (torch/distributed/fsdp/_fully_shard/_fully_shard.py);
    ``save_pretrained`` writes the class name to ``config.architectures`` and, for remote code, copies the module
    file of the class (``transformers.dynamic_module_utils.custom_object_save``), so it must see the original."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover (torch < 2.6)
        yield model
        return
    fsdp_class = type(model)
    if not isinstance(model, FSDPModule):
        yield model
        return
    model.__class__ = next(c for c in fsdp_class.__mro__ if not issubclass(c, FSDPModule))
    try:
        yield model
    finally:
        model.__class__ = fsdp_class


def full_state_dict(model) -> Dict[str, "object"]:
    """The unsharded state dict of an FSDP model on CPU (a collective: every rank calls it; all get the tensors)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


# ---------------------------------------------------------------------------------------------------------------------
# the DataParallel guard of `ssmvl train-*`
# ---------------------------------------------------------------------------------------------------------------------
def cuda_device_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def relaunch_command(argv: Sequence[str], nproc: int, python: Optional[str] = None) -> List[str]:
    """``python -m torch.distributed.run --standalone --nproc_per_node N -m ssmvl.training.cli ARGV`` (torchrun with
    this interpreter; ``--standalone`` picks a free rendezvous port on this host)."""
    return [python or sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "ssmvl.training.cli", *argv]


def single_gpu_command(argv: Sequence[str], python: Optional[str] = None) -> List[str]:
    return [python or sys.executable, "-m", "ssmvl.training.cli", *argv]


def multi_gpu_advice(argv: Sequence[str], nproc: int) -> str:
    args = " ".join(shlex.quote(a) for a in argv)
    return (f"  torchrun --nproc_per_node {nproc} -m ssmvl.training.cli {args}\n"
            f"  accelerate launch --config_file {accelerate_config('ddp')} --num_processes {nproc} "
            f"-m ssmvl.training.cli {args}")


def shutdown() -> None:
    """The end of a successful multi-process run: waits for every process, then destroys the process group (no
    process exits while another still talks to it). No-op without a process group."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        barrier()
        dist.destroy_process_group()


def guard_data_parallel(argv: Sequence[str], relaunch: bool = True, exec_fn=None,
                        environ: Optional[Dict[str, str]] = None, reason: str = "--no-relaunch",
                        advise_ddp: bool = True) -> Optional[List[str]]:
    """Keeps a plain ``ssmvl train-*`` on a host with several CUDA GPUs out of ``torch.nn.DataParallel`` (which
    ``Trainer`` uses when one process sees more than one GPU: slower than DDP, and a model with a custom cache or
    kernels gains nothing from it).

    Does nothing inside a launcher (``launched_by_a_launcher``), with at most one visible GPU, or when
    ``SSMVL_NO_RELAUNCH`` is set. Otherwise replaces this process (``exec_fn``, default ``os.execvpe``) by either
    DDP over all GPUs under torchrun (``relaunch=True``) or the same command on GPU 0 alone
    (``CUDA_VISIBLE_DEVICES`` = the first visible GPU; ``relaunch=False``, the CLI's ``--no-relaunch``), after
    printing what it does and the commands to launch it yourself. Returns the command it executed (for tests;
    ``os.execvpe`` does not return)."""
    environ = dict(os.environ if environ is None else environ)
    if launched_by_a_launcher(environ) or environ.get(NO_RELAUNCH_ENV):
        return None
    count = cuda_device_count()
    if count <= 1:
        return None
    exec_fn = exec_fn or os.execvpe
    environ[NO_RELAUNCH_ENV] = "1"  # the relaunched processes never relaunch again
    if relaunch:
        cmd = relaunch_command(argv, count)
        print(f"[ssmvl] {count} CUDA GPUs and no distributed launcher: one process would train through "
              f"torch.nn.DataParallel; relaunching as DDP, one process per GPU:\n  {shlex.join(cmd)}\n"
              f"(--no-relaunch: train on one GPU instead). To launch it yourself:\n{multi_gpu_advice(argv, count)}",
              flush=True)
    else:
        visible = environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip() or "0"
        environ["CUDA_VISIBLE_DEVICES"] = visible
        cmd = single_gpu_command(argv)
        advice = f" For DDP over all {count}:\n{multi_gpu_advice(argv, count)}" if advise_ddp else ""
        print(f"[ssmvl] {count} CUDA GPUs, {reason}: training on GPU {visible} only "
              f"(CUDA_VISIBLE_DEVICES={visible}), not DataParallel.{advice}", flush=True)
    sys.stdout.flush()
    sys.stderr.flush()
    exec_fn(cmd[0], cmd, environ)
    return cmd


__all__ = [
    "ACCELERATE_CONFIG_DIR", "accelerate_config", "available_accelerate_configs", "launched_by_a_launcher",
    "world_size", "is_main_process", "barrier", "fsdp_enabled", "fsdp_wrap_classes", "prepare_for_fsdp",
    "is_fsdp_model", "full_state_dict", "original_class", "guard_data_parallel", "relaunch_command", "multi_gpu_advice", "shutdown",
]
