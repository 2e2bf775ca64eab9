"""The ``ssmvl`` console script.

    ssmvl demo [--out DIR] [--quick]                       the main job (training/main_job.py)
    ssmvl train-lm --out DIR [--steps N] [--lora] [--resume [CKPT]] [--bf16]
    ssmvl train-image --model vim-digits|vmamba-digits|vim-tiny|vmamba-tiny|CONFIG.json|DIR --data digits
                      [--shift invert|rotate] [--epochs N] [--max-steps N] [--save-steps N] [--lora] --out DIR
                      [--resume [CKPT]] [--bf16]
    ssmvl train-video --out DIR [--steps N] [--keep-ratio R] [--frames T] [--bf16]   STORM on moving shapes clips
    ssmvl train-video-qa --out DIR [--stage1-steps N] [--stage2-steps N]     STORM tower -> Mamba LM answers questions
    ssmvl convert-mamba|convert-vim|convert-vmamba ...     -> ssmvl.conversion.convert_*_to_hf.main(argv)
    ssmvl push DIR REPO_ID ...                             -> ssmvl.conversion.hub.main_push(argv)
    ssmvl accelerate-config ddp|fsdp                       the path of a shipped `accelerate launch --config_file`
    ssmvl compose-vlm --vision DIR --language DIR --out DIR ...  -> ssmvl.conversion.compose_vlm.main(argv)

train-* run unchanged under ``torchrun`` / ``accelerate launch`` (``ssmvl.training.distributed``). Started plainly on a
host with several CUDA GPUs they relaunch themselves under torchrun (DDP) instead of falling into
``torch.nn.DataParallel``; ``--no-relaunch`` trains on one GPU instead.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path
from typing import List, Optional

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIGS_DIR = REPO_ROOT / "configs"


TRAIN_COMMANDS = ("train-lm", "train-image", "train-video")


def _resume_arg(parser):
    parser.add_argument("--resume", nargs="?", const="last", default=None, metavar="CHECKPOINT",
                        help="resume from a Trainer checkpoint (no value: the last complete one in OUT/checkpoints)")


def _precision_arg(parser):
    parser.add_argument("--bf16", action="store_true",
                        help="bfloat16 mixed precision (Trainer bf16=True: autocast, float32 weights and optimizer; "
                             "a GPU with bfloat16, or the CPU)")


def _launch_arg(parser):
    parser.add_argument("--no-relaunch", action="store_true",
                        help="on a host with several CUDA GPUs, train on one GPU instead of relaunching under "
                             "torchrun (DDP, one process per GPU); never torch.nn.DataParallel")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ssmvl", description="State-space (Mamba) vision / language models: "
                                     "train, convert, push.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="the main job: train a Mamba LM (+LoRA) and a Vim/VMamba on digits (+LoRA), "
                       "save, push to a local Hub, reload without ssmvl")
    p.add_argument("--out", default="outputs/demo", help="output folder (default outputs/demo)")
    p.add_argument("--quick", action="store_true", help="fewer steps (smoke run)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: idle cores)")

    p = sub.add_parser("train-lm", help="train a small Mamba LM on the text shipped with Python / scikit-learn")
    p.add_argument("--model", default=None, help="config JSON or model folder (default: the demo's tiny LM)")
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=240)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--block-size", type=int, default=128)
    p.add_argument("--vocab-size", type=int, default=1024)
    p.add_argument("--lora", action="store_true", help="only the LoRA step, from a trained --model DIR")
    p.add_argument("--lora-r", type=int, default=4)
    p.add_argument("--lora-steps", type=int, default=80, help="steps of the LoRA step (domain: scikit-learn "
                   "dataset descriptions)")
    p.add_argument("--save-steps", type=int, default=100)
    p.add_argument("--threads", type=int, default=None)
    _resume_arg(p)
    _precision_arg(p)
    _launch_arg(p)

    p = sub.add_parser("train-image", help="train an image classifier with Trainer (+ LoRA)")
    p.add_argument("--model", default="vim-digits",
                   help="vim-digits | vmamba-digits (tiny, for 32 px digits) | a preset in configs/ (vim-tiny, "
                        "vmamba-tiny, ...) | a config JSON | a model folder / Hub repo")
    p.add_argument("--data", default="digits", choices=["digits"])
    p.add_argument("--shift", default=None, choices=["invert", "rotate"], help="shifted digits task")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--epochs", type=float, default=None)
    p.add_argument("--max-steps", type=int, default=-1, help="stop after N optimizer steps (overrides --epochs)")
    p.add_argument("--save-steps", type=int, default=None,
                   help="a Trainer checkpoint every N steps in OUT/checkpoints (default: one per epoch)")
    p.add_argument("--save-total-limit", type=int, default=1, help="checkpoints kept (default 1, the last; 0: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--batch-size", type=int, default=64, help="per process (the global batch is N x processes)")
    p.add_argument("--lora", action="store_true", help="LoRA on the family preset targets, head trained fully "
                   "(from a trained --model DIR)")
    p.add_argument("--lora-r", type=int, default=None, help="LoRA rank (default: the demo's per-family rank)")
    p.add_argument("--out", required=True)
    p.add_argument("--threads", type=int, default=None)
    _resume_arg(p)
    _precision_arg(p)
    _launch_arg(p)

    p = sub.add_parser("train-video", help="train a small STORM video classifier on generated moving shapes clips "
                       "(direction of motion), evaluate on held-out clips")
    p.add_argument("--out", required=True)
    p.add_argument("--clips", type=int, default=4000, help="training clips (16 frames of 32 px)")
    p.add_argument("--test-clips", type=int, default=400)
    p.add_argument("--frames", type=int, default=8, help="frames sampled per clip")
    p.add_argument("--keep-ratio", type=float, default=0.125, help="share of the tokens the STORM block keeps")
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--steps", type=int, default=600, help="600: keep 0.125 from scratch reached 0.975 held-out "
                   "(benchmarks/README.md); 300 stayed near chance")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    _precision_arg(p)
    _launch_arg(p)

    p = sub.add_parser("train-video-qa", help="the combined video pipeline on generated moving shapes clips: align a "
                       "STORM video tower with the captions (sigmoid loss), then tune the VLM (its fresh Mamba LM "
                       "decoder, or LoRA on it with --lora-r) to answer questions; held-out exact match "
                       "(training/video_vlm.py)")
    p.add_argument("--out", required=True)
    p.add_argument("--clips", type=int, default=3000, help="training clips (16 frames of 32 px), all their questions")
    p.add_argument("--test-clips", type=int, default=200)
    p.add_argument("--max-objects", type=int, default=2, help="objects per clip (1..4)")
    p.add_argument("--stage1-steps", type=int, default=3000, help="caption alignment steps (0: a fresh tower)")
    p.add_argument("--stage2-steps", type=int, default=6000, help="question answering steps")
    p.add_argument("--lora-r", type=int, default=None, help="LoRA rank on the decoder (default: the decoder in full)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)

    for family in ("mamba", "vim", "vmamba"):
        p = sub.add_parser(f"convert-{family}", help=f"convert an original {family} checkpoint "
                           f"(ssmvl.conversion.convert_{family}_to_hf)", add_help=False)
        p.add_argument("args", nargs=argparse.REMAINDER)

    p = sub.add_parser("compose-vlm", help="compose a VLM from a vision tower folder and a causal LM folder "
                       "(ssmvl.conversion.compose_vlm)", add_help=False)
    p.add_argument("args", nargs=argparse.REMAINDER)

    p = sub.add_parser("push", help="push a saved model folder to the Hub (ssmvl.conversion.hub)", add_help=False)
    p.add_argument("args", nargs=argparse.REMAINDER)

    p = sub.add_parser("accelerate-config", help="print the path of a shipped accelerate config (ddp: one process "
                       "per GPU; fsdp: FSDP2, one unit per model block) for `accelerate launch --config_file`")
    p.add_argument("name", choices=["ddp", "fsdp"])
    return parser


def resolve_image_config(name: str, image_size: int = 32, num_labels: int = 10):
    """A config for ``--model``: the demo's digits presets, a preset name in configs/, or a JSON file (resized to the
    data: image_size, num_labels). Returns None when ``name`` is a model folder / repo id (load it instead)."""
    from transformers import AutoConfig

    import ssmvl.modeling  # noqa: F401  (registers the ssmvl model types)

    from .main_job import DIGITS_MODELS

    if name in DIGITS_MODELS:
        spec = dict(DIGITS_MODELS[name])
    else:
        path = Path(name)
        if not path.suffix == ".json" and (CONFIGS_DIR / f"{name}.json").is_file():
            path = CONFIGS_DIR / f"{name}.json"
        if path.is_dir() or path.suffix != ".json":
            return None
        spec = {k: v for k, v in json.loads(path.read_text()).items() if not k.startswith("_")}
        spec["image_size"] = image_size
    model_type = spec.pop("model_type")
    spec["num_labels"] = num_labels
    config = AutoConfig.for_model(model_type, **spec)
    if hasattr(config, "drop_path_rate") and name not in DIGITS_MODELS:
        config.drop_path_rate = min(config.drop_path_rate, 0.1)
    return config


def _cmd_train_image(args):
    from .data import build_digits_dataset, make_digits_processor
    from .lora import lora_config_for
    from .recipes import configure_cpu_threads, train_image_classifier

    print(f"[ssmvl] torch threads: {configure_cpu_threads(args.threads)}")
    processor = make_digits_processor(args.image_size)
    data = build_digits_dataset(args.image_size, shift=args.shift, image_processor=processor)
    config = resolve_image_config(args.model, args.image_size)
    model_or_config = config if config is not None else args.model
    lora = False
    if args.lora:
        if config is not None:
            raise SystemExit("--lora needs a trained model (--model DIR), not a fresh config")
        from transformers import AutoModelForImageClassification

        from .main_job import DIGITS_LORA

        model_or_config = AutoModelForImageClassification.from_pretrained(args.model, trust_remote_code=True)
        family = model_or_config.config.model_type.replace("ssmvl_", "")
        r = args.lora_r or DIGITS_LORA.get(family, {}).get("lora_r", 4)
        lora = lora_config_for(model_or_config, r=r, alpha=2 * r)
    epochs = args.epochs if args.epochs is not None else (8 if args.lora else 12)
    lr = args.lr if args.lr is not None else (1e-2 if args.lora else 3e-3)
    metrics = train_image_classifier(model_or_config, data["train"], data["test"], args.out, epochs=epochs, lr=lr,
                                     batch_size=args.batch_size, lora=lora, resume_from_checkpoint=args.resume,
                                     image_processor=processor, max_steps=args.max_steps, save_steps=args.save_steps,
                                     save_total_limit=args.save_total_limit, seed=args.seed, bf16=args.bf16)
    _print_main(json.dumps(dict(metrics), indent=2))
    return 0


def _print_main(text: str):
    """Prints on the main process only (every process of a multi-process run reaches the end of a recipe)."""
    from .distributed import is_main_process

    if is_main_process():
        print(text, flush=True)


def _cmd_train_video(args):
    import torch

    from .moving_shapes import make_moving_shapes_dataset
    from .recipes import configure_cpu_threads
    from .video import storm_video_classifier, train_video_classifier, video_processor_for

    print(f"[ssmvl] torch threads: {configure_cpu_threads(args.threads)}")
    train = make_moving_shapes_dataset(args.clips, seed=args.seed, split="train")
    test = make_moving_shapes_dataset(args.test_clips, seed=args.seed + 1, split="test")
    torch.manual_seed(args.seed)
    model = storm_video_classifier(num_frames=args.frames, hidden=args.hidden, keep_ratios=[args.keep_ratio],
                                   labels=train)
    metrics = train_video_classifier(model, video_processor_for(model.config), train, args.out, max_steps=args.steps,
                                     lr=args.lr, batch_size=args.batch_size, seed=args.seed, eval_ds=test,
                                     save_strategy="no", bf16=args.bf16)
    _print_main(json.dumps({k: v for k, v in metrics.items() if k != "loss_history"}, indent=2))
    return 0


def _cmd_train_video_qa(args):
    from .moving_shapes import make_moving_shapes_qa_dataset
    from .recipes import configure_cpu_threads
    from .video_vlm import train_video_qa_pipeline

    print(f"[ssmvl] torch threads: {configure_cpu_threads(args.threads)}")
    data = dict(num_frames=16, image_size=32, max_objects=args.max_objects)
    train = make_moving_shapes_qa_dataset(args.clips, seed=args.seed, split="train", **data)
    test = make_moving_shapes_qa_dataset(args.test_clips, seed=args.seed + 1, split="test", **data)
    report = train_video_qa_pipeline(args.out, train, test, stage1_steps=args.stage1_steps,
                                     stage2_steps=args.stage2_steps, lora_r=args.lora_r, seed=args.seed)
    report.pop("model"), report.pop("processor")
    print(json.dumps(report, indent=2))
    return 0


def _cmd_train_lm(args):
    from .main_job import lm_step
    from .recipes import configure_cpu_threads

    print(f"[ssmvl] torch threads: {configure_cpu_threads(args.threads)}")
    result = lm_step(args.out, steps=args.steps, lr=args.lr, batch_size=args.batch_size, block_size=args.block_size,
                     vocab_size=args.vocab_size, model=args.model, lora_only=args.lora, lora_r=args.lora_r,
                     lora_steps=args.lora_steps, save_steps=args.save_steps, resume=args.resume, bf16=args.bf16)
    _print_main(json.dumps({k: v for k, v in result.items() if not isinstance(v, str) or len(v) < 300}, indent=2))
    return 0


def _delegate(module: str, func: str, argv: List[str]) -> int:
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        print(f"ssmvl: {module} is not available ({exc})", file=sys.stderr)
        return 2
    if not hasattr(mod, func):
        print(f"ssmvl: {module} has no {func}()", file=sys.stderr)
        return 2
    rc = getattr(mod, func)(argv)
    return int(rc or 0)


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # subcommands that hand their arguments (including --help) to another module's parser
    if argv and argv[0] in ("convert-mamba", "convert-vim", "convert-vmamba"):
        family = argv[0].split("-", 1)[1]
        return _delegate(f"ssmvl.conversion.convert_{family}_to_hf", "main", argv[1:])
    if argv and argv[0] == "compose-vlm":
        return _delegate("ssmvl.conversion.compose_vlm", "main", argv[1:])
    if argv and argv[0] == "push":
        return _delegate("ssmvl.conversion.hub", "main_push", argv[1:])
    args = build_parser().parse_args(argv)
    if args.command in TRAIN_COMMANDS or args.command in ("demo", "train-video-qa"):
        from .distributed import guard_data_parallel

        # Trainer would wrap the model in torch.nn.DataParallel when one process sees several GPUs. The demo pushes
        # and reloads in one process, so it takes one GPU (so does train-video-qa: two stages and their evaluations);
        # train-* relaunch as DDP unless --no-relaunch.
        if args.command in ("demo", "train-video-qa"):
            guard_data_parallel(argv, relaunch=False, reason=f"{args.command} runs in one process", advise_ddp=False)
        else:
            guard_data_parallel(argv, relaunch=not args.no_relaunch, reason="--no-relaunch")
    if args.command == "demo":
        from .main_job import run_demo

        run_demo(args.out, quick=args.quick, threads=args.threads)
        return 0
    if args.command == "accelerate-config":
        from .distributed import accelerate_config

        print(accelerate_config(args.name))
        return 0
    commands = {"train-lm": _cmd_train_lm, "train-image": _cmd_train_image, "train-video": _cmd_train_video,
                "train-video-qa": _cmd_train_video_qa}
    if args.command in commands:
        from .distributed import shutdown

        rc = commands[args.command](args)
        shutdown()  # after a multi-process run: every process is done before any exits
        return rc
    raise SystemExit(f"unknown command {args.command}")  # pragma: no cover


if __name__ == "__main__":
    sys.exit(main())
