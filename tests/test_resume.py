"""Exact resume after a real kill (issue 12, part 3).

Tiny ``ssmvl train-image`` runs (the product's CLI, as subprocesses; 40 steps, a checkpoint every 10, the last one
kept) are stopped with SIGKILL and resumed with ``--resume``; the weights are compared with those of an uninterrupted
run with the same seed. One chain of runs, two kinds of kill:

1. mid-run, from outside: the plain CLI is killed as soon as ``checkpoint-10`` is complete (the run goes on to step
   40, so the progress after step 10 is lost). The resumed run's ``checkpoint-20`` is compared with the
   uninterrupted run's ``checkpoint-20``.
2. while Trainer writes ``checkpoint-30``: a hook in the child script (not in the product) makes that resumed run
   SIGKILL itself after the model file and before the optimizer / scheduler / RNG / ``trainer_state.json``.
   ``checkpoint-20`` must still be there and loadable; ``--resume`` must skip the half-written ``checkpoint-30``
   (left in place), resume from ``checkpoint-20``, and the final weights are compared with the uninterrupted run's.

Trainer restores the optimizer, the scheduler, the RNG states and the position in the sampler's permutation (it
skips the batches already seen in the current epoch), so on CPU the resumed weights are expected to equal the
uninterrupted ones bit for bit; the tolerance (1e-6) only allows for a different summation order, and the measured
differences are printed. The run crosses an epoch boundary (23 steps per epoch at batch 64 on the 1,437 training
digits).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("safetensors")
from safetensors.torch import load_file  # noqa: E402

STEPS, SAVE_STEPS, BATCH = 40, 10, 64
TOLERANCE = 1e-6
TINY_VIM = {"model_type": "ssmvl_vim", "image_size": 16, "patch_size": 4, "hidden_size": 32, "num_hidden_layers": 2,
            "state_size": 4}

# The test's own hook (never part of the product): SIGKILL this process inside Trainer's checkpoint save of step
# KILL_AT_STEP, after save_model() wrote the weights and before the optimizer / scheduler / RNG / trainer state.
KILL_WHILE_SAVING = """
import os, signal, sys
from transformers import Trainer

KILL_AT = int(os.environ["KILL_AT_STEP"])
_save_optimizer_and_scheduler = Trainer._save_optimizer_and_scheduler


def _killed_while_saving(self, output_dir):
    if self.state.global_step == KILL_AT:
        os.kill(os.getpid(), signal.SIGKILL)
    return _save_optimizer_and_scheduler(self, output_dir)


Trainer._save_optimizer_and_scheduler = _killed_while_saving
from ssmvl.training.cli import main

sys.exit(main(sys.argv[1:]))
"""


def _env():
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHONPATH")}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", SSMVL_NO_RELAUNCH="1")
    return env


def _train_image_args(config: Path, out: Path, *extra: str):
    return ["train-image", "--model", str(config), "--image-size", "16", "--max-steps", str(STEPS),
            "--save-steps", str(SAVE_STEPS), "--batch-size", str(BATCH), "--threads", "1", "--seed", "0",
            "--out", str(out), *extra]


def _cli(args):
    return [sys.executable, "-m", "ssmvl.training.cli", *args]


def _run(cmd, log: Path):
    with open(log, "w") as fh:
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=_env(), timeout=600)
    return proc.returncode, log.read_text()


def _max_weight_difference(a_dir: Path, b_dir: Path) -> float:
    a, b = load_file(str(a_dir / "model.safetensors")), load_file(str(b_dir / "model.safetensors"))
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def _complete(checkpoint: Path) -> bool:
    from ssmvl.training.recipes import checkpoint_problem

    return checkpoint_problem(checkpoint) is None


def test_kills_and_resumes_end_at_the_uninterrupted_weights(tmp_path):
    config = tmp_path / "tiny-vim.json"
    config.write_text(json.dumps(TINY_VIM))
    reference = tmp_path / "uninterrupted"
    rc, log = _run(_cli(_train_image_args(config, reference, "--save-total-limit", "0")), tmp_path / "reference.log")
    assert rc == 0, log[-3000:]

    # 1. SIGKILL from outside once checkpoint-10 is complete
    out = tmp_path / "interrupted"
    ckpt = out / "checkpoints"
    with open(tmp_path / "killed.log", "w") as log_file:
        proc = subprocess.Popen(_cli(_train_image_args(config, out)), stdout=log_file, stderr=subprocess.STDOUT,
                                env=_env())
        try:
            while not _complete(ckpt / f"checkpoint-{SAVE_STEPS}"):  # poll, then kill at once
                assert proc.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
                time.sleep(0.02)
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            rc = proc.wait(timeout=60)
    assert rc == -signal.SIGKILL, "the run ended before it was killed"
    assert not (out / "model.safetensors").exists(), "the run finished before it was killed"
    assert not (ckpt / f"checkpoint-{STEPS}").exists()

    # 2. resume; this run kills itself while it writes checkpoint-30 (after the weights, before the rest)
    hook = tmp_path / "kill_while_saving.py"
    hook.write_text(KILL_WHILE_SAVING)
    torn, previous = ckpt / f"checkpoint-{3 * SAVE_STEPS}", ckpt / f"checkpoint-{2 * SAVE_STEPS}"
    with open(tmp_path / "resumed-killed-while-saving.log", "w") as log_file:
        rc = subprocess.run([sys.executable, str(hook), *_train_image_args(config, out, "--resume")], stdout=log_file,
                            stderr=subprocess.STDOUT, env={**_env(), "KILL_AT_STEP": str(3 * SAVE_STEPS)},
                            timeout=600).returncode
    log = (tmp_path / "resumed-killed-while-saving.log").read_text()
    assert rc == -signal.SIGKILL, log[-3000:]
    assert f"resuming from {ckpt / f'checkpoint-{SAVE_STEPS}'}" in log
    diff_resumed = _max_weight_difference(reference / "checkpoints" / previous.name, previous)
    assert (torn / "model.safetensors").is_file()
    assert not (torn / "trainer_state.json").exists() and not (torn / "optimizer.pt").exists()
    assert _complete(previous), "Trainer deleted the previous checkpoint before the new one was complete"
    from ssmvl.modeling import VimForImageClassification

    VimForImageClassification.from_pretrained(previous)  # loadable

    # 3. resume again: the torn checkpoint-30 is skipped (and kept), checkpoint-20 is the start
    rc, log = _run(_cli(_train_image_args(config, out, "--resume")), tmp_path / "resumed.log")
    assert rc == 0, log[-3000:]
    assert f"skipping incomplete checkpoint {torn}" in log
    assert f"resuming from {previous}" in log
    diff_final = _max_weight_difference(reference, out)
    print(f"\nSIGKILL after checkpoint-{SAVE_STEPS}, resumed: checkpoint-{2 * SAVE_STEPS} vs uninterrupted: "
          f"max |weight difference| = {diff_resumed:.3g}")
    print(f"SIGKILL while writing checkpoint-{3 * SAVE_STEPS}, resumed from checkpoint-{2 * SAVE_STEPS}: final "
          f"weights (step {STEPS}) vs uninterrupted: max |weight difference| = {diff_final:.3g}")
    assert diff_resumed <= TOLERANCE
    assert diff_final <= TOLERANCE


def test_checkpoint_checks_name_the_problem(tmp_path):
    from ssmvl.training.recipes import _resolve_resume, checkpoint_problem, last_complete_checkpoint

    ckpts = tmp_path / "checkpoints"
    good, torn, bare = ckpts / "checkpoint-5", ckpts / "checkpoint-10", ckpts / "checkpoint-15"
    for folder in (good, torn, bare):
        folder.mkdir(parents=True)
        (folder / "model.safetensors").write_bytes(b"")
    (good / "trainer_state.json").write_text(json.dumps({"global_step": 5}))
    (torn / "trainer_state.json").write_text('{"global_step": 1')  # killed while writing the state itself
    assert checkpoint_problem(good) is None
    assert "unreadable" in checkpoint_problem(torn)
    assert "no trainer_state.json" in checkpoint_problem(bare)
    assert last_complete_checkpoint(ckpts) == str(good)
    assert _resolve_resume(True, ckpts) == str(good)
    assert sorted(p.name for p in ckpts.iterdir()) == ["checkpoint-10", "checkpoint-15", "checkpoint-5"]  # kept
    with pytest.raises(ValueError, match="cannot resume from .*checkpoint-15.*checkpoint-5"):
        _resolve_resume(str(bare), ckpts)
    assert _resolve_resume(None, ckpts) is None
    assert _resolve_resume("last", tmp_path / "nothing-here") is None
