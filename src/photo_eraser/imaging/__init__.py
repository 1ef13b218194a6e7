"""Image handling: format and limit checks, decoding, encoding, masks.

Convention at this boundary: images are RGB uint8 HxWx3 arrays, upright; masks are bool HxW
arrays, True = restore. OpenCV (BGR) never leaks out of this package.
"""

from __future__ import annotations

from photo_eraser.imaging.codec import (
    RESULT_TYPES,
    DecodedImage,
    EncodedImage,
    decode_image,
    encode_image,
    result_content_type,
)
from photo_eraser.imaging.formats import ACCEPTED_FORMATS, LOSSLESS_FORMATS, sniff_format
from photo_eraser.imaging.limits import ImageError, ImageInfo, ImageLimits
from photo_eraser.imaging.mask import (
    DEFAULT_MAX_SIDE,
    MaskError,
    MaskPlacement,
    MaskSource,
    decode_mask,
    encode_mask,
    fit_mask,
    parse_mask_field,
    place_mask,
)

__all__ = [
    "ACCEPTED_FORMATS",
    "DEFAULT_MAX_SIDE",
    "LOSSLESS_FORMATS",
    "RESULT_TYPES",
    "DecodedImage",
    "EncodedImage",
    "ImageError",
    "ImageInfo",
    "ImageLimits",
    "MaskError",
    "MaskPlacement",
    "MaskSource",
    "decode_image",
    "decode_mask",
    "encode_image",
    "encode_mask",
    "fit_mask",
    "parse_mask_field",
    "place_mask",
    "result_content_type",
    "sniff_format",
]
