"""ssmvl: state-space (Mamba) vision and vision-language models as Hugging Face models."""

__version__ = "0.1.0"
