"""Per-step decode cost of ssmvl's MambaLMForCausalLM (mamba-130m shape, bf16, triton tier): ms per replayed CUDA-graph
step (forward only, no generate loop), capture cost, ms per eager step, kernels per eager step, generate()'s ms per
token (lean greedy loop and transformers' loop), and a profile of the 16 x 4096 prefill."""
import json, sys, time, torch
from ssmvl.modeling import MambaLMConfig, MambaLMForCausalLM
cfg = MambaLMConfig(vocab_size=50280, hidden_size=768, num_hidden_layers=24, state_size=16, ssm_backend="triton")
torch.manual_seed(0)
m = MambaLMForCausalLM(cfg).to("cuda", torch.bfloat16).eval()
m.generation_config.pad_token_id = 0; m.generation_config.eos_token_id = None
rows = []
def sync_time(f):
    torch.cuda.synchronize(); t = time.perf_counter(); r = f(); torch.cuda.synchronize(); return time.perf_counter() - t, r
def per_step(bs, graph, n=200):
    m.config.use_cuda_graph = graph
    ids = torch.randint(1, 50000, (bs, 128), device="cuda")
    out = m(ids, use_cache=True); cache = out.cache
    nxt = out.logits[:, -1:].argmax(-1)
    first, _ = sync_time(lambda: m(nxt, cache=cache, use_cache=True))
    for _ in range(3): o = m(nxt, cache=cache, use_cache=True)
    t, _ = sync_time(lambda: [m(nxt, cache=cache, use_cache=True) for _ in range(n)])
    return t / n * 1e3, first * 1e3, cache
def gen(bs, p, lean):
    m.fast_greedy_generate = lean
    ids = torch.randint(1, 50000, (bs, p), device="cuda")
    m.generate(ids, max_new_tokens=8, min_new_tokens=8, do_sample=False)
    t, _ = sync_time(lambda: m.generate(ids, max_new_tokens=256, min_new_tokens=256, do_sample=False))
    return t / 256 * 1e3
with torch.inference_mode():
    for bs in (1, 16, 64):
        g_ms, capture_ms, _ = per_step(bs, True); e_ms, _, cache = per_step(bs, False)
        nxt = torch.ones(bs, 1, dtype=torch.long, device="cuda")
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            m(nxt, cache=cache, use_cache=True); torch.cuda.synchronize()
        kern = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
        m.config.use_cuda_graph = True
        lean, hf = gen(bs, 128, True), gen(bs, 128, False)
        row = dict(batch=bs, graph_step_ms=g_ms, first_step_with_capture_ms=capture_ms, eager_step_ms=e_ms,
                   kernels_per_eager_step=len(kern), lean_ms_per_token=lean, lean_tok_s=bs * 1e3 / lean,
                   hf_loop_ms_per_token=hf, hf_loop_tok_s=bs * 1e3 / hf)
        rows.append(row); print(json.dumps(row), flush=True)
    m.fast_greedy_generate = True
    ids = torch.randint(1, 50000, (16, 4096), device="cuda")
    m(ids, use_cache=True, logits_to_keep=1)
    t, _ = sync_time(lambda: m(ids, use_cache=True, logits_to_keep=1))
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA, torch.profiler.ProfilerActivity.CPU]) as prof:
        m(ids, use_cache=True, logits_to_keep=1); torch.cuda.synchronize()
    print(f"prefill 16x4096: {t*1e3:.1f} ms", flush=True)
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=18, max_name_column_width=70), flush=True)
    rows.append(dict(prefill_16x4096_ms=t * 1e3))
json.dump(rows, open(sys.argv[1], "w"), indent=1)
