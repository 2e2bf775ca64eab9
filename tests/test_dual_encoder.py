"""SigLIP-style dual encoder: the sigmoid / softmax losses against hand-written formulas, logit init, towers of every
kind (transformers ViT / SigLIP / CLIP vision and BERT text; our Vim / VMamba / Mamba LM), padding-invariant
last-token pooling, gradients and frozen towers, save/load, AutoModel + AutoProcessor + the zero-shot pipeline in a
process where ssmvl cannot be imported, a few Trainer steps on shapes scenes, input errors."""

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoModel, BertConfig, CLIPVisionConfig, SiglipVisionConfig, ViTConfig

from isolated import run_isolated
from ssmvl.modeling.configuration_dual_encoder import SigLipDualEncoderConfig
from ssmvl.modeling.configuration_mamba_lm import MambaLMConfig
from ssmvl.modeling.configuration_vim import VimConfig
from ssmvl.modeling.configuration_vmamba import VMambaConfig
from ssmvl.modeling.modeling_dual_encoder import ClipLoss, SigLipDualEncoderModel, SigLipLoss, last_token_index

IMG = 32


def vit(**kw):
    return ViTConfig(**{**dict(image_size=IMG, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=64), **kw})


def bert(**kw):
    return BertConfig(**{**dict(vocab_size=64, hidden_size=24, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=48, max_position_embeddings=32), **kw})


def vim(**kw):
    return VimConfig(**{**dict(image_size=IMG, patch_size=8, hidden_size=32, num_hidden_layers=1, state_size=4,
                               ssm_backend="torch"), **kw})


def mamba(**kw):
    return MambaLMConfig(**{**dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, state_size=4,
                                   ssm_backend="torch"), **kw})


TOWERS = {
    "vit": vit,
    "siglip_vision": lambda: SiglipVisionConfig(image_size=IMG, patch_size=8, hidden_size=32, num_hidden_layers=1,
                                                num_attention_heads=2, intermediate_size=64),
    "clip_vision": lambda: CLIPVisionConfig(image_size=IMG, patch_size=8, hidden_size=32, num_hidden_layers=1,
                                            num_attention_heads=2, intermediate_size=64, projection_dim=16),
    "vim": vim,
    "vmamba": lambda: VMambaConfig(image_size=IMG, embed_dim=8, depths=[1, 1, 1, 1], d_state=2, ssm_ratio=2.0,
                                   ssm_backend="torch"),
}


def model_of(vision=None, text=None, seed=0, **kw):
    torch.manual_seed(seed)
    config = SigLipDualEncoderConfig(vision_config=vision if vision is not None else vit(),
                                     text_config=text if text is not None else bert(), projection_dim=16, **kw)
    return SigLipDualEncoderModel(config).eval()


def inputs(n=3, seqlen=6, seed=0, size=IMG):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, 64, (n, seqlen), generator=g), torch.randn(n, 3, size, size, generator=g)


# ---------------------------------------------------------------------------------------------------------------------
# losses and logits
# ---------------------------------------------------------------------------------------------------------------------
def test_sigmoid_loss_equals_double_loop():
    logits = torch.randn(5, 5, generator=torch.Generator().manual_seed(0)) * 3
    n = logits.shape[0]
    total = 0.0
    for i in range(n):
        for j in range(n):
            z = 1.0 if i == j else -1.0
            total += -math.log(1.0 / (1.0 + math.exp(-z * float(logits[i, j]))))
    assert SigLipLoss()(logits).item() == pytest.approx(total / n, rel=1e-6)  # the paper: sum over pairs / batch


def test_softmax_loss_equals_clip_formula():
    logits = torch.randn(4, 4, generator=torch.Generator().manual_seed(1)) * 3
    n = logits.shape[0]
    exp = logits.double().exp()
    image_ce = sum(-math.log(exp[i, i] / exp[i].sum()) for i in range(n)) / n
    text_ce = sum(-math.log(exp[i, i] / exp[:, i].sum()) for i in range(n)) / n
    assert ClipLoss()(logits).item() == pytest.approx((image_ce + text_ce) / 2, rel=1e-6)


@pytest.mark.parametrize("loss_type", ["sigmoid", "softmax"])
def test_forward_logits_and_loss_follow_the_formula(loss_type):
    model = model_of(loss_type=loss_type)
    ids, px = inputs()
    out = model(input_ids=ids, pixel_values=px)
    cos = out.image_embeds @ out.text_embeds.t()
    expected = cos * model.logit_scale.exp() + model.logit_bias
    torch.testing.assert_close(out.logits_per_image, expected)
    torch.testing.assert_close(out.logits_per_text, expected.t())
    loss = (SigLipLoss if loss_type == "sigmoid" else ClipLoss)()(expected)
    torch.testing.assert_close(out.loss, loss)
    assert out.logits_per_image.shape == (3, 3)


def test_logit_init_values():
    model = model_of()
    assert model.logit_scale.item() == pytest.approx(math.log(10.0))  # SigLIP: t' = log 10
    assert model.logit_bias.item() == pytest.approx(-10.0)
    clip = model_of(loss_type="softmax")
    assert clip.logit_scale.item() == pytest.approx(math.log(1 / 0.07)) and clip.logit_bias.item() == 0.0
    custom = model_of(logit_scale_init=1.5, logit_bias_init=-3.0)
    assert (custom.logit_scale.item(), custom.logit_bias.item()) == (pytest.approx(1.5), pytest.approx(-3.0))


# ---------------------------------------------------------------------------------------------------------------------
# towers
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("vision", sorted(TOWERS))
def test_vision_towers_give_normalised_embeddings(vision):
    model = model_of(TOWERS[vision](), vision_pooling="mean" if vision == "vmamba" else "pooler")
    ids, px = inputs(n=2)
    emb = model.get_image_features(px)
    assert emb.shape == (2, 16)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(2))
    out = model(input_ids=ids, pixel_values=px)
    torch.testing.assert_close(out.image_embeds, emb)
    assert type(model.vision_model).__name__ == {"vit": "ViTModel", "siglip_vision": "SiglipVisionModel",
                                                  "clip_vision": "CLIPVisionModel", "vim": "VimModel",
                                                  "vmamba": "VMambaModel"}[vision]


@pytest.mark.parametrize("pooling", ["cls", "mean", "last_token"])
def test_bert_text_tower(pooling):
    model = model_of(text=bert(), text_pooling=pooling)
    ids, _ = inputs(n=2)
    emb = model.get_text_features(ids, attention_mask=torch.ones_like(ids))
    assert emb.shape == (2, 16)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(2))


def test_vim_cls_pooling_reads_the_middle_cls_token():
    model = model_of(vim(), vision_pooling="cls")
    _, px = inputs(n=2)
    hidden = model.vision_model(px).last_hidden_state  # (2, 16 patches + 1, D); cls at index 8
    expected = torch.nn.functional.normalize(model.visual_projection(hidden[:, 8]), dim=-1)
    torch.testing.assert_close(model.get_image_features(px), expected)


def test_mamba_text_tower_last_token_is_padding_invariant():
    model = model_of(vim(), mamba())
    assert model.config.text_pooling == "last_token"  # the default for a causal tower
    ids = torch.tensor([[5, 6, 7, 8, 9], [10, 11, 12, 13, 14]])
    alone = torch.cat([model.get_text_features(ids[:1]), model.get_text_features(ids[1:, :3])])
    right = torch.tensor([[5, 6, 7, 8, 9], [10, 11, 12, 0, 0]])
    left = torch.tensor([[5, 6, 7, 8, 9], [0, 0, 10, 11, 12]])
    for padded in (right, left):
        mask = (padded != 0).long()
        torch.testing.assert_close(model.get_text_features(padded, attention_mask=mask), alone, atol=1e-5, rtol=1e-4)
    assert last_token_index(torch.tensor([[1, 1, 0], [0, 1, 1], [1, 1, 1]])).tolist() == [1, 2, 2]


def test_from_towers_copies_pretrained_weights(tmp_path):
    from transformers import BertModel

    torch.manual_seed(3)
    pretrained = BertModel(bert()).eval()
    pretrained.save_pretrained(tmp_path / "bert")
    ids, _ = inputs(n=2)
    for tower in (pretrained, tmp_path / "bert"):
        model = SigLipDualEncoderModel.from_towers(text_model=tower, vision_config=vit(), projection_dim=16,
                                                   freeze_text_tower=True).eval()
        assert model.config.text_config.hidden_size == 24 and model.config.freeze_text_tower
        torch.testing.assert_close(model.text_model(ids).last_hidden_state, pretrained(ids).last_hidden_state)
        assert not any(p.requires_grad for p in model.text_model.parameters())


def test_text_pooling_defaults():
    assert SigLipDualEncoderConfig(vision_config=vit(), text_config=bert()).text_pooling == "mean"
    assert SigLipDualEncoderConfig(vision_config=vit(), text_config=mamba()).text_pooling == "last_token"


# ---------------------------------------------------------------------------------------------------------------------
# gradients, freezing
# ---------------------------------------------------------------------------------------------------------------------
def test_gradients_reach_projections_and_logit_params():
    model = model_of(vim(), mamba()).train()
    ids, px = inputs()
    model(input_ids=ids, pixel_values=px).loss.backward()
    for name in ("visual_projection.weight", "text_projection.weight", "logit_scale", "logit_bias",
                 "vision_model.patch_embed.proj.weight", "text_model.embeddings.weight"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


@pytest.mark.parametrize("towers", ["vit+bert", "vim+mamba"])
def test_gradient_checkpointing_same_gradients(towers):
    no_dropout = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    vision, text = (vit(**no_dropout), bert(**no_dropout)) if towers == "vit+bert" else (vim(), mamba())
    ids, px = inputs()
    grads = []
    for checkpointing in (False, True):
        model = model_of(vision, text).train()
        if checkpointing:
            # transformers >= 5.24 names it activation_checkpointing_enable (the old name warns); 5.0 has only the old
            getattr(model, "activation_checkpointing_enable", model.gradient_checkpointing_enable)()
        model(input_ids=ids, pixel_values=px).loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], msg=name)


def test_frozen_text_tower():
    model = model_of(text=bert(hidden_dropout_prob=0.5), freeze_text_tower=True).train()
    assert not any(p.requires_grad for p in model.text_model.parameters())
    assert not model.text_model.training and model.vision_model.training  # no dropout in the locked tower
    ids, px = inputs()
    model(input_ids=ids, pixel_values=px).loss.backward()
    assert all(p.grad is None for p in model.text_model.parameters())
    assert model.text_projection.weight.grad is not None
    torch.testing.assert_close(model.get_text_features(ids), model.get_text_features(ids))  # deterministic


# ---------------------------------------------------------------------------------------------------------------------
# save / load, remote code, pipeline
# ---------------------------------------------------------------------------------------------------------------------
def test_save_load_round_trip(tmp_path):
    model = model_of(vim(), mamba(), logit_scale_init=2.0)
    with torch.no_grad():
        model.logit_bias.fill_(-4.5)  # a trained value must survive loading (no re-init)
    model.save_pretrained(tmp_path)
    ids, px = inputs()
    for loader in (SigLipDualEncoderModel, AutoModel):
        loaded = loader.from_pretrained(tmp_path).eval()
        assert type(loaded) is SigLipDualEncoderModel
        assert loaded.logit_bias.item() == -4.5
        torch.testing.assert_close(loaded(input_ids=ids, pixel_values=px).logits_per_image,
                                   model(input_ids=ids, pixel_values=px).logits_per_image, rtol=0, atol=0)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["vision_config"]["model_type"] == "ssmvl_vim" and config["text_config"]["model_type"] == "ssmvl_mamba"
    zero_shot = config["auto_map"]["AutoModelForZeroShotImageClassification"]
    assert zero_shot == "modeling_dual_encoder.SigLipDualEncoderModel"


REMOTE = """
    import json, sys
    import torch
    from PIL import Image
    from transformers import AutoModel, AutoProcessor, pipeline
    d = sys.argv[1] if len(sys.argv) > 1 else {folder!r}
    model = AutoModel.from_pretrained(d, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(d, trust_remote_code=True)
    images = [Image.open(d + f"/img{{i}}.png") for i in range(2)]
    texts = ["a red circle at the top left.", "a blue square at the center."]
    batch = processor(images=images, text=texts, return_tensors="pt")
    with torch.no_grad():
        out = model(**batch)
    torch.save(out.logits_per_image, d + "/remote_logits.pt")
    clf = pipeline("zero-shot-image-classification", model=d, trust_remote_code=True)
    preds = clf(images[0], candidate_labels=["red circle", "blue square", "green cross"],
                hypothesis_template="a {{}}.")
    print(json.dumps({{"model": type(model).__module__ + "." + type(model).__name__,
                      "processor": type(processor).__name__, "preds": preds,
                      "ssmvl": any(m.startswith("ssmvl") for m in sys.modules)}}))
"""


@pytest.mark.parametrize("towers", ["vit+bert", "vim+mamba"])
def test_remote_code_processor_and_pipeline_without_ssmvl(towers, tmp_path):
    from ssmvl.training.dual_encoder import shapes_dual_encoder_processor
    from ssmvl.training.shapes import make_shapes_dataset

    processor = shapes_dual_encoder_processor(image_size=IMG)
    vocab = len(processor.tokenizer)
    vision, text = (vit(), bert(vocab_size=vocab)) if towers == "vit+bert" else (vim(), mamba(vocab_size=vocab))
    model = model_of(vision, text)
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    images = make_shapes_dataset(2, seed=0, image_size=IMG)["image"]
    for i, image in enumerate(images):
        image.save(folder / f"img{i}.png")
    batch = processor(images=[Image.open(folder / f"img{i}.png") for i in range(2)],
                      text=["a red circle at the top left.", "a blue square at the center."], return_tensors="pt")
    with torch.no_grad():
        local = model(**batch).logits_per_image

    proc = run_isolated(REMOTE.format(folder=str(folder)), cwd=tmp_path)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["model"].startswith("transformers_modules") and result["model"].endswith("SigLipDualEncoderModel")
    assert result["processor"] == "SigLipDualEncoderProcessor" and not result["ssmvl"]
    torch.testing.assert_close(torch.load(folder / "remote_logits.pt"), local, rtol=0, atol=1e-6)
    preds = result["preds"]
    assert sorted(p["label"] for p in preds) == ["blue square", "green cross", "red circle"]
    assert all(0.0 <= p["score"] <= 1.0 for p in preds) and abs(sum(p["score"] for p in preds) - 1.0) < 1e-4


# ---------------------------------------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------------------------------------
def test_few_trainer_steps_lower_the_loss(tmp_path):
    from ssmvl.training.dual_encoder import DualEncoderCollator, shapes_dual_encoder_processor, train_dual_encoder
    from ssmvl.training.shapes import make_shapes_dataset

    processor = shapes_dual_encoder_processor(image_size=IMG)
    train = make_shapes_dataset(64, seed=0, image_size=IMG, max_objects=1)
    test = make_shapes_dataset(16, seed=0, image_size=IMG, max_objects=1, split="test")
    model = model_of(vit(), bert(vocab_size=len(processor.tokenizer)))
    batch = DualEncoderCollator(processor)([train[i] for i in range(32)])

    def loss():
        model.eval()
        with torch.no_grad():
            return model(**batch).loss.item()

    before = loss()
    result = train_dual_encoder(model, train, processor, tmp_path / "run", eval_ds=test, max_steps=24, batch_size=32,
                                lr=3e-3, warmup_ratio=0.0, logging_steps=4, disable_tqdm=True)
    assert loss() < before
    assert result["global_step"] == 24 and result["final_loss"] < result["first_logged_loss"]
    assert 0.0 <= result["image_to_text_recall@1"] <= result["image_to_text_recall@5"] <= 1.0
    assert result["num_queries"] == 16
    assert (tmp_path / "run" / "config.json").exists() and (tmp_path / "run" / "processor_config.json").exists()


# ---------------------------------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------------------------------
def test_bad_inputs():
    model = model_of()
    ids, px = inputs(n=3)
    with pytest.raises(ValueError, match="one caption per image"):
        model(input_ids=ids[:2], pixel_values=px, return_loss=True)
    out = model(input_ids=ids[:2], pixel_values=px)  # zero-shot shape: no loss asked, none computed
    assert out.loss is None and out.logits_per_image.shape == (3, 2)
    with pytest.raises(ValueError, match="square"):
        SigLipLoss()(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="square"):
        ClipLoss()(torch.zeros(3, 2))
    with pytest.raises(ValueError, match="built for 32x32"):
        model(input_ids=ids, pixel_values=torch.randn(3, 3, 48, 48))
    with pytest.raises(ValueError, match="channels"):
        model.get_image_features(torch.randn(3, 1, IMG, IMG))
    with pytest.raises(ValueError, match="both input_ids and pixel_values"):
        model(input_ids=ids)
    with pytest.raises(ValueError, match="input_ids must be integer"):
        model.get_text_features(ids.float())
    with pytest.raises(TypeError, match="unexpected argument"):
        model(input_ids=ids, pixel_values=px, labels=ids)


def test_config_errors():
    with pytest.raises(ValueError, match="loss_type"):
        SigLipDualEncoderConfig(vision_config=vit(), text_config=bert(), loss_type="hinge")
    with pytest.raises(ValueError, match="text_pooling"):
        SigLipDualEncoderConfig(vision_config=vit(), text_config=bert(), text_pooling="max")
    with pytest.raises(ValueError, match="model_type"):
        SigLipDualEncoderConfig(vision_config={"hidden_size": 8}, text_config=bert())
    with pytest.raises(ValueError, match="VMamba has none"):
        SigLipDualEncoderConfig(vision_config=TOWERS["vmamba"](), text_config=bert(), vision_pooling="cls")
    built = SigLipDualEncoderConfig(vision_config={"model_type": "ssmvl_vim", "image_size": 32, "patch_size": 8},
                                    text_config={"model_type": "bert", "hidden_size": 24, "num_attention_heads": 2})
    assert type(built.vision_config) is VimConfig and type(built.text_config) is BertConfig


def test_processor_padding_and_images():
    from ssmvl.training.dual_encoder import shapes_dual_encoder_processor

    processor = shapes_dual_encoder_processor(image_size=IMG)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 70), dtype=np.uint8))  # grayscale
    batch = processor(images=[image], text=["a red circle.", "a blue square at the top left."], return_tensors="pt")
    assert batch["pixel_values"].shape == (1, 3, IMG, IMG)
    assert batch["input_ids"].shape[0] == 2 and batch["attention_mask"][0].sum() < batch["attention_mask"][1].sum()
    with pytest.raises(ValueError, match="text=..., images="):
        processor()
