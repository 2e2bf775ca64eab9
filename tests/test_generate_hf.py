"""generate() of the Mamba LM the way transformers' own generation tests use a model: the cache is a transformers
`Cache` (dict outputs, beam reordering, continuing a returned cache, assisted decoding with crop), inputs_embeds
together with input_ids, extra keyword arguments, the backend environment variable, and bad input. These checks are
written for ssmvl (not copied from transformers) and run under every transformers release we support
(`make test-oldest`, `make test-latest`). Tiny random configs; CPU; fp32."""

from __future__ import annotations

import pytest
import torch
from transformers.cache_utils import Cache

from ssmvl.modeling import ssm_ops
from ssmvl.modeling.configuration_mamba_lm import MambaLMConfig
from ssmvl.modeling.hf_compat import CACHE_NAME
from ssmvl.modeling.modeling_mamba_lm import MambaLMForCausalLM
from ssmvl.modeling.ssm_layers import SsmCache

TINY = dict(vocab_size=99, hidden_size=32, state_size=8, num_hidden_layers=2, expand=2, conv_kernel=4,
            pad_token_id=0, bos_token_id=1, eos_token_id=98)


def make_model(seed=0, **overrides) -> MambaLMForCausalLM:
    torch.manual_seed(seed)
    return MambaLMForCausalLM(MambaLMConfig(**{**TINY, **overrides})).eval()


@pytest.fixture(scope="module")
def model():
    return make_model()


def ids(batch, length, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(2, TINY["vocab_size"] - 1, (batch, length), generator=g)


def greedy(model, input_ids, new=12, **kw):
    return model.generate(input_ids, max_new_tokens=new, min_new_tokens=new, do_sample=False, **kw)


def returned_cache(out):
    return out[CACHE_NAME]


def test_ssm_cache_is_a_transformers_cache(model):
    out = model(ids(2, 7), use_cache=True)
    assert isinstance(out.cache, Cache) and isinstance(out.cache, SsmCache)
    assert out[CACHE_NAME] is out.cache and out.cache_params is out.cache  # every spelling reads the same cache
    assert out.cache.get_seq_length() == 7 and len(out.cache) == TINY["num_hidden_layers"]


def test_generate_follows_inputs_embeds_when_input_ids_are_given_too(model):
    prompt, other = ids(2, 6, seed=1), ids(2, 6, seed=2)
    embeds = model.get_input_embeddings()(other)
    # the ids only serve generate()'s bookkeeping; the prompt the model reads is the embeddings
    out = model.generate(input_ids=prompt, inputs_embeds=embeds, max_new_tokens=8, min_new_tokens=8, do_sample=False)
    expected = greedy(model, other, new=8)[:, 6:]
    assert torch.equal(out[:, -8:], expected)
    assert not torch.equal(greedy(model, prompt, new=8)[:, 6:], expected)  # the test can tell the two apart


def test_inputs_embeds_without_cache(model):
    other = ids(1, 5, seed=4)
    embeds = model.get_input_embeddings()(other)
    with_cache = model.generate(inputs_embeds=embeds, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    no_cache = model.generate(inputs_embeds=embeds, max_new_tokens=6, min_new_tokens=6, do_sample=False,
                              use_cache=False)
    assert torch.equal(with_cache[:, -6:], no_cache[:, -6:])
    assert torch.equal(with_cache[:, -6:], greedy(model, other, new=6)[:, -6:])


def test_extra_generate_kwargs_reach_forward(model):
    with pytest.raises((TypeError, ValueError), match="not_a_model_argument"):
        model.generate(ids(1, 4), max_new_tokens=2, not_a_model_argument=3)
    # a known one arrives: hidden states of every step
    out = model.generate(ids(1, 4), max_new_tokens=3, min_new_tokens=3, do_sample=False,
                         return_dict_in_generate=True, output_hidden_states=True)
    assert len(out.hidden_states) == 3 and len(out.hidden_states[0]) == TINY["num_hidden_layers"] + 1


def test_dict_output_greedy_returns_the_cache(model):
    prompt = ids(2, 6, seed=5)
    plain = greedy(model, prompt)
    out = greedy(model, prompt, return_dict_in_generate=True, output_scores=True, output_logits=True)
    assert torch.equal(out.sequences, plain)
    cache = returned_cache(out)
    assert isinstance(cache, SsmCache) and cache.get_seq_length() == plain.shape[1] - 1
    # the scores are the model's own next-token logits
    full = model(plain, use_cache=False).logits
    for t in range(12):
        torch.testing.assert_close(out.logits[t], full[:, 6 + t - 1], atol=1e-4, rtol=1e-4)


def test_beam_search_dict_output_reorders_the_cache(model):
    prompt = ids(2, 5, seed=6)
    kw = dict(max_new_tokens=8, min_new_tokens=8, num_beams=3, do_sample=False, num_return_sequences=2)
    plain = model.generate(prompt, **kw)
    out = model.generate(prompt, return_dict_in_generate=True, output_scores=True, **kw)
    assert torch.equal(out.sequences, plain)
    # every returned beam is the greedy-scored sequence the cache-free model gives: score each with a full pass
    no_cache = model.generate(prompt, use_cache=False, **kw)
    assert torch.equal(no_cache, plain)
    # beam scores equal the sum of the log-probabilities of each returned continuation
    logp = torch.log_softmax(model(plain, use_cache=False).logits.float(), -1)
    tokens = plain[:, 5:]
    seq_logp = logp[:, 4:-1].gather(-1, tokens[..., None])[..., 0].sum(-1)
    torch.testing.assert_close(out.sequences_scores, seq_logp / tokens.shape[1], atol=1e-4, rtol=1e-4)


def test_continue_generation_from_a_returned_cache(model):
    prompt = ids(2, 6, seed=7)
    whole = greedy(model, prompt, new=10)
    first = greedy(model, prompt, new=4, return_dict_in_generate=True)
    cache = returned_cache(first)
    again = greedy(model, first.sequences, new=6, **{CACHE_NAME: cache})
    assert torch.equal(again, whole)
    assert cache.get_seq_length() == whole.shape[1] - 1


@pytest.mark.parametrize("same_model", [True, False])
def test_assisted_decoding_equals_greedy(model, same_model):
    assistant = model if same_model else make_model(seed=3, num_hidden_layers=1)
    prompt = ids(1, 7, seed=8)
    plain = model.generate(prompt, max_new_tokens=16, do_sample=False)  # (min_new_tokens: not with an assistant)
    assisted = model.generate(prompt, max_new_tokens=16, do_sample=False, assistant_model=assistant)
    assert plain.shape[1] > prompt.shape[1] + 4
    assert torch.equal(assisted, plain)


def test_crop_takes_tokens_back_exactly(model):
    seq = ids(2, 14, seed=9)
    cache = model(seq[:, :8], use_cache=True).cache
    cache.activate_past_recording()
    model(seq[:, 8:], cache=cache, use_cache=True)
    assert cache.get_seq_length() == 14
    cache.crop(-4)  # transformers >= 5.24: remove 4 tokens
    ref = model(seq[:, :10], use_cache=True).cache
    for a, b in zip(cache.conv_states + cache.ssm_states, ref.conv_states + ref.ssm_states):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    cache.crop(9)  # older 5.x: keep the first 9 tokens
    step = model(seq[:, 9:10], cache=cache, use_cache=True).logits
    torch.testing.assert_close(step[:, -1], model(seq[:, :10]).logits[:, -1], atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="cannot take back"):
        cache.crop(-100)


def test_crop_without_recording_is_a_clear_error(model):
    cache = model(ids(1, 5), use_cache=True).cache
    with pytest.raises(ValueError, match="activate_past_recording"):
        cache.crop(-1)


def test_backend_environment_variable_applies_when_config_is_unset(monkeypatch):
    calls = []
    real = ssm_ops.selective_scan_ref
    monkeypatch.setattr(ssm_ops, "selective_scan_ref", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setenv("SSMVL_SSM_BACKEND", "reference")
    unset = make_model()
    assert unset.config.ssm_backend is None
    unset(ids(1, 5), use_cache=False)
    assert len(calls) == TINY["num_hidden_layers"]
    calls.clear()
    make_model(ssm_backend="torch")(ids(1, 5), use_cache=False)  # the config wins over the environment
    assert calls == []
    monkeypatch.setenv("SSMVL_SSM_BACKEND", "no-such-kernel")
    with pytest.raises(ValueError, match="Unknown SSM backend 'no-such-kernel'.*SSMVL_SSM_BACKEND"):
        unset(ids(1, 5))


@pytest.mark.parametrize("bad, needle", [
    (torch.zeros(1, 0, dtype=torch.long), "input_ids has no tokens"),
    (torch.rand(1, 4), "input_ids must be integer token ids"),
    (torch.zeros(4, dtype=torch.long), r"input_ids must be \(batch, seqlen\)"),
])
def test_bad_input_ids_are_named(model, bad, needle):
    with pytest.raises(ValueError, match=needle):
        model(bad)


def test_cache_batch_mismatch_is_named(model):
    cache = model(ids(2, 5), use_cache=True).cache
    with pytest.raises(ValueError, match="cache holds 2 sequence"):
        model(ids(3, 1), cache=cache, use_cache=True)
    with pytest.raises(ValueError, match="once"):
        model(ids(2, 1), cache=cache, past_key_values=model(ids(2, 5), use_cache=True).cache)


def test_tuple_and_dict_outputs_hold_the_same_values(model):
    x = ids(2, 9, seed=10)
    as_dict = model(x, use_cache=True, output_hidden_states=True)
    as_tuple = model(x, use_cache=True, output_hidden_states=True, return_dict=False)
    assert torch.equal(as_tuple[0], as_dict.logits)
    assert isinstance(as_tuple[1], SsmCache) and as_tuple[1].get_seq_length() == 9
    assert all(torch.equal(a, b) for a, b in zip(as_tuple[2], as_dict.hidden_states))


def test_sampling_with_several_return_sequences_expands_the_cache(model):
    x = ids(2, 5, seed=11)
    torch.manual_seed(0)
    out = model.generate(x, do_sample=True, max_new_tokens=6, min_new_tokens=6, num_return_sequences=3,
                         return_dict_in_generate=True)
    assert out.sequences.shape == (6, 11) and returned_cache(out).max_batch_size == 6
    torch.manual_seed(0)
    no_cache = model.generate(x, do_sample=True, max_new_tokens=6, min_new_tokens=6, num_return_sequences=3,
                              use_cache=False)
    assert torch.equal(out.sequences, no_cache)  # same draws: the cached logits equal the cache-free ones


# -- the lean greedy loop (MambaLMForCausalLM._greedy_generate) against generate()'s own loop --------------------------
def _both_loops(model, monkeypatch, **kw):
    """(lean loop's output, generate()'s own loop's output); asserts which loop ran each time."""
    calls = []
    lean = model._greedy_generate
    monkeypatch.setattr(model, "_greedy_generate", lambda *a: calls.append(1) or lean(*a))
    fast = model.generate(**kw)
    assert calls, "the lean loop did not run"
    monkeypatch.setattr(model, "fast_greedy_generate", False)
    slow = model.generate(**kw)
    monkeypatch.setattr(model, "fast_greedy_generate", True)
    assert len(calls) == 1
    return fast, slow


def _eos_cases(model):
    prompt = ids(4, 6, seed=3)
    free = model.generate(prompt, max_new_tokens=20, do_sample=False, eos_token_id=None)[:, 6:]
    all_by_4 = sorted({int(t) for t in free[:, :4].flatten()})  # every row meets one of these by step 4
    return prompt, [int(free[0, 5]), [int(free[1, 2]), int(free[2, 7])], all_by_4]


@pytest.mark.parametrize("case", range(3))
@pytest.mark.parametrize("min_new", [None, 6])
def test_lean_greedy_loop_equals_generate_loop_with_eos(model, monkeypatch, case, min_new):
    prompt, eos_choices = _eos_cases(model)
    fast, slow = _both_loops(model, monkeypatch, input_ids=prompt, max_new_tokens=20, eos_token_id=eos_choices[case],
                             min_new_tokens=min_new, do_sample=False)
    assert fast.shape == slow.shape and torch.equal(fast, slow)
    if case == 2 and min_new is None:  # every row ended early: generate() stops there, and so does the lean loop
        assert fast.shape[1] < 26


def test_lean_greedy_loop_equals_generate_loop_with_padding(model, monkeypatch):
    prompt = ids(3, 7, seed=4)
    mask = torch.ones_like(prompt)
    mask[0, :3] = 0
    mask[2, :1] = 0
    prompt = prompt.masked_fill(mask == 0, TINY["pad_token_id"])
    fast, slow = _both_loops(model, monkeypatch, input_ids=prompt, attention_mask=mask, max_new_tokens=9)
    assert torch.equal(fast, slow)
    # without the mask generate() infers it from pad_token_id: that request stays with generate()
    assert model._greedy_plan(prompt, None, dict(max_new_tokens=9)) is None


def test_lean_greedy_loop_length_settings(model, monkeypatch):
    prompt = ids(2, 5, seed=5)
    for kw in (dict(max_length=11), dict(max_new_tokens=1), dict(max_new_tokens=7, min_length=9, eos_token_id=None)):
        fast, slow = _both_loops(model, monkeypatch, input_ids=prompt, **kw)
        assert torch.equal(fast, slow), kw


@pytest.mark.parametrize("kw", [dict(do_sample=True), dict(num_beams=2), dict(repetition_penalty=1.3),
                                dict(output_scores=True, return_dict_in_generate=True), dict(use_cache=False),
                                dict(no_repeat_ngram_size=2), dict(num_return_sequences=2, do_sample=True),
                                dict(bad_words_ids=[[5]]), dict(inputs_embeds=None, foo_bar=1)],
                         ids=lambda kw: "-".join(kw))
def test_lean_greedy_loop_leaves_other_requests_to_generate(model, kw):
    assert model._greedy_plan(ids(2, 5), None, {"max_new_tokens": 4, **kw}) is None
    assert model._greedy_plan(ids(2, 5), None, {"max_new_tokens": 4, "temperature": 0.5, "top_k": 3}) is not None


def test_positional_generate_arguments_still_reach_generate(model):
    """generate(inputs, generation_config, logits_processor, ...) positionally, as GenerationMixin takes them."""
    from transformers import LogitsProcessorList

    out = model.generate(ids(1, 4), None, LogitsProcessorList(), max_new_tokens=3, do_sample=False)
    assert out.shape == (1, 7) and torch.equal(out, greedy(model, ids(1, 4), new=3)[:, :7])
