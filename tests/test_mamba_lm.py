"""Mamba LM (MambaLMForCausalLM): parity with transformers' MambaForCausalLM, every generate() mode, cached stepping,
constant-size cache, loss, gradient checkpointing, device_map, Auto classes, remote code without ssmvl, and the
converter from state-spaces / transformers checkpoint folders. Tiny random configs; CPU; fp32."""

from __future__ import annotations

import json
import os
import sys
import types

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModelForCausalLM, MambaConfig, MambaForCausalLM

import ssmvl.modeling  # noqa: F401  (registers the Auto classes)
from ssmvl.conversion import convert_mamba_to_hf as conv
from ssmvl.modeling.configuration_mamba_lm import MambaLMConfig
from ssmvl.modeling.modeling_mamba_lm import MambaLMForCausalLM
from ssmvl.modeling.ssm_ops import BACKENDS, available_backends

sys.path.insert(0, os.path.dirname(__file__))
from isolated import run_isolated  # noqa: E402


TINY = dict(vocab_size=99, hidden_size=32, state_size=8, num_hidden_layers=2, expand=2, conv_kernel=4,
            pad_token_id=0, bos_token_id=1, eos_token_id=98)
ATOL = 1e-4
NEW = 32


def ours_from(state_dict, **overrides) -> MambaLMForCausalLM:
    model = MambaLMForCausalLM(MambaLMConfig(**{**TINY, **overrides}))
    model.load_state_dict(state_dict, strict=True)
    return model.eval()


@pytest.fixture(scope="module")
def pair():
    """(transformers MambaForCausalLM, ours) holding the same random weights."""
    torch.manual_seed(0)
    hf = MambaForCausalLM(MambaConfig(**TINY)).eval()
    if hf.lm_head.weight is not hf.backbone.embeddings.weight:  # transformers 5.0.0 ties only in from_pretrained
        hf.lm_head.weight = hf.backbone.embeddings.weight
    return hf, ours_from(hf.state_dict())


def ids(batch, length, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(2, TINY["vocab_size"] - 1, (batch, length), generator=g)  # no pad / bos / eos ids


def left_padded(lengths=(5, 9, 13), seed=1):
    prompts = [ids(1, n, seed + i)[0] for i, n in enumerate(lengths)]
    width = max(lengths)
    input_ids = torch.full((len(prompts), width), TINY["pad_token_id"], dtype=torch.long)
    mask = torch.zeros_like(input_ids)
    for i, p in enumerate(prompts):
        input_ids[i, width - len(p):] = p
        mask[i, width - len(p):] = 1
    return prompts, input_ids, mask


def greedy(model, input_ids, attention_mask=None, new=NEW, **kw):
    with torch.no_grad():
        return model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=new,
                              min_new_tokens=new, do_sample=False, pad_token_id=TINY["pad_token_id"], **kw)


# ---------------------------------------------------------------------------------------------------------------------
# parity with transformers' MambaForCausalLM
# ---------------------------------------------------------------------------------------------------------------------
def test_logits_parity_with_transformers(pair):
    hf, ours = pair
    x = ids(2, 24)
    with torch.no_grad():
        diff = (hf(x).logits - ours(x).logits).abs().max().item()
    assert diff <= ATOL, diff


@pytest.mark.parametrize("residual_in_fp32", [True, False])
def test_inference_loop_with_fused_norms_equals_blocks(pair, residual_in_fp32):
    """Outside autograd the backbone runs each residual sum with the next norm (add_rms_norm); with gradients, or with
    a hook on a block, it runs the blocks themselves: the same logits and cache states (CPU: the same ops, exactly)."""
    _, ours = pair
    model = ours_from(ours.state_dict(), residual_in_fp32=residual_in_fp32)
    x = ids(2, 9)
    with torch.no_grad():
        assert model.backbone._fused_norms_apply()
        fused = model(x, use_cache=True)
        handle = model.backbone.layers[1].register_forward_hook(lambda *a: None)
        assert not model.backbone._fused_norms_apply()
        plain = model(x, use_cache=True)
        handle.remove()
    with_grad = model(x, use_cache=True)
    assert torch.equal(fused.logits, plain.logits) and torch.equal(fused.logits, with_grad.logits.detach())
    for a, b in zip(fused.cache.ssm_states + fused.cache.conv_states, plain.cache.ssm_states + plain.cache.conv_states):
        assert torch.equal(a, b)


def test_greedy_batch1_equals_transformers(pair):
    hf, ours = pair
    x = ids(1, 7, seed=3)
    out = greedy(ours, x)
    assert out.shape == (1, 7 + NEW)
    assert torch.equal(out, greedy(hf, x))


@pytest.fixture(scope="module")
def padded_run(pair):
    hf, ours = pair
    prompts, x, mask = left_padded()
    return prompts, x, mask, greedy(ours, x, mask), greedy(hf, x, mask)


def test_greedy_left_padded_batch_equals_transformers(padded_run):
    _, x, _, ours_out, hf_out = padded_run
    assert ours_out.shape == (3, x.shape[1] + NEW)
    assert torch.equal(ours_out, hf_out)


def test_padding_does_not_leak_into_state(pair, padded_run):
    _, ours = pair
    prompts, x, _, ours_out, _ = padded_run
    for i, p in enumerate(prompts):
        alone = greedy(ours, p[None])
        assert torch.equal(ours_out[i, x.shape[1]:], alone[0, len(p):]), f"row {i} (prompt length {len(p)})"


def test_use_cache_false_gives_same_tokens(pair, padded_run):
    _, ours = pair
    x1 = ids(1, 7, seed=3)
    assert torch.equal(greedy(ours, x1, use_cache=False), greedy(ours, x1))
    _, x, mask, ours_out, _ = padded_run
    assert torch.equal(greedy(ours, x, mask, use_cache=False), ours_out)


def test_beam_search_equals_transformers(pair):
    hf, ours = pair
    x = ids(1, 6, seed=5)
    kw = dict(num_beams=3, new=20)
    out = greedy(ours, x, **kw)
    assert out.shape == (1, 6 + 20)
    # the reference is transformers' model without its cache: transformers 5.0.0's own cached Mamba beam search
    # disagrees with its cache-free one on the padded batch below (ours agrees with both on later releases)
    assert torch.equal(out, greedy(hf, x, use_cache=False, **kw))
    prompts, xp, mask = left_padded((4, 8), seed=11)
    assert torch.equal(greedy(ours, xp, mask, **kw), greedy(hf, xp, mask, use_cache=False, **kw))


def test_sampling_is_seeded_and_reproducible(pair):
    _, ours = pair
    x = ids(2, 5, seed=7)

    def sample(seed):
        torch.manual_seed(seed)
        with torch.no_grad():
            return ours.generate(input_ids=x, do_sample=True, temperature=0.7, top_k=20, top_p=0.9,
                                 max_new_tokens=NEW, min_new_tokens=NEW, pad_token_id=0)

    a, b = sample(123), sample(123)
    assert a.shape == (2, 5 + NEW) and torch.equal(a, b)
    assert ((a[:, 5:] >= 0) & (a[:, 5:] < TINY["vocab_size"])).all()
    assert not torch.equal(sample(123), sample(321))  # the seed matters (32 tokens x 2 rows: collision negligible)


def test_inputs_embeds_prompt_gives_same_tokens(pair, padded_run):
    _, ours = pair
    emb = ours.get_input_embeddings()
    x1 = ids(1, 7, seed=3)
    with torch.no_grad():
        out = ours.generate(inputs_embeds=emb(x1), max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False,
                            pad_token_id=0)
    assert torch.equal(out, greedy(ours, x1)[:, 7:])  # with only embeds, generate returns the new tokens
    _, x, mask, ours_out, _ = padded_run
    with torch.no_grad():
        out = ours.generate(inputs_embeds=emb(x), attention_mask=mask, max_new_tokens=NEW, min_new_tokens=NEW,
                            do_sample=False, pad_token_id=0)
    assert torch.equal(out, ours_out[:, x.shape[1]:])


# ---------------------------------------------------------------------------------------------------------------------
# cache: prefix + cached steps == one full pass; constant size
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_prefix_plus_cached_steps_equals_full_forward(pair, backend):
    if backend not in available_backends("cpu"):
        pytest.skip(f"backend {backend!r} cannot run on this machine")
    hf, _ = pair
    model = ours_from(hf.state_dict(), ssm_backend=backend)
    x = ids(2, 20, seed=9)
    prefix, steps = 8, 12
    with torch.no_grad():
        full = model(x).logits
        out = model(x[:, :prefix], use_cache=True)
        got = [out.logits]
        cache = out.cache
        for t in range(prefix, prefix + steps):
            out = model(x[:, t:t + 1], cache=cache, use_cache=True)
            got.append(out.logits)
        assert cache.seqlen_offset == prefix + steps
    diff = (torch.cat(got, 1) - full).abs().max().item()
    assert diff <= ATOL, f"{backend}: {diff}"


@pytest.mark.parametrize("state_dtype", ["bfloat16", "float16"])
def test_low_precision_ssm_states_follow_the_full_forward(pair, state_dtype):
    """ssm_state_dtype: the cache keeps its SSM states in bf16 / fp16 (half the cache), each step computing in fp32:
    prefix + cached steps stay within the rounding of the kept state of the full forward; a bad name is refused."""
    hf, _ = pair
    model = ours_from(hf.state_dict(), ssm_backend="torch", ssm_state_dtype=state_dtype)
    x = ids(2, 20, seed=9)
    with torch.no_grad():
        full = model(x).logits
        out = model(x[:, :8], use_cache=True)
        got = [out.logits] + [model(x[:, t:t + 1], cache=out.cache, use_cache=True).logits for t in range(8, 20)]
    assert all(s.dtype == getattr(torch, state_dtype) for s in out.cache.ssm_states)
    assert out.cache.conv_states[0].dtype == torch.float32
    diff = (torch.cat(got, 1) - full).abs().max().item()
    assert diff <= 2e-3 * full.abs().max().item(), diff
    with pytest.raises(ValueError, match="ssm_state_dtype"):
        MambaLMConfig(ssm_state_dtype="int8")


@pytest.mark.parametrize("state_dtype, model_dtype, kept", [("auto", torch.bfloat16, torch.bfloat16),
                                                            ("auto", torch.float32, torch.float32),
                                                            ("float32", torch.bfloat16, torch.float32)])
def test_ssm_state_dtype_auto_follows_the_model(pair, state_dtype, model_dtype, kept):
    """The default "auto" keeps the SSM states in the model's dtype, as mamba_ssm and transformers' MambaCache do;
    "float32" keeps a bf16 model's states in fp32. The conv states are always in the model's dtype."""
    hf, _ = pair
    model = ours_from(hf.state_dict(), ssm_backend="torch", ssm_state_dtype=state_dtype).to(model_dtype)
    assert MambaLMConfig().ssm_state_dtype == "auto"
    with torch.no_grad():
        cache = model(ids(2, 6, seed=3), use_cache=True).cache
    assert {s.dtype for s in cache.ssm_states} == {kept}
    assert {s.dtype for s in cache.conv_states} == {model_dtype}


def test_cached_step_calls_a_hooked_dt_proj(pair):
    """A decoding step folds dt_proj into the state update only where dt_proj is a plain nn.Linear: with a forward hook
    on it (as any wrapper or adapter), the step calls the module, and the hook's change reaches the logits."""
    hf, _ = pair
    model = ours_from(hf.state_dict(), ssm_backend="torch")
    x = ids(1, 6, seed=4)
    dt_proj = model.backbone.layers[0].mixer.dt_proj
    calls = []

    def run():
        with torch.no_grad():
            out = model(x[:, :5], use_cache=True)
            return model(x[:, 5:], cache=out.cache, use_cache=True).logits

    plain = run()
    handle = dt_proj.register_forward_hook(lambda m, args, out: calls.append(args[0].shape) or out + 1.0)
    try:
        hooked = run()
    finally:
        handle.remove()
    assert any(c[0] == 1 for c in calls)  # the step's call: (batch 1, rank); the prefill's is (5 tokens, rank)
    assert not torch.allclose(hooked, plain)
    assert torch.equal(run(), plain)


@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_chunked_continuation_equals_full_forward(pair, backend):
    hf, _ = pair
    model = ours_from(hf.state_dict(), ssm_backend=backend)
    x = ids(2, 24, seed=10)
    with torch.no_grad():
        full = model(x).logits
        a = model(x[:, :7], use_cache=True)
        b = model(x[:, 7:18], cache=a.cache, use_cache=True)  # multi-token chunk with the cache
        c = model(x[:, 18:19], cache=a.cache, use_cache=True)  # then a single step
        d = model(x[:, 19:], cache=a.cache, use_cache=True)  # then another chunk
    diff = (torch.cat([a.logits, b.logits, c.logits, d.logits], 1) - full).abs().max().item()
    assert diff <= ATOL, f"{backend}: {diff}"


def test_chunked_prefill_equals_one_pass(pair):
    """Long prompts are prefilled `chunked_prefill_size` tokens at a time (flat memory): same logits, same tokens,
    left padding included, with and without logits_to_keep."""
    hf, _ = pair
    model = ours_from(hf.state_dict(), chunked_prefill_size=0)
    _, input_ids, mask = left_padded(lengths=(5, 17, 23))
    calls = []
    model.backbone.register_forward_hook(lambda *args: calls.append(1))
    with torch.no_grad():
        one_pass = model(input_ids, attention_mask=mask).logits
        tokens = greedy(model, input_ids, mask, new=8)
        model.config.chunked_prefill_size = 4
        calls.clear()
        chunked = model(input_ids, attention_mask=mask).logits
        assert len(calls) == 6  # ceil(23 / 4) chunks
        last = model(input_ids, attention_mask=mask, logits_to_keep=5).logits
        chunked_tokens = greedy(model, input_ids, mask, new=8)
    assert torch.allclose(chunked, one_pass, atol=ATOL)
    assert torch.allclose(last, one_pass[:, -5:], atol=ATOL)
    assert torch.equal(chunked_tokens, tokens)
    bad = input_ids.clone()
    bad[0, -1] = model.config.vocab_size  # in the last chunk, which the backbone runs as a cached step
    with torch.no_grad(), pytest.raises(ValueError, match="vocabulary"):
        model(bad, attention_mask=mask)


def test_cache_is_constant_in_sequence_length(pair):
    _, ours = pair
    with torch.no_grad():
        c10 = ours(ids(1, 10), use_cache=True).cache
        c100 = ours(ids(1, 100), use_cache=True).cache
        n10 = c10.nbytes()
        ours(ids(1, 1), cache=c10, use_cache=True)
    assert n10 == c100.nbytes() == c10.nbytes() > 0


# ---------------------------------------------------------------------------------------------------------------------
# training: loss, gradient checkpointing
# ---------------------------------------------------------------------------------------------------------------------
def test_loss_matches_manual_cross_entropy(pair):
    hf, ours = pair
    x = ids(2, 12, seed=4)
    labels = x.clone()
    labels[0, :4] = -100
    labels[1, -3:] = -100
    with torch.no_grad():
        out = ours(x, labels=labels)
        manual = F.cross_entropy(out.logits[:, :-1].reshape(-1, TINY["vocab_size"]), labels[:, 1:].reshape(-1),
                                 ignore_index=-100)
        hf_loss = hf(x, labels=labels).loss
    torch.testing.assert_close(out.loss, manual, rtol=0, atol=1e-6)
    torch.testing.assert_close(out.loss, hf_loss, rtol=0, atol=1e-5)


def test_gradient_checkpointing_same_gradients(pair):
    hf, _ = pair
    x = ids(2, 16, seed=6)

    def grads(checkpointing):
        model = ours_from(hf.state_dict())
        model.train()
        if checkpointing:
            if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x name
                model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            assert all(layer.gradient_checkpointing for layer in model.backbone.layers)
        model(x, labels=x).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain, ckpt = grads(False), grads(True)
    assert plain.keys() == ckpt.keys() and len(plain) > 10
    for name in plain:
        torch.testing.assert_close(ckpt[name], plain[name], rtol=1e-5, atol=1e-6, msg=name)


def test_no_split_modules_and_device_map_auto(pair, tmp_path):
    pytest.importorskip("accelerate")
    _, ours = pair
    assert set(ours._no_split_modules) == {"MambaBlock"} and "MambaBlock" in MambaLMForCausalLM._no_split_modules
    ours.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, device_map="auto").eval()
    # accelerate placed whole blocks (never split inside a MambaBlock); on a CPU-only machine everything is on cpu
    device_map = getattr(loaded, "hf_device_map", None) or {"": "cpu"}
    assert not any(".mixer." in name or ".norm" in name.split("layers.")[-1] for name in device_map), device_map
    if not torch.cuda.is_available():
        assert {p.device.type for p in loaded.parameters()} == {"cpu"}
    x = ids(1, 9)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).logits.cpu(), ours(x).logits, rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------------------
# config errors, Auto classes, save / load, remote code without ssmvl
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, needle", [
    (dict(hidden_size=0), "hidden_size"),
    (dict(num_hidden_layers=-1), "num_hidden_layers"),
    (dict(hidden_size=32, intermediate_size=4, time_step_rank=8), "time_step_rank"),
    (dict(hidden_act="gelu"), "hidden_act"),
    (dict(time_step_min=0.5, time_step_max=0.1), "time_step_min"),
])
def test_config_errors(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        MambaLMConfig(**{**TINY, **kwargs})


def test_auto_classes_from_saved_dir(pair, tmp_path):
    _, ours = pair
    ours.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "ssmvl_mamba" and "AutoModelForCausalLM" in saved["auto_map"]
    cfg = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(cfg, MambaLMConfig) and cfg.hidden_size == TINY["hidden_size"]
    model = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(model) is MambaLMForCausalLM
    assert model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()  # still tied
    x = ids(2, 11)
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, ours(x).logits, rtol=0, atol=0)


REMOTE = """
import json, sys, torch
from transformers import AutoConfig, AutoModelForCausalLM
d = sys.argv[1] if len(sys.argv) > 1 else "model"
model = AutoModelForCausalLM.from_pretrained(d, trust_remote_code=True).eval()
x = torch.load(d + "/x.pt")
with torch.no_grad():
    logits = model(x).logits
    gen = model.generate(input_ids=x[:1, :6], max_new_tokens=12, min_new_tokens=12, do_sample=False, pad_token_id=0)
torch.save({"logits": logits, "gen": gen}, d + "/remote.pt")
print(json.dumps({"class": type(model).__name__, "module": type(model).__module__,
                  "config": type(AutoConfig.from_pretrained(d, trust_remote_code=True)).__name__,
                  "ssmvl": any(m.startswith("ssmvl") for m in sys.modules)}))
"""


def test_remote_code_without_ssmvl(pair, tmp_path, monkeypatch):
    monkeypatch.setenv("SSMVL_CPU_SCAN_KERNEL", "0")  # the local side as remote code runs it: the eager torch scan
    _, ours = pair
    d = tmp_path / "model"
    ours.save_pretrained(d)
    x = ids(2, 10, seed=12)
    torch.save(x, d / "x.pt")
    proc = run_isolated(REMOTE, cwd=tmp_path)
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert info == {"class": "MambaLMForCausalLM", "module": info["module"], "config": "MambaLMConfig",
                    "ssmvl": False}
    assert info["module"].startswith("transformers_modules")
    remote = torch.load(d / "remote.pt")
    with torch.no_grad():
        torch.testing.assert_close(remote["logits"], ours(x).logits, rtol=0, atol=1e-6)
    assert torch.equal(remote["gen"], greedy(ours, x[:1, :6], new=12))


# ---------------------------------------------------------------------------------------------------------------------
# converter
# ---------------------------------------------------------------------------------------------------------------------
SS_CONFIG = {"d_model": 32, "n_layer": 2, "vocab_size": 97, "ssm_cfg": {"d_state": 8, "d_conv": 4, "expand": 2},
             "rms_norm": True, "residual_in_fp32": True, "fused_add_norm": True, "pad_vocab_size_multiple": 8,
             "tie_embeddings": True}


def fake_state_spaces_state_dict(seed=0, untied=False):
    """A random state dict with the exact key names of mamba_ssm's MambaLMHeadModel for SS_CONFIG (vocab 97 -> 104)."""
    g = torch.Generator().manual_seed(seed)
    n, d, i, r, k, v = 8, 32, 64, 2, 4, 104
    sd = {"backbone.embedding.weight": torch.randn(v, d, generator=g) * 0.1,
          "backbone.norm_f.weight": 1 + 0.1 * torch.randn(d, generator=g)}
    for layer in range(2):
        p = f"backbone.layers.{layer}."
        sd.update({
            p + "norm.weight": 1 + 0.1 * torch.randn(d, generator=g),
            p + "mixer.in_proj.weight": torch.randn(2 * i, d, generator=g) * d**-0.5,
            p + "mixer.conv1d.weight": torch.randn(i, 1, k, generator=g) * 0.5,
            p + "mixer.conv1d.bias": torch.randn(i, generator=g) * 0.1,
            p + "mixer.x_proj.weight": torch.randn(r + 2 * n, i, generator=g) * i**-0.5,
            p + "mixer.dt_proj.weight": torch.randn(i, r, generator=g) * r**-0.5,
            p + "mixer.dt_proj.bias": torch.rand(i, generator=g) * -4 - 1,
            p + "mixer.A_log": torch.log(torch.arange(1, n + 1).float()).repeat(i, 1) + 0.1 * torch.randn(i, n,
                                                                                                          generator=g),
            p + "mixer.D": torch.ones(i) + 0.1 * torch.randn(i, generator=g),
            p + "mixer.out_proj.weight": torch.randn(d, i, generator=g) * i**-0.5,
        })
    sd["lm_head.weight"] = (torch.randn(v, d, generator=g) * 0.1 if untied else sd["backbone.embedding.weight"])
    return sd


@pytest.fixture()
def ss_dir(tmp_path):
    d = tmp_path / "mamba-ss"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(SS_CONFIG))
    torch.save(fake_state_spaces_state_dict(), d / "pytorch_model.bin")
    return d


def test_config_from_state_spaces_pads_vocab_and_reads_ssm_cfg():
    cfg = conv.config_from_state_spaces({**SS_CONFIG, "ssm_cfg": {"d_state": 4, "d_conv": 3, "expand": 3,
                                                                  "dt_rank": 5, "conv_bias": False, "bias": True}})
    assert (cfg.vocab_size, cfg.hidden_size, cfg.num_hidden_layers) == (104, 32, 2)
    assert (cfg.state_size, cfg.conv_kernel, cfg.intermediate_size, cfg.time_step_rank) == (4, 3, 96, 5)
    assert cfg.use_conv_bias is False and cfg.use_bias is True and cfg.tie_word_embeddings is True
    assert conv.pad_vocab_size(50277, 8) == 50280 and conv.pad_vocab_size(50280, 8) == 50280
    with pytest.raises(ValueError, match="rms_norm=False.*not supported"):
        conv.config_from_state_spaces({**SS_CONFIG, "rms_norm": False})
    with pytest.raises(ValueError, match="Mamba2"):
        conv.config_from_state_spaces({**SS_CONFIG, "ssm_cfg": {"layer": "Mamba2"}})
    with pytest.raises(ValueError, match="d_model"):
        conv.config_from_state_spaces({"n_layer": 2})


def test_config_from_transformers_checks_sizes():
    hf_cfg = MambaConfig(**TINY).to_dict()
    cfg = conv.config_from_transformers(hf_cfg)
    assert cfg.model_type == "ssmvl_mamba" and cfg.intermediate_size == 64 and cfg.vocab_size == 99
    with pytest.raises(ValueError, match="intermediate_size=48"):
        conv.config_from_transformers({**hf_cfg, "intermediate_size": 48})
    with pytest.raises(ValueError, match="hidden_size"):
        conv.config_from_transformers({**hf_cfg, "hidden_size": -4})
    with pytest.raises(ValueError, match="Mamba-2"):
        conv.config_from_transformers({**hf_cfg, "model_type": "mamba2"})


def test_convert_state_spaces_checkpoint(ss_dir, tmp_path, monkeypatch):
    (ss_dir / "tokenizer.json").write_text('{"fake": "tokenizer"}')
    (ss_dir / "tokenizer_config.json").write_text('{"model_max_length": 2048}')
    pushed = []
    fake_hub = types.ModuleType("ssmvl.conversion.hub")
    fake_hub.push_folder = lambda folder, repo_id: pushed.append((folder, repo_id))
    monkeypatch.setitem(sys.modules, "ssmvl.conversion.hub", fake_hub)
    out = tmp_path / "out"
    report = conv.convert(ss_dir, out, push_to_hub="me/mamba-tiny", verbose=False)
    assert pushed == [(str(out), "me/mamba-tiny")]
    assert (out / "tokenizer.json").read_text() == '{"fake": "tokenizer"}' and (out / "tokenizer_config.json").exists()
    assert report["source"] == "state_spaces" and report["passed"]
    assert report["max_abs_diff"] <= ATOL, report
    assert json.loads((out / "parity_report.json").read_text())["max_abs_diff"] == report["max_abs_diff"]
    assert (out / "model.safetensors").is_file() and (out / "modeling_mamba_lm.py").is_file()
    # strict: the saved folder holds exactly the original tensors under our names
    original = fake_state_spaces_state_dict()
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    assert model.config.vocab_size == 104 and model.config.tie_word_embeddings
    ours = {k: v for k, v in model.state_dict().items()}
    for key, value in original.items():
        new = "backbone.embeddings.weight" if key == "backbone.embedding.weight" else key
        assert torch.equal(ours[new], value), key
    assert set(ours) == {("backbone.embeddings.weight" if k == "backbone.embedding.weight" else k) for k in original}
    # CLI on the same folder, through main()
    assert conv.main(["--checkpoint", str(ss_dir), "--out", str(tmp_path / "cli"), "--source", "state_spaces"]) == 0
    assert (tmp_path / "cli" / "parity_report.json").is_file()


def test_convert_untied_lm_head_is_kept_and_said(tmp_path):
    d = tmp_path / "ss"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(SS_CONFIG))  # says tied, but lm_head differs
    sd = fake_state_spaces_state_dict(untied=True)
    torch.save(sd, d / "pytorch_model.bin")
    report = conv.convert(d, tmp_path / "out", verbose=False)
    assert report["max_abs_diff"] <= ATOL and any("UNTIED" in n for n in report["notes"])
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert model.config.tie_word_embeddings is False
    assert torch.equal(model.lm_head.weight, sd["lm_head.weight"])
    assert torch.equal(model.backbone.embeddings.weight, sd["backbone.embedding.weight"])


def test_convert_transformers_folder(pair, tmp_path):
    hf, _ = pair
    src = tmp_path / "hf"
    hf.save_pretrained(src)
    out = tmp_path / "out"
    report = conv.convert(src, out, verbose=False)
    assert report["source"] == "transformers" and report["max_abs_diff"] <= ATOL, report
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(model) is MambaLMForCausalLM
    x = ids(2, 13)
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, hf(x).logits, rtol=0, atol=ATOL)


def test_convert_state_dict_names_missing_unexpected_misshaped():
    config = conv.config_from_state_spaces(SS_CONFIG)
    sd = fake_state_spaces_state_dict()
    ok = conv.convert_state_dict(sd, config, "state_spaces")
    assert "backbone.embeddings.weight" in ok and "backbone.embedding.weight" not in ok
    bad = dict(sd)
    del bad["backbone.layers.1.mixer.x_proj.weight"]
    bad["backbone.layers.0.mixer.extra_thing"] = torch.zeros(3)
    bad["backbone.layers.0.mixer.D"] = torch.zeros(65)
    with pytest.raises(ValueError) as err:
        conv.convert_state_dict(bad, config, "state_spaces")
    msg = str(err.value)
    assert "missing" in msg and "backbone.layers.1.mixer.x_proj.weight" in msg
    assert "unexpected" in msg and "backbone.layers.0.mixer.extra_thing" in msg
    assert "mis-shaped" in msg and "backbone.layers.0.mixer.D: expected (64,), got (65,)" in msg
    assert sd["backbone.layers.0.mixer.D"].shape == (64,)  # pure: the input is untouched
    # a config whose sizes do not match the weights: the error says what the weights look like
    with pytest.raises(ValueError, match="hidden_size=32"):
        conv.convert_state_dict(sd, conv.config_from_state_spaces({**SS_CONFIG, "d_model": 48}), "state_spaces")


def test_convert_bad_inputs(ss_dir, pair, tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        conv.convert(tmp_path / "nope", tmp_path / "o1", verbose=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no config.json"):
        conv.convert(empty, tmp_path / "o2", verbose=False)
    (empty / "config.json").write_text(json.dumps(SS_CONFIG))
    with pytest.raises(ValueError, match="no weights"):
        conv.convert(empty, tmp_path / "o3", verbose=False)
    # truncated safetensors
    hf, _ = pair
    src = tmp_path / "hf"
    hf.save_pretrained(src)
    blob = (src / "model.safetensors").read_bytes()
    (src / "model.safetensors").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ValueError, match=r"model\.safetensors.*(truncated|corrupted)"):
        conv.convert(src, tmp_path / "o4", verbose=False)
    # config sizes inconsistent with themselves (checked before the weights are read)
    (ss_dir / "config.json").write_text(json.dumps({**SS_CONFIG, "n_layer": 0}))
    with pytest.raises(ValueError, match="n_layer must be a positive integer"):
        conv.convert(ss_dir, tmp_path / "o6", verbose=False)
    (ss_dir / "config.json").write_text(json.dumps({**SS_CONFIG, "ssm_cfg": {"expand": 2, "dt_rank": 1000}}))
    with pytest.raises(ValueError, match="time_step_rank=1000 exceeds intermediate_size=64"):
        conv.convert(ss_dir, tmp_path / "o6", verbose=False)
    (ss_dir / "config.json").write_text(json.dumps(SS_CONFIG))
    # truncated .bin
    blob = (ss_dir / "pytorch_model.bin").read_bytes()
    (ss_dir / "pytorch_model.bin").write_bytes(blob[: len(blob) // 3])
    with pytest.raises(ValueError, match=r"pytorch_model\.bin.*(truncated|corrupted)"):
        conv.convert(ss_dir, tmp_path / "o5", verbose=False)
    assert not (tmp_path / "o5").exists() and not (tmp_path / "o6").exists()
    # the CLI turns these into a message and exit status 2
    with pytest.raises(SystemExit) as exit_info:
        conv.main(["--checkpoint", str(tmp_path / "nope"), "--out", str(tmp_path / "o7")])
    assert exit_info.value.code == 2


def test_convert_refuses_non_empty_out_dir(ss_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "my_notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="--overwrite"):
        conv.convert(ss_dir, out, verbose=False)
    assert (out / "my_notes.txt").read_text() == "keep me" and len(list(out.iterdir())) == 1
    with pytest.raises(ValueError, match="checkpoint folder"):
        conv.convert(ss_dir, ss_dir, overwrite=True, verbose=False)  # never over the source
    report = conv.convert(ss_dir, out, overwrite=True, verbose=False)
    assert report["passed"] and (out / "model.safetensors").is_file() and not (out / "my_notes.txt").exists()
    assert not [p for p in tmp_path.iterdir() if ".converting-" in p.name]  # no temp folder left behind


def test_cuda_graph_fingerprint_sees_what_a_captured_step_bakes_in(pair):
    """A kept CUDA graph is replayed only while this fingerprint is unchanged (tests/test_models_gpu.py replays it);
    it must move with every change that alters the step's Python decisions or tensors, and only then."""
    _, ours = pair
    model = ours_from(ours.state_dict())
    fp = model._graph_fingerprint
    base = fp()
    assert fp() == base
    handle = model.backbone.layers[1].mixer.register_forward_hook(lambda *a: None)
    assert fp() != base
    handle.remove()
    assert fp() == base
    model.backbone.layers[0].mixer.ssm_backend = "reference"
    assert fp() != base
    model.backbone.layers[0].mixer.ssm_backend = ours.backbone.layers[0].mixer.ssm_backend
    model.config.output_hidden_states = True
    assert fp() != base
    model.config.output_hidden_states = False
    assert fp() == base
    model.train()
    assert fp() != base
    model.eval()
    model.to(torch.float64)  # new tensors
    assert fp() != base

