"""Hub-shippable modeling files. Importing this package registers every family with the transformers Auto classes."""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from .configuration_mamba_lm import MambaLMConfig
from .modeling_mamba_lm import MambaLMForCausalLM, MambaLMModel
from .ssm_layers import MambaBlock, MambaMixer, RMSNorm, SsmCache
from .ssm_ops import available_backends, register_cpu_scan_kernel, resolve_backend, selective_scan

# The fused C++ CPU scan belongs to the installed package, not to the files save_pretrained ships: registered here, so
# a checkpoint's remote code (these files without the package) runs the eager torch scan and compiles nothing.
from ..kernels import cpu_scan as _cpu_scan  # noqa: E402

register_cpu_scan_kernel(_cpu_scan)

AutoConfig.register(MambaLMConfig.model_type, MambaLMConfig, exist_ok=True)
AutoModel.register(MambaLMConfig, MambaLMModel, exist_ok=True)
AutoModelForCausalLM.register(MambaLMConfig, MambaLMForCausalLM, exist_ok=True)

# VMamba
from transformers import AutoModelForImageClassification  # noqa: E402

from .configuration_vmamba import VMambaConfig  # noqa: E402
from .modeling_vmamba import VMambaForImageClassification, VMambaModel  # noqa: E402

AutoConfig.register(VMambaConfig.model_type, VMambaConfig, exist_ok=True)
AutoModel.register(VMambaConfig, VMambaModel, exist_ok=True)
AutoModelForImageClassification.register(VMambaConfig, VMambaForImageClassification, exist_ok=True)

# Vim
from transformers import AutoModelForImageClassification  # noqa: E402

from .configuration_vim import VimConfig  # noqa: E402
from .modeling_vim import VimForImageClassification, VimModel  # noqa: E402

AutoConfig.register(VimConfig.model_type, VimConfig, exist_ok=True)
AutoModel.register(VimConfig, VimModel, exist_ok=True)
AutoModelForImageClassification.register(VimConfig, VimForImageClassification, exist_ok=True)

# VLM (composable: vision tower -> projector -> fusion -> causal LM)
from transformers import AutoModelForImageTextToText, AutoProcessor  # noqa: E402

from .configuration_ssm_vlm import SsmVlmConfig  # noqa: E402
from .modeling_ssm_vlm import SsmVlmForConditionalGeneration, SsmVlmModel  # noqa: E402
from .processing_ssm_vlm import SsmVlmProcessor  # noqa: E402

AutoConfig.register(SsmVlmConfig.model_type, SsmVlmConfig, exist_ok=True)
AutoModel.register(SsmVlmConfig, SsmVlmModel, exist_ok=True)
AutoModelForImageTextToText.register(SsmVlmConfig, SsmVlmForConditionalGeneration, exist_ok=True)
AutoModelForCausalLM.register(SsmVlmConfig, SsmVlmForConditionalGeneration, exist_ok=True)
AutoProcessor.register(SsmVlmConfig, SsmVlmProcessor, exist_ok=True)

# SigLIP-style dual encoder (any vision tower + any text tower, sigmoid / softmax contrastive loss)
from transformers import AutoModelForZeroShotImageClassification, AutoProcessor  # noqa: E402

from .configuration_dual_encoder import SigLipDualEncoderConfig  # noqa: E402
from .modeling_dual_encoder import ClipLoss, SigLipDualEncoderModel, SigLipLoss  # noqa: E402
from .processing_dual_encoder import SigLipDualEncoderProcessor  # noqa: E402

AutoConfig.register(SigLipDualEncoderConfig.model_type, SigLipDualEncoderConfig, exist_ok=True)
AutoModel.register(SigLipDualEncoderConfig, SigLipDualEncoderModel, exist_ok=True)
AutoModelForZeroShotImageClassification.register(SigLipDualEncoderConfig, SigLipDualEncoderModel, exist_ok=True)
AutoProcessor.register(SigLipDualEncoderConfig, SigLipDualEncoderProcessor, exist_ok=True)

# STORM (selective token retention + Mamba, images and videos)
from transformers import AutoModelForImageClassification, AutoModelForVideoClassification  # noqa: E402

from .configuration_storm import StormConfig  # noqa: E402
from .modeling_storm import StormForImageClassification, StormForVideoClassification, StormModel  # noqa: E402

AutoConfig.register(StormConfig.model_type, StormConfig, exist_ok=True)
AutoModel.register(StormConfig, StormModel, exist_ok=True)
AutoModelForImageClassification.register(StormConfig, StormForImageClassification, exist_ok=True)
AutoModelForVideoClassification.register(StormConfig, StormForVideoClassification, exist_ok=True)

# STORM's video processor (PIL / numpy; transformers' AutoVideoProcessor needs torchvision, so it is registered there
# only when torchvision is installed; AutoImageProcessor / AutoProcessor load it everywhere)
from transformers import AutoImageProcessor  # noqa: E402
from transformers.utils import is_torchvision_available  # noqa: E402

from .video_processing_storm import StormVideoProcessor  # noqa: E402

AutoImageProcessor.register(StormConfig, slow_image_processor_class=StormVideoProcessor, exist_ok=True)
AutoProcessor.register(StormConfig, StormVideoProcessor, exist_ok=True)
if is_torchvision_available():
    from transformers import AutoVideoProcessor

    AutoVideoProcessor.register(StormConfig, StormVideoProcessor, exist_ok=True)
