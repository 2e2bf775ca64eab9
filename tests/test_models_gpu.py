"""Model-level checks of the GPU fast path (skipped without CUDA; run on the device machine):
CUDA-graph decoding gives the same tokens as eager decoding; LoRA adapters are honoured by the fast backends."""

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]

from ssmvl.modeling import MambaLMConfig, MambaLMForCausalLM  # noqa: E402
from ssmvl.modeling import ssm_ops  # noqa: E402

FAST = [b for b in ("triton", "mamba_ssm") if b in ssm_ops.available_backends("cuda")] if torch.cuda.is_available() \
    else []


def tiny_lm(**kw):
    torch.manual_seed(0)
    cfg = MambaLMConfig(vocab_size=97, hidden_size=64, num_hidden_layers=2, state_size=8, pad_token_id=0,
                        eos_token_id=1, bos_token_id=1, **kw)
    return MambaLMForCausalLM(cfg).cuda().eval()


@pytest.mark.parametrize("batch", [1, 4, 64])
def test_cuda_graph_decoding_matches_eager(batch):
    model = tiny_lm()
    ids = torch.randint(2, 97, (batch, 9), device="cuda")
    with torch.no_grad():
        model.config.use_cuda_graph = False
        eager = model.generate(ids, max_new_tokens=24, min_new_tokens=24, do_sample=False)
        model.config.use_cuda_graph = True
        graphed = model.generate(ids, max_new_tokens=24, min_new_tokens=24, do_sample=False)
        beams_graph = model.generate(ids, max_new_tokens=8, num_beams=3, do_sample=False)
        model.config.use_cuda_graph = False
        beams_eager = model.generate(ids, max_new_tokens=8, num_beams=3, do_sample=False)
    assert torch.equal(eager, graphed)
    assert torch.equal(beams_graph, beams_eager)


def test_cuda_graph_logits_match_step_by_step():
    from ssmvl.modeling import SsmCache

    model = tiny_lm()
    ids = torch.randint(2, 97, (2, 12), device="cuda")
    with torch.no_grad():
        full = model(ids, use_cache=False).logits
        cache = SsmCache.from_config(model.config, 2, device="cuda")
        model(ids[:, :6], cache=cache, use_cache=True)
        steps = [model(ids[:, t:t + 1], cache=cache, use_cache=True).logits for t in range(6, 12)]
    assert getattr(cache, "_cuda_graph", None) is not None  # the graph path ran
    assert torch.allclose(torch.cat(steps, 1), full[:, 6:], atol=1e-4)


@pytest.mark.parametrize("backend", FAST)
def test_lora_is_honoured_by_fast_backend(backend):
    peft = pytest.importorskip("peft")
    model = tiny_lm(ssm_backend=backend)
    ids = torch.randint(2, 97, (2, 33), device="cuda")
    with torch.no_grad():
        base = model(ids).logits
    lora = peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=8, init_lora_weights=False,
                                                      target_modules=["in_proj", "x_proj", "dt_proj", "out_proj"]))
    with torch.no_grad():
        fast = lora(ids).logits
        for m in lora.modules():
            if hasattr(m, "ssm_backend"):
                m.ssm_backend = "reference"
        unfused = lora(ids).logits
    assert (fast - base).abs().max() > 1e-3  # the adapters change the outputs
    assert torch.allclose(fast, unfused, atol=2e-4), (fast - unfused).abs().max()  # same as the unfused computation
