"""The lane forward's GPU time on a Mamba mixer's inputs (bf16 views of the in_proj / x_proj / dt_proj outputs, as
a Vim-S layer passes them) under settings toggled one at a time: bf16 B / C converted per value or as 32-bit words
(``LANE_CONFIG["bf16_words"]``), the backward branch averaging into the forward's y (``mean_into``), the state split
S (``min_warps``) and the chunk count (``chunk_warps``). Kernel times from torch.profiler (common.kernel_device_ms).

    python benchmarks/lane_variants.py OUT.json [B,D,L ...]     (default: 128,768,197 and 4,768,6085: Vim-S 224 / 1248 px)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ensure_ssmvl, kernel_device_ms  # noqa: E402

ensure_ssmvl()
from ssmvl.modeling import ssm_triton  # noqa: E402

N, RANK = 16, 24  # Vim-S: d_state 16, dt_rank 384 / 16

VARIANTS = {  # name: (LANE_CONFIG changes, reverse + mean_into)
    "default": ({}, False),
    "words_on": ({"bf16_words": True}, False),
    "words_off": ({"bf16_words": False}, False),
    "mean": ({}, True),
    "mean_words_on": ({"bf16_words": True}, True),
    "reverse": ({}, "reverse"),
    "chunk_warps_2048": ({"chunk_warps": 2048}, False),
    "chunk_warps_8192": ({"chunk_warps": 8192}, False),
    "split_2": ({"min_warps": 4096}, False),
    "split_2_words_on": ({"min_warps": 4096, "bf16_words": True}, False),
    "warps_2": ({"num_warps": 2}, False),
}


def mixer_inputs(batch, dim, L):
    g = torch.Generator(device="cuda").manual_seed(0)
    bf = dict(device="cuda", dtype=torch.bfloat16)
    xz = torch.randn(batch, L, 2 * dim, generator=g, **bf)
    xp = torch.randn(batch, L, RANK + 2 * N, generator=g, **bf)
    dl = torch.randn(batch, L, dim, generator=g, **bf) * 0.5
    u = torch.randn(batch, L, dim, generator=g, **bf).transpose(1, 2)  # the triton conv's time-major output
    z = xz.transpose(1, 2)[:, dim:]
    B = xp[..., RANK:RANK + N].transpose(1, 2)
    C = xp[..., RANK + N:].transpose(1, 2)
    A_log = torch.log(torch.arange(1, N + 1, device="cuda", dtype=torch.float32)).repeat(dim, 1)
    D = torch.ones(dim, device="cuda")
    bias = torch.rand(dim, device="cuda") - 4
    return dict(u=u, delta=dl.transpose(1, 2), A=A_log, B=B, C=C, D=D, z=z, delta_bias=bias)


def main():
    out = Path(sys.argv[1])
    shapes = [tuple(int(v) for v in s.split(",")) for s in sys.argv[2:]] or [(128, 768, 197), (4, 768, 6085)]
    default = dict(ssm_triton.LANE_CONFIG)
    result = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": []}
    for batch, dim, L in shapes:
        inputs = mixer_inputs(batch, dim, L)
        y_other = ssm_triton.selective_scan_triton(**inputs, delta_softplus=True, a_log=True)
        for name, (changes, mode) in VARIANTS.items():
            ssm_triton.LANE_CONFIG.update(default)
            ssm_triton.LANE_CONFIG.update(changes)
            target = y_other.clone()
            kw = dict(delta_softplus=True, a_log=True)
            if mode:
                kw["reverse"] = True
            if mode is True:
                kw["mean_into"] = target

            def run():
                with torch.no_grad():
                    ssm_triton.selective_scan_triton(**inputs, **kw)

            plan = ssm_triton._lane_plan(batch, dim, 1, N, L)
            kernels = kernel_device_ms(run, reps=20)
            lane = sum(v for k, v in kernels.items() if "lane" in k or "carry" in k)
            row = dict(B=batch, D=dim, L=L, variant=name, plan=plan, lane_ms=round(lane, 4),
                       kernels={k: round(v, 4) for k, v in kernels.items()})
            result["rows"].append(row)
            print(json.dumps(row), flush=True)
    ssm_triton.LANE_CONFIG.update(default)
    out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
