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
from ssmvl.modeling.hf_compat import CACHE_NAME  # noqa: E402

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


# -- every backend tier ("torch", "triton", "mamba_ssm" where it imports) against the sequential reference ------------
TIERS = ["torch"] + FAST


def _pair(backend, dtype):
    """(model on `backend`, the same weights on "reference"), in `dtype`."""
    return tiny_lm(ssm_backend=backend).to(dtype), tiny_lm(ssm_backend="reference").to(dtype)


def test_mamba_ssm_tier_is_there_when_expected(monkeypatch):
    """On the device run that builds mamba_ssm (SSMVL_EXPECT_MAMBA_SSM=1) its tier must import and be auto's choice;
    the environment variable picks another tier for a config that leaves the backend unset."""
    import os

    if os.environ.get("SSMVL_EXPECT_MAMBA_SSM") != "1":
        pytest.skip("mamba_ssm is not expected here")
    assert "mamba_ssm" in ssm_ops.available_backends("cuda"), ssm_ops._MAMBA_SSM_ERROR
    assert {"causal_conv1d_fn", "causal_conv1d_update", "selective_state_update"} <= set(ssm_ops._load_mamba_ssm())
    monkeypatch.delenv("SSMVL_SSM_BACKEND", raising=False)
    assert ssm_ops.resolve_backend(tiny_lm().config.ssm_backend, "cuda") == "mamba_ssm"
    monkeypatch.setenv("SSMVL_SSM_BACKEND", "triton")
    assert ssm_ops.resolve_backend(tiny_lm().config.ssm_backend, "cuda") == "triton"


@pytest.mark.parametrize("length", [67, 600])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("backend", TIERS)
def test_tier_forward_and_backward_match_reference(backend, dtype, length):
    """Training step against the reference tier: logits and every gradient. At 600 tokens the triton tier trains with
    its time-tiled kernels, whose channel-major inputs the mixers produce by weight @ x.T (in_proj, dt_proj)."""
    model, ref = _pair(backend, dtype)
    model.train(), ref.train()
    ids = torch.randint(2, 97, (2, length), device="cuda")
    out, out_ref = model(ids, labels=ids), ref(ids, labels=ids)
    out.loss.backward(), out_ref.loss.backward()
    tol = 1e-4 if dtype == torch.float32 else 5e-2
    scale = out_ref.logits.abs().max().item()
    assert (out.logits - out_ref.logits).abs().max().item() <= tol * max(1.0, scale)
    for (name, p), p_ref in zip(model.named_parameters(), ref.parameters()):
        err = (p.grad.float() - p_ref.grad.float()).abs().max().item()
        assert err <= (2e-3 if dtype == torch.float32 else 1e-1) * max(1e-3, p_ref.grad.float().abs().max().item()), \
            (name, err)


@pytest.mark.parametrize("use_cuda_graph", [False, True])
@pytest.mark.parametrize("backend", TIERS)
def test_tier_cached_steps_equal_full_forward(backend, use_cuda_graph):
    model = tiny_lm(ssm_backend=backend, use_cuda_graph=use_cuda_graph)
    ids = torch.randint(2, 97, (3, 20), device="cuda")
    with torch.no_grad():
        full = model(ids, use_cache=False).logits
        out = model(ids[:, :9], use_cache=True)
        steps = [model(ids[:, t:t + 1], cache=out.cache, use_cache=True).logits for t in range(9, 20)]
    torch.testing.assert_close(torch.cat(steps, 1), full[:, 9:], atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("backend", FAST)
def test_long_prompt_prefill_in_chunks_matches_reference(backend):
    """A 1,100-token prompt without gradients (the time-tiled scan: channel-major projections), in one pass and in
    chunks of 512 through the cache (the second continues from the conv prefix and the state), then cached steps:
    the logits equal the reference tier's full pass."""
    model = tiny_lm(ssm_backend=backend, chunked_prefill_size=512)
    ref = tiny_lm(ssm_backend="reference")
    ids = torch.randint(2, 97, (2, 1110), device="cuda")
    with torch.no_grad():
        full_ref = ref(ids, use_cache=False).logits
        full = model(ids, use_cache=False).logits
        out = model(ids[:, :1100], use_cache=True)
        steps = [model(ids[:, t:t + 1], cache=out.cache, use_cache=True).logits for t in range(1100, 1110)]
    scale = max(1.0, full_ref.abs().max().item())
    assert (full - full_ref).abs().max().item() <= 1e-4 * scale
    assert (out.logits[:, -1] - full_ref[:, 1099]).abs().max().item() <= 1e-4 * scale
    assert (torch.cat(steps, 1) - full_ref[:, 1100:]).abs().max().item() <= 1e-4 * scale


@pytest.mark.parametrize("backend", FAST)
def test_tier_generate_equals_torch_tier(backend):
    torch_tier, fast = tiny_lm(ssm_backend="torch"), tiny_lm(ssm_backend=backend)
    ids = torch.randint(2, 97, (3, 11), device="cuda")
    mask = torch.ones_like(ids)
    mask[0, :4] = 0  # a left-padded row
    ids[0, :4] = 0
    kw = dict(attention_mask=mask, max_new_tokens=24, min_new_tokens=24, do_sample=False)
    with torch.no_grad():
        assert torch.equal(fast.generate(ids, **kw), torch_tier.generate(ids, **kw))
        kw.update(num_beams=3, max_new_tokens=10, min_new_tokens=10)
        assert torch.equal(fast.generate(ids, **kw), torch_tier.generate(ids, **kw))
        dict_out = fast.generate(ids, return_dict_in_generate=True, **kw)
        assert dict_out[CACHE_NAME].get_seq_length() == dict_out.sequences.shape[1] - 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_fused_inference_loop_equals_blocks_on_gpu(dtype):
    """Outside autograd on a GPU the backbone runs Triton add + RMSNorm kernels between the mixers; with gradients the
    plain blocks: the same logits (bf16: within rounding), and greedy decoding with the lean loop and the CUDA graph
    gives generate()'s own loop's tokens."""
    model = tiny_lm().to(dtype)
    ids = torch.randint(2, 97, (3, 40), device="cuda")
    with torch.no_grad():
        assert model.backbone._fused_norms_apply()
        fused = model(ids).logits
    plain = model(ids).logits.detach()
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    assert (fused - plain).abs().max().item() <= tol * max(1.0, plain.abs().max().item())
    model.generation_config.eos_token_id = None
    lean = model.generate(ids[:, :9], max_new_tokens=30, do_sample=False)
    model.fast_greedy_generate = False
    assert torch.equal(lean, model.generate(ids[:, :9], max_new_tokens=30, do_sample=False))


def _count_captures(model, monkeypatch):
    calls = []
    capture = model._capture_graph
    monkeypatch.setattr(model, "_capture_graph", lambda *a: calls.append(1) or capture(*a))
    return calls


def test_cuda_graph_is_kept_across_generate_calls(monkeypatch):
    """One capture serves later generate() calls of the same batch shape: the same tokens as eager decoding, and a
    cache returned by an earlier call keeps its states when a later call takes over the graph's buffers."""
    model = tiny_lm()
    model.generation_config.eos_token_id = None
    captures = _count_captures(model, monkeypatch)
    prompts = [torch.randint(2, 97, (3, 9), device="cuda") for _ in range(3)]
    with torch.no_grad():
        first = model.generate(prompts[0], max_new_tokens=12, do_sample=False, return_dict_in_generate=True)
        kept = first[CACHE_NAME]
        kept_states = [s.clone() for s in kept.conv_states + kept.ssm_states]
        graphed = [first.sequences] + [model.generate(p, max_new_tokens=12, do_sample=False) for p in prompts[1:]]
        assert len(captures) == 1
        assert all(torch.equal(a, b) for a, b in zip(kept.conv_states + kept.ssm_states, kept_states))
        model.config.use_cuda_graph = False
        eager = [model.generate(p, max_new_tokens=12, do_sample=False) for p in prompts]
    assert all(torch.equal(a, b) for a, b in zip(graphed, eager))


def test_cuda_graph_recaptured_when_the_model_changes(monkeypatch):
    """A change the captured step baked in (a hook, LoRA adapters switched off, new weights via .to()) makes the
    next call capture again; its tokens are those of eager decoding."""
    peft = pytest.importorskip("peft")
    model = tiny_lm()
    model.generation_config.eos_token_id = None
    ids = torch.randint(2, 97, (2, 9), device="cuda")
    lora = peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=8, init_lora_weights=False,
                                                      target_modules=["in_proj", "x_proj", "dt_proj", "out_proj"]))
    base_model = lora.get_base_model()
    captures = _count_captures(base_model, monkeypatch)

    def both():
        base_model.config.use_cuda_graph = True
        graphed = lora.generate(input_ids=ids, max_new_tokens=10, do_sample=False)
        base_model.config.use_cuda_graph = False
        eager = lora.generate(input_ids=ids, max_new_tokens=10, do_sample=False)
        base_model.config.use_cuda_graph = True
        return graphed, eager

    with torch.no_grad():
        with_adapters = both()
        with lora.disable_adapter():
            without = both()
        handle = base_model.backbone.layers[0].mixer.register_forward_hook(lambda m, a, out: out * 0.5)
        hooked = both()
        handle.remove()
    assert torch.equal(*with_adapters) and torch.equal(*without) and torch.equal(*hooked)
    assert not torch.equal(with_adapters[0], without[0]) and not torch.equal(with_adapters[0], hooked[0])
    assert len(captures) == 3


def _check_grads(model, ref, dtype):
    for (name, p), p_ref in zip(model.named_parameters(), ref.parameters()):
        err = (p.grad.float() - p_ref.grad.float()).abs().max().item()
        assert err <= (2e-3 if dtype == torch.float32 else 1e-1) * max(1e-3, p_ref.grad.float().abs().max().item()), \
            (name, err)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("backend", FAST)
def test_vmamba_matches_reference_tier(backend, dtype):
    """VMamba (four-direction cross-scan, d_state 1, the scan given A_log and time-major delta / B / C views) against
    the reference tier with the same weights: logits without gradients, then every parameter gradient."""
    from ssmvl.modeling.configuration_vmamba import VMambaConfig
    from ssmvl.modeling.modeling_vmamba import VMambaForImageClassification

    def build(b):
        torch.manual_seed(0)
        cfg = VMambaConfig(image_size=64, embed_dim=32, depths=[1, 1], d_state=1, num_labels=5, drop_path_rate=0.0,
                           ssm_backend=b)
        return VMambaForImageClassification(cfg).cuda().to(dtype)

    model, ref = build(backend), build("reference")
    x = torch.randn(2, 3, 64, 64, device="cuda", dtype=dtype)
    tol = 1e-4 if dtype == torch.float32 else 5e-2
    with torch.no_grad():
        out, out_ref = model(pixel_values=x).logits, ref(pixel_values=x).logits
    assert (out.float() - out_ref.float()).abs().max().item() <= tol * max(1.0, out_ref.abs().max().item())
    model.train(), ref.train()
    labels = torch.tensor([1, 3], device="cuda")
    model(pixel_values=x, labels=labels).loss.backward()
    ref(pixel_values=x, labels=labels).loss.backward()
    _check_grads(model, ref, dtype)


@pytest.mark.parametrize("forward_type,d_state", [("v05_noz", 1), ("v2", 4)])
def test_vmamba_fused_inference_matches_torch_tier(monkeypatch, forward_type, d_state):
    """The triton tier's fused VMamba inference (LayerNorm kernels, the residual sum in norm2's kernel, the time-major
    cross-scan with SiLU, the cross-merge + out_norm [+ z gate] kernel) against the torch tier's modules with the same
    weights: fp32 and under bf16 autocast, a non-square image, every stage's hidden states; the kernels do run; a hook
    on a norm turns its kernel off and is called; a training step (gradients) takes torch's norms and the
    differentiable cross-scan / merge."""
    from ssmvl.modeling import ssm_triton
    from ssmvl.modeling.configuration_vmamba import VMambaConfig
    from ssmvl.modeling.modeling_vmamba import VMambaForImageClassification

    def build(b):
        torch.manual_seed(0)
        cfg = VMambaConfig(image_size=64, embed_dim=32, depths=[1, 2], d_state=d_state, num_labels=5,
                           forward_type=forward_type, ssm_backend=b, drop_path_rate=0.1)
        return VMambaForImageClassification(cfg).cuda().eval()

    model, ref = build("triton"), build("torch")
    calls = {}
    for name in ("layer_norm_triton", "cross_scan_triton", "cross_merge_norm_triton"):
        def counted(*a, _f=getattr(ssm_triton, name), _n=name, **k):
            calls[_n] = calls.get(_n, 0) + 1
            return _f(*a, **k)
        monkeypatch.setattr(ssm_triton, name, counted)
    x = torch.randn(2, 3, 64, 96, device="cuda")
    with torch.no_grad():
        out = model(pixel_values=x, output_hidden_states=True)
        expect = ref(pixel_values=x, output_hidden_states=True)
        assert calls == {"layer_norm_triton": 2 + 3 * 2 + 1 + 1, "cross_scan_triton": 3, "cross_merge_norm_triton": 3}
        torch.testing.assert_close(out.logits, expect.logits, rtol=1e-4, atol=1e-4)
        for h, h_ref in zip(out.hidden_states, expect.hidden_states, strict=True):
            torch.testing.assert_close(h, h_ref, rtol=1e-3, atol=1e-3)  # the scan tiers differ in fp32 rounding
        with torch.autocast("cuda", dtype=torch.bfloat16):
            amp, amp_ref = model(pixel_values=x).logits, ref(pixel_values=x).logits
        assert amp.dtype == amp_ref.dtype
        torch.testing.assert_close(amp.float(), amp_ref.float(), rtol=3e-2, atol=3e-2)
        seen = []
        hooks = [model.vmamba.layers[1].blocks[0].op.out_norm.register_forward_hook(lambda *a: seen.append("out")),
                 model.vmamba.layers[0].blocks[0].norm2.register_forward_hook(lambda *a: seen.append("norm2"))]
        torch.testing.assert_close(model(pixel_values=x).logits, expect.logits, rtol=1e-4, atol=1e-4)
        assert sorted(seen) == ["norm2", "out"]
        for h in hooks:
            h.remove()
    model.train()
    calls.clear()
    loss = model(pixel_values=x, labels=torch.tensor([1, 3], device="cuda")).loss
    loss.backward()  # the norms are torch's; cross-scan and merge differentiable kernels (their gradients: kernels too)
    assert "layer_norm_triton" not in calls and model.classifier.weight.grad is not None
    assert calls["cross_scan_triton"] == calls["cross_merge_norm_triton"] == 6  # 3 forward, 3 in the backward


def test_vmamba_fused_inference_honours_lora():
    """LoRA on every SS2D projection (VMAMBA_LORA_TARGETS, non-zero adapter weights): the triton tier's fused inference
    calls each direction's adapted x_proj / dt_projs and gives the torch tier's numbers, which differ from the base
    model's."""
    peft = pytest.importorskip("peft")
    from ssmvl.modeling.configuration_vmamba import VMambaConfig
    from ssmvl.modeling.modeling_vmamba import VMAMBA_LORA_TARGETS, VMambaForImageClassification

    def build(b):
        torch.manual_seed(0)
        cfg = VMambaConfig(image_size=64, embed_dim=32, depths=[1, 1], d_state=1, num_labels=5, ssm_backend=b)
        model = VMambaForImageClassification(cfg).cuda().eval()
        base = model(pixel_values=x).logits
        lora = peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules=VMAMBA_LORA_TARGETS,
                                                          init_lora_weights=False)).eval()
        return base, lora

    x = torch.randn(2, 3, 64, 64, device="cuda")
    with torch.no_grad():
        (base, fused), (_, ref) = build("triton"), build("torch")
        out, expect = fused(pixel_values=x).logits, ref(pixel_values=x).logits
    torch.testing.assert_close(out, expect, rtol=1e-4, atol=1e-4)
    assert (out - base).abs().max().item() > 1e-3


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("backend", FAST)
def test_vim_matches_reference_tier(backend, dtype):
    """Vim (bidirectional mixers: on the triton tier the backward branch's conv and scan read the steps backwards in
    place at inference, and scan flipped copies in training) against the reference tier with the same weights: logits
    without gradients at 2 x 197 tokens (the lane forward) and 1 x 677 (the time-tiled one), then the loss and every
    parameter gradient of a training step."""
    from ssmvl.modeling.configuration_vim import VimConfig
    from ssmvl.modeling.modeling_vim import VimForImageClassification

    def build(b):
        torch.manual_seed(0)
        cfg = VimConfig(image_size=224, patch_size=16, hidden_size=64, num_hidden_layers=2, state_size=8,
                        num_labels=5, ssm_backend=b)
        return VimForImageClassification(cfg).cuda().to(dtype)

    model, ref = build(backend), build("reference")
    tol = 1e-4 if dtype == torch.float32 else 5e-2
    for batch, size in ((2, 224), (1, 416)):
        x = torch.randn(batch, 3, size, size, device="cuda", dtype=dtype)
        with torch.no_grad():
            out = model(pixel_values=x, interpolate_pos_encoding=True).logits
            out_ref = ref(pixel_values=x, interpolate_pos_encoding=True).logits
        assert (out.float() - out_ref.float()).abs().max().item() <= tol * max(1.0, out_ref.abs().max().item())
    model.train(), ref.train()
    x = torch.randn(2, 3, 224, 224, device="cuda", dtype=dtype)
    labels = torch.tensor([1, 3], device="cuda")
    model(pixel_values=x, labels=labels).loss.backward()
    ref(pixel_values=x, labels=labels).loss.backward()
    _check_grads(model, ref, dtype)


def _vision(family, backend="auto", **kw):
    """A tiny Vim or VMamba classifier on CUDA in eval mode (fp32 weights)."""
    torch.manual_seed(0)
    if family == "vim":
        from ssmvl.modeling.configuration_vim import VimConfig
        from ssmvl.modeling.modeling_vim import VimForImageClassification

        cfg = VimConfig(image_size=64, patch_size=16, hidden_size=64, num_hidden_layers=2, state_size=8, num_labels=5,
                        ssm_backend=backend, **kw)
        return VimForImageClassification(cfg).cuda().eval()
    from ssmvl.modeling.configuration_vmamba import VMambaConfig
    from ssmvl.modeling.modeling_vmamba import VMambaForImageClassification

    cfg = VMambaConfig(image_size=64, embed_dim=32, depths=[1, 1], d_state=1, num_labels=5, ssm_backend=backend, **kw)
    return VMambaForImageClassification(cfg).cuda().eval()


@pytest.mark.parametrize("family", ["vim", "vmamba"])
def test_vision_cuda_graph_replays_the_eager_forward(family):
    """use_cuda_graph: the first call with a shape runs eagerly, the second captures, later ones replay; every call
    gives the eager numbers (also under bf16 autocast, and for new inputs in the same static buffers), outputs are
    fresh tensors, weights changed in place are read by the replay, and a replaced weight, train mode, gradients,
    output_hidden_states and a third shape are handled."""
    from ssmvl.modeling.cuda_graphs import ForwardGraphs

    model = _vision(family, use_cuda_graph=True)
    eager = _vision(family)
    backbone = model.vim if family == "vim" else model.vmamba
    xs = [torch.randn(2, 3, 64, 64, device="cuda") for _ in range(4)]
    with torch.no_grad():
        outs = [model(pixel_values=x).logits for x in xs]
        assert ForwardGraphs.count(backbone) == 1  # captured at the second call
        for x, out in zip(xs, outs):
            torch.testing.assert_close(out, eager(pixel_values=x).logits, rtol=1e-4, atol=1e-4)
        first = model(pixel_values=xs[0]).logits
        model(pixel_values=xs[1])  # overwrites the graph's outputs: the returned tensor is a copy
        torch.testing.assert_close(first, outs[0], rtol=0, atol=0)
        with torch.autocast("cuda", dtype=torch.bfloat16):  # another fingerprint: eager, then captured
            amp = [model(pixel_values=xs[0]).logits for _ in range(3)]
            amp_eager = eager(pixel_values=xs[0]).logits
        for out in amp:
            torch.testing.assert_close(out.float(), amp_eager.float(), rtol=2e-2, atol=2e-2)
        head = model.head if family == "vim" else model.classifier
        for m in (model, eager):  # in place: the replay reads the new values
            norm = m.vim.norm_f if family == "vim" else m.vmamba.norm
            norm.weight.mul_(1.5)
        torch.testing.assert_close(model(pixel_values=xs[2]).logits, eager(pixel_values=xs[2]).logits,
                                   rtol=1e-4, atol=1e-4)
        hidden = model(pixel_values=xs[2], output_hidden_states=True)  # eager: the graph keeps no hidden states
        assert hidden.hidden_states is not None and len(hidden.hidden_states) > 1
        x3 = torch.randn(3, 3, 64, 64, device="cuda")
        for _ in range(3):
            torch.testing.assert_close(model(pixel_values=x3).logits, eager(pixel_values=x3).logits,
                                       rtol=1e-4, atol=1e-4)
        assert ForwardGraphs.count(backbone) <= ForwardGraphs.MAX_GRAPHS
    model.train()
    out = model(pixel_values=xs[0], labels=torch.tensor([1, 2], device="cuda"))
    out.loss.backward()  # training never replays: gradients flow
    assert head.weight.grad is not None
    model.cpu()
    assert ForwardGraphs.count(backbone) == 0  # .to() frees the graphs


@pytest.mark.parametrize("family", ["vim", "vmamba"])
def test_vision_cuda_graph_replay_first_then_checks(family):
    """A captured forward is replayed before the fingerprint and the pixels' finiteness are checked: a weight replaced
    by a new tensor (the old one deleted and the cache emptied), a weight's .data swapped and a hook added after the
    capture each give the eager numbers (the stale replay is dropped, the hook is called), and NaN pixels still raise
    the ValueError, after which the graph keeps replaying."""
    from ssmvl.modeling.cuda_graphs import ForwardGraphs

    model, eager = _vision(family, use_cuda_graph=True), _vision(family)
    backbone = model.vim if family == "vim" else model.vmamba

    def norms(m):
        return m.vim.norm_f if family == "vim" else m.vmamba.norm

    x = torch.randn(2, 3, 64, 64, device="cuda")
    with torch.no_grad():
        for _ in range(3):
            model(pixel_values=x)
        assert ForwardGraphs.count(backbone) == 1
        for m in (model, eager):  # a new Parameter; the old tensor's memory handed back to the driver
            norms(m).weight = torch.nn.Parameter(norms(m).weight * 0.5)
        torch.cuda.empty_cache()
        torch.testing.assert_close(model(pixel_values=x).logits, eager(pixel_values=x).logits, rtol=1e-4, atol=1e-4)
        for _ in range(2):  # captured again with the new weight
            torch.testing.assert_close(model(pixel_values=x).logits, eager(pixel_values=x).logits, rtol=1e-4,
                                       atol=1e-4)
        for m in (model, eager):
            norms(m).weight.data = norms(m).weight.data * 2.0
        torch.cuda.empty_cache()
        torch.testing.assert_close(model(pixel_values=x).logits, eager(pixel_values=x).logits, rtol=1e-4, atol=1e-4)
        for _ in range(2):
            model(pixel_values=x)
        calls = []
        handle = norms(model).register_forward_hook(lambda *a: calls.append(1))
        model(pixel_values=x)
        assert calls == [1]  # the stale replay was dropped and the forward ran eagerly
        handle.remove()
        for _ in range(2):
            model(pixel_values=x)
        bad = x.clone()
        bad[0, 0, 0, 0] = float("nan")
        with pytest.raises(ValueError, match="NaN or infinite"):
            model(pixel_values=bad)
        torch.testing.assert_close(model(pixel_values=x).logits, eager(pixel_values=x).logits, rtol=1e-4, atol=1e-4)


def test_vision_cuda_graph_is_off_by_default():
    from ssmvl.modeling.cuda_graphs import ForwardGraphs

    model = _vision("vim")
    with torch.no_grad():
        for _ in range(3):
            model(pixel_values=torch.randn(2, 3, 64, 64, device="cuda"))
    assert model.config.use_cuda_graph is False and ForwardGraphs.count(model.vim) == 0
