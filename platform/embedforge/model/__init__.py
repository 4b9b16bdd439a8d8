"""The encoder shared by mining, training, serving and evaluation: backbone + pooling."""

from .encoder import Encoder, EncoderSettings

__all__ = ["Encoder", "EncoderSettings"]
