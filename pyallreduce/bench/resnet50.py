"""ResNet-50's parameter shapes (He et al. 2016, torchvision's layout), for
benchmarks that need its gradient list: 161 tensors, 25,557,032 values."""

from __future__ import annotations

STAGES = ((64, 3), (128, 4), (256, 6), (512, 3))  # (bottleneck width, blocks)
EXPANSION = 4
CLASSES = 1000


def _batch_norm(channels: int) -> list[tuple[int, ...]]:
    return [(channels,), (channels,)]  # weight and bias


def parameter_shapes() -> list[tuple[int, ...]]:
    """The shapes in the order of ``torchvision.models.resnet50().parameters()``."""
    shapes: list[tuple[int, ...]] = [(64, 3, 7, 7), *_batch_norm(64)]
    channels = 64
    for width, blocks in STAGES:
        for block in range(blocks):
            out = width * EXPANSION
            shapes += [(width, channels, 1, 1), *_batch_norm(width)]
            shapes += [(width, width, 3, 3), *_batch_norm(width)]
            shapes += [(out, width, 1, 1), *_batch_norm(out)]
            if block == 0:  # the projection shortcut
                shapes += [(out, channels, 1, 1), *_batch_norm(out)]
            channels = out
    shapes += [(CLASSES, channels), (CLASSES,)]
    return shapes
