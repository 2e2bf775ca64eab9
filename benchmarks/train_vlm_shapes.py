"""Instruction tuning of a tiny VLM on generated shapes scenes on the CPU, with held-out attribute QA exact match.

    python benchmarks/train_vlm_shapes.py --decoder mamba   # raw patches -> linear -> Mamba LM decoder
    python benchmarks/train_vlm_shapes.py --decoder llama   # the same with a transformer decoder of similar size
    python benchmarks/train_vlm_shapes.py --vision siglip   # a tiny SigLIP tower + MLP instead of raw patches

Images are 48 px with 16 px patches, so each of the 3 x 3 grid cells of a scene is one image token (9 tokens).
Trains with ``ssmvl.training.vlm.train_vlm`` (Trainer, answer-only labels) on colour / shape / position questions of
the training scenes and evaluates greedy answers on the questions of held-out scenes (``evaluate_vqa``). Writes
``benchmarks/results/vlm_shapes_<decoder>_<vision>.json`` with the settings, the wall time and the exact match per type.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from ssmvl.modeling.processing_ssm_vlm import SsmVlmProcessor
from ssmvl.training.shapes import build_shapes_tokenizer, make_shapes_qa_dataset
from ssmvl.training.vlm import ATTRIBUTES, evaluate_vqa, examples, shapes_image_processor, shapes_vlm, train_vlm


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--decoder", default="mamba", choices=("mamba", "llama"))
    parser.add_argument("--vision", default="patches", choices=("siglip", "patches"))
    parser.add_argument("--scenes", type=int, default=3000)
    parser.add_argument("--test-scenes", type=int, default=100)
    parser.add_argument("--steps", type=int, default=3600)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--hidden", type=int, default=96)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--bridger-ffn", action="store_true", help="patches: a BridgerFFN after the linear projection")
    parser.add_argument("--seed", type=int, default=0, help="model init and training order")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--work", default="outputs/vlm-shapes")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    tok = build_shapes_tokenizer()
    train = make_shapes_qa_dataset(args.scenes, seed=0, image_size=48, split="train", question_types=ATTRIBUTES)
    test = make_shapes_qa_dataset(args.test_scenes, seed=1, image_size=48, split="test", question_types=ATTRIBUTES)
    model = shapes_vlm(tok, args.decoder, hidden=args.hidden, layers=args.layers, vision=args.vision,
                       bridger_ffn=args.bridger_ffn)
    processor = SsmVlmProcessor.from_config(model.config, shapes_image_processor(48), tok)
    params = sum(p.numel() for p in model.parameters())
    print(f"{args.decoder}: {params} parameters, {len(train)} training questions, {len(test)} held-out", flush=True)
    result = train_vlm(model, processor, train, Path(args.work) / args.decoder, max_steps=args.steps, lr=args.lr,
                       batch_size=args.batch_size, freeze_vision=False, disable_tqdm=True, logging_steps=50,
                       seed=args.seed)
    scores = evaluate_vqa(result.model, processor, test)
    wall = time.perf_counter() - start
    row = dict(decoder=args.decoder, vision=args.vision, bridger_ffn=args.bridger_ffn, seed=args.seed, parameters=params,
               train_questions=len(train), test_questions=len(test),
               steps=result["steps"], batch_size=args.batch_size, lr=args.lr, train_loss=result["train_loss"],
               train_seconds=round(result["train_seconds"], 1), wall_seconds=round(wall, 1), **scores,
               examples=list(examples(result.model, processor, test, n=6)),
               device=f"CPU, {args.threads} threads ({platform.processor() or platform.machine()})",
               torch=torch.__version__, date=time.strftime("%Y-%m-%d"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    suffix = ("_ffn" if args.bridger_ffn else "") + ("" if args.seed == 0 else f"_seed{args.seed}")
    (out / f"vlm_shapes_{args.decoder}_{args.vision}{suffix}.json").write_text(json.dumps(row, indent=2))
    print(json.dumps({k: v for k, v in row.items() if k != "examples"}, indent=2), flush=True)


if __name__ == "__main__":
    main()
