"""Generation side by side with mamba_ssm, with ssmvl config options: the method of ../shared/anchors/gen_vs_mamba_ssm.py
(mamba-130m shape, random weights converted by ssmvl's converter, bf16, greedy, 256 new tokens forced, tok/s of the
second of two calls, peak memory above what was allocated before the two calls, agreement of the first 32 greedy
tokens), with ``--ssm-state-dtype`` (the cache's SSM states: float32, bfloat16) and a JSON of the rows. Needs a
mamba_ssm build (../shared/anchors/README.md); run on the device machine:

    python benchmarks/gen_vs_mamba_ssm.py /tmp/ms:/tmp/cc:SRC/py --ssm-state-dtype bfloat16 --out OUT.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from common import ensure_ssmvl, peak_memory_mib

ROWS = [(1, 128), (16, 128), (64, 128), (16, 4096)]


def timed(f):
    f()
    torch.cuda.synchronize()
    t = time.perf_counter()
    out = f()
    torch.cuda.synchronize()
    return time.perf_counter() - t, out


def peak(f):
    """(seconds of the second call, its result, peak MiB of both calls above what was allocated before)."""
    box = []
    mib = peak_memory_mib(lambda: box.append(timed(f)))
    return (*box[0], mib)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("mamba_paths", help="colon-separated import paths of a mamba_ssm / causal_conv1d build")
    ap.add_argument("--ssm-state-dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--backend", default="triton")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    sys.path[:0] = args.mamba_paths.split(":")
    ensure_ssmvl()
    from mamba_ssm.models.config_mamba import MambaConfig
    from mamba_ssm.models.mixer_seq_simple import MambaLMHeadModel

    from ssmvl.conversion.convert_mamba_to_hf import config_from_state_spaces, convert_state_dict
    from ssmvl.modeling import MambaLMForCausalLM

    cfgd = dict(d_model=768, n_layer=24, vocab_size=50280, ssm_cfg={"layer": "Mamba1"}, rms_norm=True,
                residual_in_fp32=True, fused_add_norm=True, pad_vocab_size_multiple=8, tie_embeddings=True)
    torch.manual_seed(0)
    ref = MambaLMHeadModel(MambaConfig(**cfgd), device="cuda", dtype=torch.bfloat16).eval()
    cfg = config_from_state_spaces(cfgd, ssm_backend=args.backend, ssm_state_dtype=args.ssm_state_dtype)
    ours = MambaLMForCausalLM(cfg).eval()
    ours.load_state_dict(convert_state_dict({k: v.float().cpu() for k, v in ref.state_dict().items()}, cfg))
    ours = ours.to("cuda", torch.bfloat16)
    ours.generation_config.pad_token_id = 0
    ours.generation_config.eos_token_id = None
    rows = []
    with torch.inference_mode():
        for batch, prompt in ROWS:
            ids = torch.randint(1, 50000, (batch, prompt), device="cuda")
            t_ref, o_ref, m_ref = peak(lambda: ref.generate(ids, max_length=prompt + 256, cg=True, top_k=1))
            t_our, o_our, m_our = peak(lambda: ours.generate(ids, max_new_tokens=256, min_new_tokens=256,
                                                             do_sample=False))
            o_ref = o_ref if torch.is_tensor(o_ref) else o_ref.sequences
            row = dict(batch=batch, prompt=prompt, ssm_state_dtype=args.ssm_state_dtype,
                       mamba_ssm_tok_s=batch * 256 / t_ref, ssmvl_tok_s=batch * 256 / t_our,
                       mamba_ssm_peak_mib=m_ref, ssmvl_peak_mib=m_our,
                       first32_token_agreement=(o_ref[:, prompt:prompt + 32] == o_our[:, prompt:prompt + 32])
                       .float().mean().item())
            rows.append(row)
            print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(dict(gpu=torch.cuda.get_device_name(), torch=torch.__version__, rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
