"""Safe remote code: what `save_pretrained` copies next to a checkpoint (the files of modeling/) is read as Python
source (ast) and must import only torch, transformers, numpy / PIL (processors), the standard library modules
listed below and its siblings; call no eval / exec / compile / __import__, open no network connection, start no
process and unpickle nothing. Every `torch.load` in the whole project passes `weights_only=True`, and what the
project writes as weights is safetensors (the savers are checked to use it)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MODELING = sorted((ROOT / "modeling").glob("*.py"))

# top-level names a modeling file may import (besides its relative sibling imports)
ALLOWED_IMPORTS = {
    "torch", "transformers", "triton", "mamba_ssm", "causal_conv1d", "numpy", "PIL",  # the stack (last four guarded)
    "__future__", "math", "typing", "dataclasses", "functools", "itertools", "os", "sys", "warnings", "copy",
    "collections", "enum", "contextlib", "inspect", "re", "logging", "json", "numbers", "abc", "hashlib",
    "weakref",  # the Mamba LM keeps captured CUDA graphs in a WeakKeyDictionary (no I/O)
}
FORBIDDEN_CALLS = {"eval", "exec", "compile", "__import__", "breakpoint"}
FORBIDDEN_MODULES = {"pickle", "dill", "cloudpickle", "marshal", "shelve", "subprocess", "socket", "urllib",
                     "http", "requests", "httpx", "ftplib", "smtplib", "multiprocessing", "ctypes", "importlib",
                     "huggingface_hub", "shutil"}
FORBIDDEN_ATTRIBUTES = {("os", "system"), ("os", "popen"), ("os", "exec"), ("os", "spawn"), ("os", "fork"),
                        ("os", "remove"), ("os", "unlink"), ("os", "rmdir"), ("torch", "hub")}


def _tree(path: Path) -> ast.AST:
    return ast.parse(path.read_text(), filename=str(path))


def _imports(tree: ast.AST):
    """(top-level module, level, line) of every import."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name.split(".")[0], 0, node.lineno
        elif isinstance(node, ast.ImportFrom):
            yield (node.module or "").split(".")[0], node.level, node.lineno


def test_the_modeling_folder_is_what_is_checked():
    names = {p.name for p in MODELING}
    assert {"modeling_mamba_lm.py", "modeling_vim.py", "modeling_ssm_vlm.py", "ssm_ops.py"} <= names


@pytest.mark.parametrize("path", MODELING, ids=lambda p: p.name)
def test_modeling_file_imports_only_the_stack_and_siblings(path):
    siblings = {p.stem for p in MODELING}
    bad = []
    for module, level, line in _imports(_tree(path)):
        if path.name == "__init__.py" and level == 2 and module == "kernels":
            continue  # the installed package's __init__ (never shipped) registers the package's own compiled kernels
        if level > 0:  # relative: must name a sibling file (or the package itself)
            if module and module not in siblings:
                bad.append(f"line {line}: from .{module} (not a file of modeling/)")
        elif module in FORBIDDEN_MODULES or module not in ALLOWED_IMPORTS:
            bad.append(f"line {line}: import {module}")
    assert not bad, f"{path.name} imports outside torch / transformers / its siblings: {bad}"


@pytest.mark.parametrize("path", MODELING, ids=lambda p: p.name)
def test_modeling_file_runs_no_code_from_strings_no_processes_no_network(path):
    bad = []
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name) and func.id in FORBIDDEN_CALLS:
                bad.append(f"line {node.lineno}: {func.id}()")
            if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
                if (func.value.id, func.attr) in FORBIDDEN_ATTRIBUTES or func.attr.startswith(("spawn", "exec")) \
                        and func.value.id == "os":
                    bad.append(f"line {node.lineno}: {func.value.id}.{func.attr}()")
                if func.attr == "load" and func.value.id == "torch":
                    bad.append(f"line {node.lineno}: torch.load (a modeling file reads safetensors through "
                               "transformers only)")
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and \
                (node.value.id, node.attr) in FORBIDDEN_ATTRIBUTES:
            bad.append(f"line {node.lineno}: {node.value.id}.{node.attr}")
    assert not bad, f"{path.name}: {bad}"


def _python_files():
    for folder in ("modeling", "conversion", "training", "benchmarks"):
        yield from sorted((ROOT / folder).rglob("*.py"))


ENTRY_FILES = [p for p in MODELING
               if p.stem.startswith(("configuration_", "modeling_", "processing_", "video_processing_"))]


@pytest.mark.parametrize("path", ENTRY_FILES, ids=lambda p: p.name)
def test_entry_file_names_every_sibling_it_needs(path):
    """transformers 5.0 copies into its modules cache only the siblings an entry file (the config, model or processor
    file auto_map names) imports directly, then asks for all of them recursively: an entry file must import its whole
    closure by name (hf_compat.py), else loading it as remote code fails with FileNotFoundError under 5.0. Read with
    transformers' own parser, so a TYPE_CHECKING import counts as it does there."""
    from transformers.dynamic_module_utils import get_relative_imports

    def direct(name):
        return set(get_relative_imports(str(ROOT / "modeling" / f"{name}.py")))

    closure, todo = set(), [path.stem]
    while todo:
        for name in direct(todo.pop()) - closure:
            closure.add(name)
            todo.append(name)
    missing = sorted(closure - direct(path.stem) - {path.stem})
    assert not missing, f"{path.name} imports {missing} only through other siblings: name them under TYPE_CHECKING"


def test_every_torch_load_in_the_project_is_weights_only():
    bad = []
    for path in _python_files():
        for node in ast.walk(_tree(path)):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load" \
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch":
                flag = [k for k in node.keywords if k.arg == "weights_only"]
                if not flag or not (isinstance(flag[0].value, ast.Constant) and flag[0].value.value is True):
                    bad.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not bad, f"torch.load without weights_only=True: {bad}"


def test_no_pickle_anywhere_in_the_product():
    bad = [f"{path.relative_to(ROOT)}:{line}" for path in _python_files()
           for module, level, line in _imports(_tree(path)) if level == 0 and module in {"pickle", "dill",
                                                                                          "cloudpickle", "marshal"}]
    assert not bad, f"pickle imported: {bad}"


def test_saved_weights_are_safetensors(tmp_path):
    """A saved model folder holds model.safetensors and no .bin / .pt / .pkl file."""
    import torch

    from ssmvl.modeling import MambaLMConfig, MambaLMForCausalLM

    torch.manual_seed(0)
    MambaLMForCausalLM(MambaLMConfig(vocab_size=32, hidden_size=16, num_hidden_layers=1, state_size=4)).save_pretrained(
        tmp_path)
    names = {p.name for p in tmp_path.iterdir()}
    assert "model.safetensors" in names
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pth", ".pkl", ".ckpt"))], names
    py = {n for n in names if n.endswith(".py")}
    assert py and py <= {p.name for p in MODELING}  # the remote code shipped is exactly files checked above


# ---------------------------------------------------------------------------------------------------------------------
# odd pixels (issue 12's fuzzing list: uint8 and NaN pixels used to pass silently)
# ---------------------------------------------------------------------------------------------------------------------
def _vision_models():
    import torch

    from ssmvl.modeling import (SigLipDualEncoderConfig, SigLipDualEncoderModel, SsmVlmConfig,
                                SsmVlmForConditionalGeneration, StormConfig, StormForImageClassification, VimConfig,
                                VimForImageClassification, VMambaConfig, VMambaForImageClassification)

    torch.manual_seed(0)
    small = dict(image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=1, state_size=4, num_labels=3)
    yield "vim", VimForImageClassification(VimConfig(**small)), {}
    yield "vmamba", VMambaForImageClassification(VMambaConfig(image_size=32, patch_size=4, embed_dim=8, depths=[1, 1],
                                                              d_state=1, num_labels=3)), {}
    yield "storm", StormForImageClassification(StormConfig(keep_ratios=[1.0], num_memory_tokens=2, **small)), {}
    vlm = SsmVlmForConditionalGeneration(SsmVlmConfig(
        vision_config=None, projector_type="patch_linear", image_size=32, patch_size=8, image_token_id=9,
        text_config=dict(model_type="ssmvl_mamba", vocab_size=16, hidden_size=16, num_hidden_layers=1)))
    yield "vlm", vlm, {"input_ids": torch.tensor([[1] + [9] * 16 + [2]])}
    dual = SigLipDualEncoderModel(SigLipDualEncoderConfig(
        vision_config=dict(model_type="ssmvl_vim", **{k: v for k, v in small.items() if k != "num_labels"}),
        text_config=dict(model_type="ssmvl_mamba", vocab_size=16, hidden_size=16, num_hidden_layers=1),
        projection_dim=8))
    yield "dual", dual, {"input_ids": torch.tensor([[1, 2, 3]])}


@pytest.mark.parametrize("kind", ["uint8", "nan", "inf"])
def test_odd_pixels_are_clear_errors_in_every_vision_family(kind):
    import torch

    for name, model, extra in _vision_models():
        model.eval()
        good = torch.randn(1, 3, 32, 32)
        with torch.no_grad():
            model(pixel_values=good, **extra)  # the model itself runs
        if kind == "uint8":
            bad, error, match = (good.clamp(-1, 1) * 127 + 128).to(torch.uint8), TypeError, "uint8.*floating-point"
        else:
            bad = good.clone()
            bad[0, 1, 3, 4] = float("nan") if kind == "nan" else float("inf")
            error, match = ValueError, "1 NaN or infinite"
        with pytest.raises(error, match=match), torch.no_grad():
            model(pixel_values=bad, **extra)
