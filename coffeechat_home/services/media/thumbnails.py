"""Thumbnails with Pillow: a fixed set of common sizes, each generated once
per image and stored like any body. Images that claim more pixels than
``max_image_pixels`` are refused from their header alone, before a single
pixel is decoded (a tiny PNG can claim 100000 x 100000)."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PIL import Image

# Source types we decode. Everything else: "cannot thumbnail".
THUMBNAILABLE = frozenset({"image/png", "image/apng", "image/jpeg", "image/gif", "image/webp"})


@dataclass(frozen=True, slots=True)
class ThumbnailSize:
    width: int
    height: int
    method: str  # "crop" or "scale"


# Synapse's defaults, which clients are used to.
COMMON_SIZES = (
    ThumbnailSize(32, 32, "crop"),
    ThumbnailSize(96, 96, "crop"),
    ThumbnailSize(320, 240, "scale"),
    ThumbnailSize(640, 480, "scale"),
    ThumbnailSize(800, 600, "scale"),
)


class TooManyPixels(Exception):
    pass


class CannotThumbnail(Exception):
    pass


def choose_size(width: int, height: int, method: str) -> ThumbnailSize:
    """The smallest common size at least as large as asked, preferring the
    asked method; when none is that large, the largest there is."""
    def covers(s: ThumbnailSize) -> bool:
        return s.width >= width and s.height >= height

    by_area = sorted(COMMON_SIZES, key=lambda s: s.width * s.height)
    for s in by_area:
        if s.method == method and covers(s):
            return s
    for s in by_area:
        if covers(s):
            return s
    return by_area[-1]


def set_pixel_limit(max_pixels: int) -> None:
    """Pillow's own guard as a second line: it raises above twice the limit
    (set when Pillow is first used)."""
    _pixel_limit[0] = max_pixels


_pixel_limit = [0]


def make_thumbnail(path: Path, size: ThumbnailSize, max_pixels: int) -> tuple[bytes, str]:
    """(bytes, content type) of a thumbnail of the image at ``path``. Runs in
    a worker thread. TooManyPixels, CannotThumbnail.

    Pillow is imported here, on the first thumbnail: with the image
    libraries it loads it is about 2 MB resident in a server that may never
    make one."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if _pixel_limit[0]:
        Image.MAX_IMAGE_PIXELS = _pixel_limit[0]
    try:
        with Image.open(path) as im:
            w, h = im.size  # from the header: nothing decoded yet
            if w <= 0 or h <= 0:
                raise CannotThumbnail("no pixels")
            if w * h > max_pixels:
                raise TooManyPixels(f"{w}x{h}")
            keep_alpha = im.format in ("PNG", "GIF", "WEBP") or im.mode in ("RGBA", "LA", "P")
            if im.format == "JPEG":
                im.draft("RGB", (size.width, size.height))  # decode at a reduced scale
            im.seek(0)
            frame = ImageOps.exif_transpose(im)
            frame = frame.convert("RGBA" if keep_alpha else "RGB")
            if size.method == "crop":
                out = _crop(frame, size.width, size.height)
            else:
                out = frame.copy()
                out.thumbnail((size.width, size.height), Image.Resampling.LANCZOS)
            buf = io.BytesIO()
            if keep_alpha:
                out.save(buf, "PNG", optimize=False)
                return buf.getvalue(), "image/png"
            out.save(buf, "JPEG", quality=80)
            return buf.getvalue(), "image/jpeg"
    except (TooManyPixels, CannotThumbnail):
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise TooManyPixels(str(e)) from None
    except (OSError, ValueError, SyntaxError, EOFError, UnidentifiedImageError) as e:
        raise CannotThumbnail(str(e)) from None


def _crop(im: Image.Image, width: int, height: int) -> Image.Image:
    """Exactly width x height, cut from the centre; never upscaled (a small
    image gives the largest crop of that shape it holds)."""
    if im.width < width or im.height < height:
        scale = min(im.width / width, im.height / height)
        width, height = max(1, int(width * scale)), max(1, int(height * scale))
    from PIL import Image, ImageOps

    return ImageOps.fit(im, (width, height), Image.Resampling.LANCZOS)
