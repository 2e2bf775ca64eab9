"""Where generation's peak memory goes (ssmvl's MambaLMForCausalLM, mamba-130m shape, bf16, triton tier, one GPU):
for each batch (prompt 128, 256 new tokens, greedy, lean loop), the peak above the memory held before, MiB, of
(a) the prefill alone (cache on no graph), (b) the first generate() call (it captures the CUDA-graph step),
(c) a second call (the kept graph), (d) one replayed step; and the memory the kept graph holds afterwards.
Compare with mamba_ssm's peaks in the same conditions (anchors' gen_vs_mamba_ssm.py: first + second call).

    python benchmarks/gen_memory.py OUT.json
"""
import json
import sys

import torch

from common import ensure_ssmvl, peak_memory_mib

ensure_ssmvl()
from ssmvl.modeling import MambaLMConfig, MambaLMForCausalLM  # noqa: E402

MIB = 2**20


def peak_of(f):
    """(peak MiB above what was allocated before, f's result) of one call."""
    out = []
    return peak_memory_mib(lambda: out.append(f())), out[0]


def main():
    cfg = MambaLMConfig(vocab_size=50280, hidden_size=768, num_hidden_layers=24, state_size=16, ssm_backend="triton")
    torch.manual_seed(0)
    rows = []
    for batch in (1, 16, 64):
        model = MambaLMForCausalLM(cfg).to("cuda", torch.bfloat16).eval()
        model.generation_config.pad_token_id = 0
        model.generation_config.eos_token_id = None
        ids = torch.randint(1, 50000, (batch, 128), device="cuda")
        gen = (lambda: model.generate(ids, max_new_tokens=256, min_new_tokens=256, do_sample=False))
        with torch.inference_mode():
            held0 = torch.cuda.memory_allocated()
            prefill, out = peak_of(lambda: model(ids, use_cache=True, logits_to_keep=1))
            cache = out.cache
            first, _ = peak_of(gen)
            graph_held = (torch.cuda.memory_allocated() - held0) / MIB
            second, _ = peak_of(gen)
            nxt = torch.ones(batch, 1, dtype=torch.long, device="cuda")
            model(nxt, cache=cache, use_cache=True)
            step, _ = peak_of(lambda: model(nxt, cache=cache, use_cache=True))
        row = dict(batch=batch, prefill_peak_mib=prefill, first_generate_peak_mib=first,
                   second_generate_peak_mib=second, step_peak_mib=step, held_after_first_mib=graph_held,
                   cache_mib=sum(t.numel() * t.element_size() for t in cache.conv_states + cache.ssm_states) / MIB)
        rows.append(row)
        print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
        del model, cache, out
        torch.cuda.empty_cache()
    json.dump(rows, open(sys.argv[1], "w"), indent=1)


if __name__ == "__main__":
    main()
