"""Gradient (activation) checkpointing in every family: enabling it gives the same loss and the same gradient for
every parameter, and it is really applied: every checkpointed layer (transformers' `GradientCheckpointingLayer`, ours
and the transformers towers / decoders inside the composite models) runs again during the backward pass, and
without checkpointing none does. Both checkpoint flavours: `use_reentrant=False` (transformers 5.24's default) and
`use_reentrant=True` (5.0's default; it only tracks tensors passed positionally, so it catches a layer whose hidden
states arrive as a keyword). Tiny configs, no dropout; CPU, fp32."""

from __future__ import annotations

import pytest
import torch
from transformers.modeling_layers import GradientCheckpointingLayer

from ssmvl.modeling.configuration_dual_encoder import SigLipDualEncoderConfig
from ssmvl.modeling.configuration_mamba_lm import MambaLMConfig
from ssmvl.modeling.configuration_ssm_vlm import SsmVlmConfig
from ssmvl.modeling.configuration_storm import StormConfig
from ssmvl.modeling.configuration_vim import VimConfig
from ssmvl.modeling.configuration_vmamba import VMambaConfig
from ssmvl.modeling.modeling_dual_encoder import SigLipDualEncoderModel
from ssmvl.modeling.modeling_mamba_lm import MambaLMForCausalLM
from ssmvl.modeling.modeling_ssm_vlm import SsmVlmForConditionalGeneration
from ssmvl.modeling.modeling_storm import StormForImageClassification, StormForVideoClassification
from ssmvl.modeling.modeling_vim import VimForImageClassification
from ssmvl.modeling.modeling_vmamba import VMambaForImageClassification

VOCAB, IMG_TOKEN, SIDE = 64, 4, 32
VIM = dict(model_type="ssmvl_vim", image_size=SIDE, patch_size=8, hidden_size=32, num_hidden_layers=2, state_size=4)
MAMBA = dict(model_type="ssmvl_mamba", vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, state_size=4)
VIT = dict(model_type="vit", image_size=SIDE, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
           intermediate_size=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
LLAMA = dict(model_type="llama", vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False)
STORM = dict(image_size=SIDE, patch_size=8, hidden_size=32, num_hidden_layers=3, keep_ratios=[1.0, 0.5, 0.5],
             num_memory_tokens=4, state_size=4, frame_layers=1, temporal_layers=1, num_frames=4, temporal_pool=2,
             num_labels=3)


def _pixels(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _ids(batch, length, low=IMG_TOKEN + 1, seed=1):
    return torch.randint(low, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def _vlm_inputs(model):
    n = model.config.num_image_tokens if model.config.uses_image_placeholders else 0
    text = _ids(2, 3)
    ids = torch.cat([text[:, :1], torch.full((2, n), IMG_TOKEN), text[:, 1:]], dim=1)
    return dict(input_ids=ids, pixel_values=_pixels(2, 3, SIDE, SIDE), labels=ids)


def mamba_lm():
    model = MambaLMForCausalLM(MambaLMConfig(**{k: v for k, v in MAMBA.items() if k != "model_type"}))
    ids = _ids(2, 9)
    return model, dict(input_ids=ids, labels=ids)


def vim():
    model = VimForImageClassification(VimConfig(**{k: v for k, v in VIM.items() if k != "model_type"}, num_labels=3))
    return model, dict(pixel_values=_pixels(2, 3, SIDE, SIDE), labels=torch.tensor([0, 2]))


def vmamba():
    config = VMambaConfig(image_size=SIDE, embed_dim=8, depths=[1, 2], d_state=2, ssm_ratio=2.0, num_labels=3,
                          drop_path_rate=0.0)
    return VMambaForImageClassification(config), dict(pixel_values=_pixels(2, 3, SIDE, SIDE),
                                                      labels=torch.tensor([0, 2]))


def storm_image():
    model = StormForImageClassification(StormConfig(**STORM))
    return model, dict(pixel_values=_pixels(2, 3, SIDE, SIDE), labels=torch.tensor([1, 2]))


def storm_video():
    model = StormForVideoClassification(StormConfig(**STORM))
    return model, dict(pixel_values=_pixels(2, 4, 3, SIDE, SIDE), labels=torch.tensor([1, 2]))


def dual_encoder_vim_mamba():
    config = SigLipDualEncoderConfig(vision_config=VIM, text_config=MAMBA, projection_dim=16)
    return SigLipDualEncoderModel(config), dict(input_ids=_ids(3, 6), pixel_values=_pixels(3, 3, SIDE, SIDE),
                                                return_loss=True)


def vlm(tower, decoder, projector, **kw):
    def build():
        proj_cfg = {"resampler": {"num_queries": 4, "num_heads": 4},
                    "ssm_bridge": {"hidden_size": 32, "num_layers": 2, "state_size": 4}}.get(projector)
        config = SsmVlmConfig(vision_config=tower, text_config=decoder, projector_type=projector,
                              projector_config=proj_cfg, image_token_id=IMG_TOKEN, **kw)
        model = SsmVlmForConditionalGeneration(config)
        return model, _vlm_inputs(model)
    return build


FAMILIES = {
    "mamba_lm": mamba_lm,
    "vim": vim,
    "vmamba": vmamba,
    "storm_image": storm_image,
    "storm_video": storm_video,
    "dual_encoder_vim_mamba": dual_encoder_vim_mamba,
    "vlm_vim_mlp_mamba": vlm(VIM, MAMBA, "mlp"),
    "vlm_vit_ssm_bridge_llama": vlm(VIT, LLAMA, "ssm_bridge"),
    "vlm_vim_resampler_llama_cross_attention": vlm(VIM, LLAMA, "resampler", fusion="cross_attention"),
}


def _enable(model, use_reentrant):
    kwargs = {"use_reentrant": use_reentrant}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.24 (the old name warns there)
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:  # transformers 5.0
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def _loss_grads_and_recomputed(model, inputs):
    """(loss, {name: grad}, checkpointed layers, names of the layers whose children ran again during backward)."""
    layers = {name: m for name, m in model.named_modules() if isinstance(m, GradientCheckpointingLayer)}
    in_backward, recomputed, hooks = [False], set(), []
    for name, layer in layers.items():
        for child in layer.children():
            hooks.append(child.register_forward_hook(
                lambda *_, name=name: recomputed.add(name) if in_backward[0] else None))
    try:
        model.zero_grad(set_to_none=True)
        loss = model(**inputs).loss
        in_backward[0] = True
        loss.backward()
    finally:
        for hook in hooks:
            hook.remove()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads, set(layers), recomputed


@pytest.mark.parametrize("use_reentrant", [False, True], ids=["non_reentrant", "reentrant"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_checkpointing_recomputes_every_layer_and_keeps_gradients(family, use_reentrant):
    torch.manual_seed(0)
    model, inputs = FAMILIES[family]()
    model.train()
    assert model.supports_gradient_checkpointing
    loss, grads, layers, recomputed = _loss_grads_and_recomputed(model, inputs)
    assert layers, f"{family}: no GradientCheckpointingLayer, so checkpointing cannot apply"
    assert not recomputed, f"{family}: layers ran again without checkpointing: {sorted(recomputed)}"

    _enable(model, use_reentrant)
    assert getattr(model, "is_activation_checkpointing", None) or model.is_gradient_checkpointing  # 5.24 / 5.0
    ckpt_loss, ckpt_grads, _, recomputed = _loss_grads_and_recomputed(model, inputs)
    assert recomputed == layers, f"{family}: not recomputed under checkpointing: {sorted(layers - recomputed)}"
    torch.testing.assert_close(ckpt_loss, loss, rtol=1e-6, atol=1e-6)
    assert ckpt_grads.keys() == grads.keys(), (f"{family}: parameters that lost / gained a gradient: "
                                               f"{sorted(grads.keys() ^ ckpt_grads.keys())}")
    for name, grad in grads.items():
        torch.testing.assert_close(ckpt_grads[name], grad, rtol=1e-5, atol=1e-6, msg=f"{family}: {name}")
