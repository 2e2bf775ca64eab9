"""torch.compile of the SSM families: the forward traces as ONE graph (fullgraph=True: no graph break; the torch scan
backend is a torch.library custom op, backend logging is skipped while tracing) and the compiled model computes what
the eager one does, outputs and gradients. The default tests compile with the `aot_eager` backend (dynamo + AOTAutograd,
the scan op's fake and autograd registrations, no code generation: seconds); the inductor tests (what
`torch.compile(model)` really does, 1-3 minutes of C++ code generation on 2 cores) are marked slow. Speed is measured in
benchmarks/compile_speedup.py, never here."""

from __future__ import annotations

import pytest
import torch

from ssmvl.modeling.configuration_mamba_lm import MambaLMConfig
from ssmvl.modeling.configuration_storm import StormConfig
from ssmvl.modeling.configuration_vim import VimConfig
from ssmvl.modeling.configuration_vmamba import VMambaConfig
from ssmvl.modeling.modeling_mamba_lm import MambaLMForCausalLM
from ssmvl.modeling.modeling_storm import StormForVideoClassification
from ssmvl.modeling.modeling_vim import VimForImageClassification
from ssmvl.modeling.modeling_vmamba import VMambaForImageClassification


def _pixels(*shape):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(0))


def vim():
    config = VimConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, state_size=4, num_labels=3,
                       ssm_backend="torch")
    return VimForImageClassification(config), dict(pixel_values=_pixels(2, 3, 32, 32), labels=torch.tensor([0, 2]))


def mamba_lm():
    config = MambaLMConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, state_size=4, ssm_backend="torch")
    ids = torch.randint(0, 64, (2, 70), generator=torch.Generator().manual_seed(1))  # 70 > one 64-step scan block
    return MambaLMForCausalLM(config), dict(input_ids=ids, labels=ids, use_cache=False)


def vmamba():
    config = VMambaConfig(image_size=32, embed_dim=8, depths=[1, 1], d_state=2, num_labels=3, drop_path_rate=0.0,
                          ssm_backend="torch")
    return VMambaForImageClassification(config), dict(pixel_values=_pixels(2, 3, 32, 32), labels=torch.tensor([0, 1]))


def storm_video():
    config = StormConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, keep_ratios=[1.0, 0.5],
                         num_memory_tokens=2, state_size=4, frame_layers=1, temporal_layers=1, num_frames=4,
                         temporal_pool=2, num_labels=3, ssm_backend="torch")
    return StormForVideoClassification(config), dict(pixel_values=_pixels(2, 4, 3, 32, 32),
                                                     labels=torch.tensor([1, 2]))


FAMILIES = {"vim": vim, "mamba_lm": mamba_lm, "vmamba": vmamba, "storm_video": storm_video}


def _loss_and_grads(model, inputs, run=None):
    """logits and {name: gradient} of ``model``'s parameters after ``run`` (default: the model itself) computed the
    loss of ``inputs``."""
    model.zero_grad(set_to_none=True)
    out = (model if run is None else run)(**inputs)
    out.loss.backward()
    return out.logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _check_compiled_equals_eager(family, backend, rtol, atol):
    torch.manual_seed(0)
    model, inputs = FAMILIES[family]()
    model.train()
    logits, grads = _loss_and_grads(model, inputs)  # eager first: sets what a first call sets (config.problem_type)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend=backend, fullgraph=True)  # fullgraph: a graph break is an error
    compiled_logits, compiled_grads = _loss_and_grads(model, inputs, run=compiled)
    torch.testing.assert_close(compiled_logits, logits, rtol=rtol, atol=atol)
    assert compiled_grads.keys() == grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(compiled_grads[name], grad, rtol=rtol, atol=atol, msg=f"{family}: {name}")


@pytest.mark.parametrize("family", ["vim", "mamba_lm"])
def test_compiled_forward_backward_is_one_graph_and_equals_eager(family):
    _check_compiled_equals_eager(family, "aot_eager", rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("family", ["vmamba", "storm_video"])
def test_forward_has_no_graph_break(family):
    torch.manual_seed(0)
    model, inputs = FAMILIES[family]()
    with torch.no_grad():
        explanation = torch._dynamo.explain(model.eval())(**{k: v for k, v in inputs.items() if k != "labels"})
    assert explanation.graph_break_count == 0, [r.reason for r in explanation.break_reasons]
    assert explanation.graph_count == 1


@pytest.mark.slow
@pytest.mark.parametrize("family", ["vim", "mamba_lm"])
def test_inductor_compiled_model_equals_eager(family):
    _check_compiled_equals_eager(family, "inductor", rtol=1e-4, atol=1e-5)
