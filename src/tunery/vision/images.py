"""Open the images of records, naming every way one can be wrong: a missing file, bytes no reader
understands, a format tunery does not take, a truncated file, too many pixels, several frames.

Each check is what would otherwise fail (or silently differ) in the middle of training: PIL opens a
truncated PNG lazily and fails only when the pixels are read, an animated GIF gives its first frame
without a word, and a huge image costs memory out of all proportion before the processor shrinks it.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

# Still-image formats every supported processor reads through PIL.
SUPPORTED_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF")
# Default largest image, in pixels: 64 megapixels (8000 x 8000); larger ones are almost always a mistake.
MAX_PIXELS = 64_000_000
DATA_URL = re.compile(r"data:image/([A-Za-z0-9.+-]+);base64,(.*)", re.S)


@dataclass(frozen=True)
class ImageRef:
    """Where one image of a record comes from: a file (`path`, absolute) or a data URL's bytes."""

    path: str | None = None
    data: bytes | None = None

    def describe(self) -> str:
        return self.path if self.path is not None else f"data URL ({len(self.data or b'')} bytes)"


class ImageProblem(Exception):
    """Why an image cannot be used; `kind` is a stable code for scripts and tests."""

    def __init__(self, kind: str, reason: str):
        super().__init__(reason)
        self.kind, self.reason = kind, reason


def from_data_url(url: str) -> ImageRef:
    """The bytes of a base64 `data:image/...;base64,` URL; raises `ImageProblem` for anything else
    (an http URL is refused: tunery reads no network)."""
    found = DATA_URL.fullmatch(url.strip())
    if found is None:
        kind = "remote_image" if url.startswith(("http://", "https://")) else "bad_data_url"
        raise ImageProblem(kind, f"image_url must be a base64 data URL (data:image/png;base64,...), "
                                 f"got {url[:40]!r}" + ("; tunery reads no network" if kind == "remote_image" else ""))
    try:
        return ImageRef(data=base64.b64decode(found.group(2), validate=True))
    except (binascii.Error, ValueError) as exc:
        raise ImageProblem("bad_data_url", f"image_url's base64 payload does not decode: {exc}") from None


def open_image(ref: ImageRef, max_pixels: int = MAX_PIXELS):
    """The image as an RGB `PIL.Image`, fully decoded; raises `ImageProblem` saying what is wrong."""
    from PIL import Image, UnidentifiedImageError

    if ref.path is not None and not Path(ref.path).is_file():
        raise ImageProblem("missing_image", f"image not found: {ref.path}")
    source = ref.path if ref.path is not None else io.BytesIO(ref.data or b"")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit speaks instead
        try:
            image = Image.open(source)
        except UnidentifiedImageError:
            raise ImageProblem("unreadable_image", f"not an image any reader knows: {ref.describe()}") from None
        except Image.DecompressionBombError:
            raise ImageProblem("oversized_image", f"image too large to open safely: {ref.describe()}") from None
        except OSError as exc:
            raise ImageProblem("unreadable_image", f"cannot read image {ref.describe()}: {exc}") from None
    return _checked(image, ref, max_pixels)


def _checked(image, ref: ImageRef, max_pixels: int):
    where = ref.describe()
    if image.format not in SUPPORTED_FORMATS:
        raise ImageProblem("unsupported_image", f"image format {image.format} is not supported "
                                                f"({', '.join(SUPPORTED_FORMATS)}): {where}")
    width, height = image.size
    if width * height > max_pixels:
        raise ImageProblem("oversized_image", f"image of {width}x{height} = {width * height:,} pixels is over "
                                              f"the limit of {max_pixels:,}: {where}")
    frames = getattr(image, "n_frames", 1)
    if frames > 1:
        raise ImageProblem("animated_image", f"animated image ({frames} frames); only still images are "
                                             f"trained on: {where}")
    try:
        image.load()  # PIL decodes lazily: a truncated file fails only here
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageProblem("truncated_image", f"image data is truncated or corrupt ({exc}): {where}") from None
    return image.convert("RGB")
