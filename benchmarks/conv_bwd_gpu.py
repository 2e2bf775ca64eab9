"""The causal conv's backward (``ssm_triton._CausalConvFn.backward``: one Triton kernel, fused or two-pass) under tile
settings, against the torch ops it replaced (the pre-activation recomputed by the conv kernel, SiLU's derivative, the
input's gradient by the conv in the other direction, the weight's and bias's sums), at Vim-S shapes (GPU).

    python benchmarks/conv_bwd_gpu.py OUT.json

Times (do_bench) are of the backward alone, from the saved tensors; each row also gives the gradients' relative
difference to the torch ops' (input, weight, bias)."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ensure_ssmvl  # noqa: E402

CHANNEL_TILES = [(True, 8, 128, 4), (True, 16, 64, 4), (True, 4, 256, 4), (True, 16, 128, 4), (True, 8, 64, 2),
                 (False, 32, 128, 4), (False, 16, 128, 4), (False, 8, 128, 4)]  # (fused, BLOCK_D, BLOCK_L, warps)
TIME_TILES = [(True, 64, 16, 4), (True, 32, 32, 4), (True, 128, 16, 4), (True, 64, 8, 2), (False, 128, 16, 4),
              (False, 64, 16, 4)]


def torch_ops_backward(st, x, weight, bias, gy, reverse=False):
    """The backward as torch ops (the code before _causal_conv_bwd_kernel), through SiLU."""
    import torch

    L, W = x.shape[-1], weight.shape[-1]
    p = st._conv_launch(x, weight, bias, None, torch.empty_like(gy, dtype=x.dtype), False, reverse).float()
    sig = torch.sigmoid(p)
    g = gy.float() * sig * (1 + p * (1 - sig))
    gx = st._conv_launch(g, weight, None, None, torch.empty_like(x), False, not reverse)
    xp = torch.nn.functional.pad(x.float(), (0, W - 1) if reverse else (W - 1, 0))
    cols = [(g * xp[..., (W - 1 - k if reverse else k):][..., :L]).sum((0, 2)) for k in range(W)]
    return gx, torch.stack(cols, -1), g.sum((0, 2))


def main():
    ensure_ssmvl()
    import torch
    from triton.testing import do_bench

    from ssmvl.modeling import ssm_triton as st

    rows = []
    saved = dict(st.CONV_BWD_CONFIG), dict(st.CONV_BWD_TIME_MAJOR_CONFIG)
    for B, D, L in [(4, 768, 6085), (128, 768, 197)]:
        for layout in ("channel", "time"):
            for rev in (False, True):
                torch.manual_seed(0)
                if layout == "channel":
                    x = torch.randn(B, 2 * D, L, device="cuda", dtype=torch.bfloat16)[:, :D]
                else:
                    x = torch.randn(B, L, 2 * D, device="cuda", dtype=torch.bfloat16)[..., :D].transpose(1, 2)
                w, b = torch.randn(D, 4, device="cuda"), torch.randn(D, device="cuda")
                gy = torch.randn(B, D, L, device="cuda", dtype=torch.bfloat16)
                ctx = types.SimpleNamespace(saved_tensors=(x, w, b, None), silu=True, reverse=rev,
                                            needs_input_grad=(True, True, True, False, False, False))
                want = torch_ops_backward(st, x, w, b, gy, rev)
                old_ms = do_bench(lambda: torch_ops_backward(st, x, w, b, gy, rev), warmup=5, rep=30)
                cfg = st.CONV_BWD_CONFIG if layout == "channel" else st.CONV_BWD_TIME_MAJOR_CONFIG
                for fused, bd, bl, nw in (CHANNEL_TILES if layout == "channel" else TIME_TILES):
                    cfg.update(BLOCK_D=bd, BLOCK_L=bl, num_warps=nw, fused=fused)
                    got = st._CausalConvFn.backward(ctx, gy)[:3]
                    diff = [float((a.float() - o.float()).norm() / o.float().norm()) for a, o in zip(got, want)]
                    ms = do_bench(lambda: st._CausalConvFn.backward(ctx, gy), warmup=5, rep=30)
                    row = dict(B=B, D=D, L=L, layout=layout, reverse=rev, fused=fused, tile=(bd, bl, nw),
                               new_ms=round(ms, 4), old_ms=round(old_ms, 4), rel_diff=[round(e, 7) for e in diff])
                    print(json.dumps(row), flush=True)
                    rows.append(row)
                for c, old in zip((st.CONV_BWD_CONFIG, st.CONV_BWD_TIME_MAJOR_CONFIG), saved):
                    c.clear()
                    c.update(old)
    Path(sys.argv[1]).write_text(json.dumps({"gpu": torch.cuda.get_device_name(), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
