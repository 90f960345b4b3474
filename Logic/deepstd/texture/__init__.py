"""Texture stage: the 3DTCMPE learned codec for template-aligned volumes (docs/TEXTURE.md).

`TextureCodec.compress(x, rate) -> TextureStreams`, `TextureCodec.decompress(streams) -> ndarray`;
`TextureStreams.to_bytes()/from_bytes()`; training in `deepstd.texture.train`.
"""

from .codec import TextureCodec
from .network import TextureConfig, TextureNet
from .streams import TextureStreams

__all__ = ["TextureCodec", "TextureConfig", "TextureNet", "TextureStreams"]
