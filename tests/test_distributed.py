"""Multi-process training (issue 12, part 1): shipped accelerate configs, FSDP wrap classes, a 2-process CPU (gloo)
run against a 1-process run with the same global batch, FSDP2 sharding on 2 CPU processes against the plain model
(and the gathered save), the DataParallel guard of ``ssmvl train-*``, and the device benchmark's CPU mode.

Why the two runs should match: accelerate's ``SeedableRandomSampler`` draws the same permutation in every process
(seeded by ``data_seed`` and the epoch), its ``BatchSamplerShard`` gives process k of n the k-th of each n consecutive
per-device batches, so the two processes' batches of 16 are the two halves of the 1-process batch of 32; DDP averages
the two mean gradients (the global-batch mean: equal halves, no padding), the gradient norm is clipped on the averaged
gradient, and Trainer logs the mean of the two processes' losses. What is left is the summation order of the
all-reduce: differences of order 1e-7 in float32 (measured: 2.4e-7 on the losses, 5e-6 on the weights after 12 Adam
steps at lr 3e-3, which normalise small gradient differences up). Tolerances: 1e-5 on the per-step losses, 1e-4 on the
gradient norms and the final weights.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ssmvl.training import distributed
from ssmvl.training.distributed import (
    accelerate_config, fsdp_wrap_classes, guard_data_parallel, prepare_for_fsdp, relaunch_command,
)

ROOT = Path(__file__).resolve().parent.parent
STEPS, GLOBAL_BATCH, LOSS_TOLERANCE, WEIGHT_TOLERANCE = 12, 32, 1e-5, 1e-4

# One recipe run: train_image_classifier on 256 digits at 16 px (8 steps per epoch at the global batch of 32, so the
# 12 steps cross an epoch boundary and its reshuffle), tiny Vim without dropout, a loss logged every step.
CHILD = """
import json, os, sys

import torch

from ssmvl.modeling import VimConfig
from ssmvl.training.data import build_digits_dataset
from ssmvl.training.distributed import shutdown
from ssmvl.training.recipes import train_image_classifier

torch.set_num_threads(1)
out, batch, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
data = build_digits_dataset(16, max_train=256, max_test=8)
config = VimConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2, state_size=4, num_labels=10,
                   drop_path_rate=0.0)
result = train_image_classifier(config, data["train"], None, out, max_steps=steps, batch_size=batch, lr=3e-3,
                                warmup_ratio=0.0, logging_steps=1, save_strategy="no", disable_tqdm=True, seed=0)
if result.trainer.is_world_process_zero():
    with open(os.path.join(out, "log.json"), "w") as fh:
        json.dump({"log_history": result.trainer.state.log_history, "world_size": result.trainer.args.world_size,
                   "per_device_batch": result.trainer.args.per_device_train_batch_size}, fh)
if sys.argv[4:] == ["lm"]:  # the LM recipe, which evaluates before it trains (perplexity_before)
    from datasets import Dataset
    from safetensors.torch import save_file

    from ssmvl.modeling import MambaLMConfig
    from ssmvl.training.recipes import train_causal_lm

    ids = torch.randint(0, 64, (64, 12), generator=torch.Generator().manual_seed(0)).tolist()
    blocks = Dataset.from_dict({"input_ids": ids, "labels": ids})
    lm = train_causal_lm(MambaLMConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2), blocks, blocks.select(
        range(16)), os.path.join(out, "lm"), max_steps=6, batch_size=batch // 2, lr=1e-2, logging_steps=1,
        save=False, save_strategy="no", disable_tqdm=True)
    rank = result.trainer.args.process_index
    save_file({k: v.detach().clone().contiguous() for k, v in lm.model.state_dict().items()},
              os.path.join(out, f"lm-rank{rank}.safetensors"))
    with open(os.path.join(out, f"lm-rank{rank}.json"), "w") as fh:
        json.dump({"losses": [e["loss"] for e in lm.trainer.state.log_history if "loss" in e],
                   "perplexity_before": lm["perplexity_before"], "perplexity": lm["perplexity"]}, fh)
shutdown()
"""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env():
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTHONPATH", "ACCELERATE_", "FSDP_")) and k not in distributed.LAUNCH_ENV_VARS}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", CUDA_VISIBLE_DEVICES="")
    return env


def _run(cmd, cwd: Path, **env):
    proc = subprocess.run(cmd, cwd=cwd, env={**_env(), **env}, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


def _losses(out: Path):
    record = json.loads((out / "log.json").read_text())
    steps = [entry for entry in record["log_history"] if "loss" in entry]
    return record, [e["loss"] for e in steps], [e["grad_norm"] for e in steps]


# ---------------------------------------------------------------------------------------------------------------------
# 2 processes on CPU (gloo) == 1 process with the same global batch
# ---------------------------------------------------------------------------------------------------------------------
def test_two_cpu_processes_follow_the_single_process_loss_curve(tmp_path):
    from safetensors.torch import load_file

    child = tmp_path / "recipe_child.py"
    child.write_text(CHILD)
    single, double = tmp_path / "one-process", tmp_path / "two-processes"
    _run([sys.executable, str(child), str(single), str(GLOBAL_BATCH), str(STEPS), "lm"], tmp_path)
    _run([sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(accelerate_config("ddp")),
          "--num_processes", "2", "--main_process_port", str(_free_port()), "--num_cpu_threads_per_process", "1",
          str(child), str(double), str(GLOBAL_BATCH // 2), str(STEPS), "lm"], tmp_path)

    one, one_losses, one_norms = _losses(single)
    two, two_losses, two_norms = _losses(double)
    assert (one["world_size"], one["per_device_batch"]) == (1, GLOBAL_BATCH)
    assert (two["world_size"], two["per_device_batch"]) == (2, GLOBAL_BATCH // 2)
    assert len(one_losses) == len(two_losses) == STEPS
    loss_diff = max(abs(a - b) for a, b in zip(one_losses, two_losses))
    norm_diff = max(abs(a - b) for a, b in zip(one_norms, two_norms))
    a, b = load_file(str(single / "model.safetensors")), load_file(str(double / "model.safetensors"))
    weight_diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    print(f"\n2 processes (gloo, batch {GLOBAL_BATCH // 2} each) vs 1 process (batch {GLOBAL_BATCH}), {STEPS} steps: "
          f"max |loss diff| {loss_diff:.3g}, max |grad-norm diff| {norm_diff:.3g}, max |final weight diff| "
          f"{weight_diff:.3g}; losses {one_losses[0]:.4f} -> {one_losses[-1]:.4f}")
    assert one_losses[-1] < one_losses[0]  # it trained
    assert loss_diff <= LOSS_TOLERANCE
    assert norm_diff <= WEIGHT_TOLERANCE
    assert weight_diff <= WEIGHT_TOLERANCE
    # written once, by the main process, and loadable
    from transformers import AutoModelForImageClassification

    AutoModelForImageClassification.from_pretrained(double, trust_remote_code=True)

    # the LM recipe evaluates before training: the two processes still train one model (their replicas are equal)
    # and follow the single process. (A trainer.evaluate() before trainer.train() would leave the model without its
    # DDP wrapper: every process training its own copy; see train_causal_lm.)
    lm_one = json.loads((single / "lm-rank0.json").read_text())
    lm_two = json.loads((double / "lm-rank0.json").read_text())
    r0, r1 = load_file(str(double / "lm-rank0.safetensors")), load_file(str(double / "lm-rank1.safetensors"))
    replica_diff = max(float((r0[k] - r1[k]).abs().max()) for k in r0)
    lm_loss_diff = max(abs(a - b) for a, b in zip(lm_one["losses"], lm_two["losses"]))
    print(f"LM recipe (evaluates first): replicas differ by {replica_diff:.3g}; max |loss diff| vs 1 process "
          f"{lm_loss_diff:.3g}")
    assert replica_diff == 0.0
    assert len(lm_two["losses"]) == 6 and lm_loss_diff <= LOSS_TOLERANCE
    assert abs(lm_one["perplexity_before"] - lm_two["perplexity_before"]) <= 1e-3 * lm_one["perplexity_before"]


# FSDP2 itself on 2 CPU processes (accelerate only runs FSDP on accelerators, so fully_shard is applied here the way
# accelerate's fsdp2_prepare_model does: each block class of fsdp_wrap_classes, then the root), against the plain model
# trained on the whole batch in the same process; then save_trained's FSDP branch (gather, main process writes).
FSDP_CHILD = """
import copy, json, sys

import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard

from ssmvl.modeling import VimConfig, VimForImageClassification
from ssmvl.training.distributed import fsdp_wrap_classes, is_fsdp_model, shutdown
from ssmvl.training.recipes import save_trained

torch.set_num_threads(1)
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
torch.manual_seed(0)
model = VimForImageClassification(VimConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2,
                                            state_size=4, num_labels=10))
reference = copy.deepcopy(model)
classes = fsdp_wrap_classes(model)
for module in list(model.modules()):
    if type(module).__name__ in classes:
        fully_shard(module)
fully_shard(model)
sharded = [n for n, p in model.named_parameters() if p.to_local().numel() < p.numel()]
opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
ref_opt = torch.optim.AdamW(reference.parameters(), lr=1e-2)
g = torch.Generator().manual_seed(1)
losses = []
for step in range(4):
    x, y = torch.randn(8, 3, 16, 16, generator=g), torch.randint(0, 10, (8,), generator=g)
    mine = slice(rank * 8 // world, (rank + 1) * 8 // world)
    loss = model(pixel_values=x[mine], labels=y[mine]).loss
    loss.backward()
    opt.step()
    opt.zero_grad()
    ref_loss = reference(pixel_values=x, labels=y).loss
    ref_loss.backward()
    ref_opt.step()
    ref_opt.zero_grad()
    total = loss.detach().clone()
    dist.all_reduce(total)
    losses.append([float(total) / world, float(ref_loss)])
assert is_fsdp_model(model)
save_trained(model, sys.argv[1])
if rank == 0:
    state = {k: v.detach().clone() for k, v in reference.state_dict().items()}
    torch.save(state, sys.argv[1] + "/reference.pt")
    json.dump({"losses": losses, "classes": classes, "sharded": len(sharded), "class": type(model).__name__},
              open(sys.argv[1] + "/fsdp.json", "w"))
shutdown()
"""


def test_fsdp2_on_two_cpu_processes_matches_the_plain_model_and_saves(tmp_path):
    from safetensors.torch import load_file

    child = tmp_path / "fsdp_child.py"
    child.write_text(FSDP_CHILD)
    out = tmp_path / "fsdp"
    out.mkdir()
    _run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
          str(child), str(out)], tmp_path)
    record = json.loads((out / "fsdp.json").read_text())
    assert record["classes"] == ["VimBlock"] and record["sharded"] > 0 and record["class"].startswith("FSDP")
    loss_diff = max(abs(a - b) for a, b in record["losses"])
    saved = load_file(str(out / "model.safetensors"))
    reference = torch.load(out / "reference.pt", weights_only=True)
    weight_diff = max(float((saved[k] - reference[k]).abs().max()) for k in saved)
    print(f"\nFSDP2 on 2 CPU processes vs the plain model, 4 AdamW steps: max |loss diff| {loss_diff:.3g}, "
          f"max |saved weight diff| {weight_diff:.3g}")
    assert loss_diff <= LOSS_TOLERANCE and weight_diff <= WEIGHT_TOLERANCE
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["VimForImageClassification"]  # not FSDPVimForImageClassification
    assert config["auto_map"]["AutoModelForImageClassification"] == "modeling_vim.VimForImageClassification"
    assert (out / "modeling_vim.py").is_file() and not list(out.glob("_fsdp*.py"))
    from transformers import AutoModelForImageClassification

    AutoModelForImageClassification.from_pretrained(out, trust_remote_code=True)


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs (accelerate runs FSDP on GPUs only)")
def test_fsdp_on_two_gpus_follows_one_gpu(tmp_path):
    """The shipped fsdp.yaml (FSDP2, VimBlock units) on 2 GPUs against 1 GPU without FSDP, fp32, same global batch:
    the same loss curve (GPU reductions are not bit-reproducible: 1e-4), and the final save gathers the shards into
    one safetensors file (save_trained's FSDP branch) that loads and equals the 1-GPU weights closely."""
    from safetensors.torch import load_file

    child = tmp_path / "recipe_child.py"
    child.write_text(CHILD)
    single, sharded = tmp_path / "one-gpu", tmp_path / "fsdp-two-gpus"
    _run([sys.executable, str(child), str(single), str(GLOBAL_BATCH), str(STEPS)], tmp_path, CUDA_VISIBLE_DEVICES="0")
    _run([sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(accelerate_config("fsdp")),
          "--num_processes", "2", "--main_process_port", str(_free_port()), str(child), str(sharded),
          str(GLOBAL_BATCH // 2), str(STEPS)], tmp_path, CUDA_VISIBLE_DEVICES="0,1")
    _, one_losses, _ = _losses(single)
    two, two_losses, _ = _losses(sharded)
    assert two["world_size"] == 2 and len(two_losses) == STEPS
    loss_diff = max(abs(a - b) for a, b in zip(one_losses, two_losses))
    a, b = load_file(str(single / "model.safetensors")), load_file(str(sharded / "model.safetensors"))
    assert a.keys() == b.keys() and all(a[k].shape == b[k].shape for k in a)
    weight_diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    print(f"\nFSDP 2 GPUs vs 1 GPU: max |loss diff| {loss_diff:.3g}, max |final weight diff| {weight_diff:.3g}")
    assert loss_diff <= 1e-4 and weight_diff <= 1e-3
    from transformers import AutoModelForImageClassification

    config = json.loads((sharded / "config.json").read_text())
    assert config["architectures"] == ["VimForImageClassification"]
    AutoModelForImageClassification.from_pretrained(sharded, trust_remote_code=True)


# ---------------------------------------------------------------------------------------------------------------------
# shipped configs and FSDP wrap classes
# ---------------------------------------------------------------------------------------------------------------------
def test_shipped_accelerate_configs_parse_and_install():
    from accelerate.commands.config.config_args import load_config_from_file

    ddp = load_config_from_file(str(accelerate_config("ddp")))
    assert str(ddp.distributed_type).endswith("MULTI_GPU") and ddp.num_processes == 2 and not ddp.use_cpu
    fsdp = load_config_from_file(str(accelerate_config("fsdp")))
    assert str(fsdp.distributed_type).endswith("FSDP")
    assert fsdp.fsdp_config["fsdp_version"] == 2
    assert fsdp.fsdp_config["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert fsdp.fsdp_config["fsdp_state_dict_type"] == "FULL_STATE_DICT"
    assert "fsdp_transformer_layer_cls_to_wrap" not in fsdp.fsdp_config  # the model's own block classes
    with pytest.raises(ValueError, match="no shipped accelerate config 'zero3'.*ddp.*fsdp"):
        accelerate_config("zero3")
    assert 'accelerate_configs/*.yaml' in (ROOT / "pyproject.toml").read_text()  # package data: installed


def _tiny_models():
    from ssmvl.modeling import (
        MambaLMConfig, MambaLMForCausalLM, SsmVlmForConditionalGeneration, VimConfig, VimForImageClassification,
        VMambaConfig, VMambaForImageClassification,
    )
    from ssmvl.training.vlm_presets import vlm_preset

    yield "vim", VimForImageClassification(VimConfig(image_size=16, patch_size=8, hidden_size=16, num_hidden_layers=2,
                                                     state_size=4)), {"VimBlock"}
    yield "mamba", MambaLMForCausalLM(MambaLMConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2)), {"MambaBlock"}
    yield "vmamba", VMambaForImageClassification(VMambaConfig(image_size=32, embed_dim=16, depths=[1, 1], d_state=1,
                                                              drop_path_rate=0.0)), {"VMambaBlock"}
    yield "vlm cobra-style", SsmVlmForConditionalGeneration(vlm_preset("cobra-style", size="tiny")), {
        "MambaBlock", "SiglipEncoderLayer"}
    yield "vlm qwen-vl-style", SsmVlmForConditionalGeneration(vlm_preset("qwen-vl-style", size="tiny")), {
        "ViTLayer", "Qwen2DecoderLayer"}
    yield "vlm-mamba", SsmVlmForConditionalGeneration(vlm_preset("vlm-mamba", size="tiny")), {"MambaBlock",
                                                                                             "VimBlock"}


def test_fsdp_wraps_the_blocks_each_model_has(monkeypatch):
    """accelerate's transformer auto-wrap takes ``_no_split_modules``, which for our VLMs names blocks the model does
    not hold (VimBlock in a SigLIP + Mamba VLM) and raises; ``prepare_for_fsdp`` keeps the ones present."""
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy

    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    for name, model, blocks in _tiny_models():
        classes = fsdp_wrap_classes(model)
        assert blocks <= set(classes), (name, classes)
        assert all(any(type(m).__name__ == c for m in model.modules()) for c in classes), name
        plugin = FullyShardedDataParallelPlugin(fsdp_version=2, auto_wrap_policy="TRANSFORMER_BASED_WRAP")
        if name.startswith("vlm"):
            with pytest.raises(ValueError, match="Could not find the transformer layer class"):
                fsdp2_prepare_auto_wrap_policy(plugin, model)
        before = set(model._no_split_modules)
        assert prepare_for_fsdp(model) is model and set(model._no_split_modules) == before  # no FSDP launch: as is
        prepare_for_fsdp(model, force=True)
        policy = fsdp2_prepare_auto_wrap_policy(plugin, model)
        wrapped = {type(m).__name__ for m in model.modules() if policy(m)}
        assert wrapped == set(classes), (name, wrapped)


# ---------------------------------------------------------------------------------------------------------------------
# ssmvl train-* on a multi-GPU host: never torch.nn.DataParallel
# ---------------------------------------------------------------------------------------------------------------------
def test_train_commands_relaunch_as_ddp_instead_of_data_parallel(monkeypatch, capsys):
    from ssmvl.training import cli

    calls = []

    def fake_exec(file, args, env):  # os.execvpe would replace the process
        calls.append((file, list(args), dict(env)))
        raise SystemExit(0)

    monkeypatch.setattr(distributed, "cuda_device_count", lambda: 2)
    monkeypatch.setattr(distributed.os, "execvpe", fake_exec)
    for name in distributed.LAUNCH_ENV_VARS + (distributed.NO_RELAUNCH_ENV,):
        monkeypatch.delenv(name, raising=False)

    argv = ["train-image", "--model", "vim-digits", "--out", "runs/x"]
    with pytest.raises(SystemExit):
        cli.main(argv)
    file, cmd, env = calls[-1]
    assert cmd == relaunch_command(argv, 2) == [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                "--nproc_per_node=2", "-m", "ssmvl.training.cli", *argv]
    assert file == sys.executable and env[distributed.NO_RELAUNCH_ENV] == "1"  # the children do not relaunch
    out = capsys.readouterr().out
    assert "2 CUDA GPUs" in out and "DataParallel" in out
    assert f"accelerate launch --config_file {accelerate_config('ddp')} --num_processes 2 -m ssmvl.training.cli" in out

    # --no-relaunch: the same command on the first visible GPU only
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    with pytest.raises(SystemExit):
        cli.main(argv + ["--no-relaunch"])
    file, cmd, env = calls[-1]
    assert cmd == [sys.executable, "-m", "ssmvl.training.cli", *argv, "--no-relaunch"]
    assert env["CUDA_VISIBLE_DEVICES"] == "3"
    assert "training on GPU 3 only" in capsys.readouterr().out

    # the demo always keeps to one GPU (it pushes and reloads in one process)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    with pytest.raises(SystemExit):
        cli.main(["demo", "--quick"])
    assert calls[-1][2]["CUDA_VISIBLE_DEVICES"] == "0" and "torch.distributed.run" not in calls[-1][1]
    assert "torchrun" not in capsys.readouterr().out

    # inside a launcher, with one GPU, or after a relaunch: nothing happens
    n = len(calls)
    assert guard_data_parallel(argv, environ={"WORLD_SIZE": "2", "LOCAL_RANK": "0"}, exec_fn=fake_exec) is None
    assert guard_data_parallel(argv, environ={distributed.NO_RELAUNCH_ENV: "1"}, exec_fn=fake_exec) is None
    monkeypatch.setattr(distributed, "cuda_device_count", lambda: 1)
    assert guard_data_parallel(argv, environ={}, exec_fn=fake_exec) is None
    assert len(calls) == n


def test_rank_helpers_without_a_process_group(tmp_path):
    assert distributed.world_size() == 1 and distributed.is_main_process()
    distributed.barrier()
    distributed.shutdown()  # no-ops
    assert not distributed.is_fsdp_model(torch.nn.Linear(2, 2))
    assert distributed.launched_by_a_launcher({"LOCAL_RANK": "1"}) and not distributed.launched_by_a_launcher({})
    assert distributed.fsdp_enabled({"ACCELERATE_USE_FSDP": "true"}) and not distributed.fsdp_enabled({})


# ---------------------------------------------------------------------------------------------------------------------
# the device benchmark (benchmarks/ddp_scaling.py) in its tiny CPU mode
# ---------------------------------------------------------------------------------------------------------------------
def test_ddp_scaling_benchmark_runs_under_torchrun(tmp_path):
    """torchrun (the other launcher) with 2 CPU processes over gloo: the JSON the lead reads on the GPUs."""
    out = tmp_path / "two.json"
    _run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
          str(ROOT / "benchmarks" / "ddp_scaling.py"), "--tiny", "--out", str(out), "--work", str(tmp_path / "w")],
         tmp_path)
    record = json.loads(out.read_text())
    assert record["status"] == "ok" and record["world_size"] == 2 and record["launcher"] == "torchrun"
    assert record["per_device_batch"] * 2 == record["global_batch"] == 16
    assert record["images_per_s"] > 0 and record["timed_steps"] >= 1
    assert len(record["loss_history"]) == record["steps"] and record["eval_history"]
    assert len(record["peak_memory_mib_per_rank"]) == 2 and record["fsdp_wrap_classes"] == ["VimBlock"]


def test_ddp_scaling_benchmark_vlm_mode(tmp_path, monkeypatch, capsys):
    """The synthetic-batch path used for the FSDP memory of the VLM presets (here the tiny cobra-style, in-process)."""
    import importlib

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    bench = importlib.import_module("ddp_scaling")
    threads = torch.get_num_threads()
    try:
        assert bench.main(["--tiny", "--model", "vlm:cobra-style", "--out", str(tmp_path / "vlm.json"),
                           "--work", str(tmp_path / "w")]) == 0
    finally:
        torch.set_num_threads(threads)
    record = json.loads((tmp_path / "vlm.json").read_text())
    assert record["status"] == "ok" and record["sequences_per_s"] > 0
    assert {"MambaBlock", "SiglipEncoderLayer"} <= set(record["fsdp_wrap_classes"])
    bench.main(["--compare", str(tmp_path / "vlm.json"), str(tmp_path / "vlm.json")])
    assert "speed-up 1.00x" in capsys.readouterr().out
