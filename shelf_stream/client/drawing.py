"""Draw detections onto an image in place: a 2 px box and a "name 0.87" label per object.

Labels use OpenCV's Hershey font when ``cv2`` imports, else a tiny built-in 5x7 bitmap
font drawn with NumPy, so the client needs no OpenCV. Boxes are clipped to the image;
nothing here raises for boxes partly or wholly outside it, or for NaN coordinates.
Colours are plain channel triples, so they work the same on RGB and BGR images.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import lru_cache
from types import ModuleType
from typing import Literal

import numpy as np

Font = Literal["auto", "cv2", "bitmap"]
Color = tuple[int, int, int]

#: One colour per class id (modulo its length): 20 well-separated hues.
PALETTE: tuple[Color, ...] = (
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
    (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
    (0, 128, 128), (220, 190, 255), (170, 110, 40), (255, 250, 200), (128, 0, 0),
    (170, 255, 195), (128, 128, 0), (255, 215, 180), (0, 0, 128), (128, 128, 128),
)  # fmt: skip

BOX_THICKNESS = 2
_PAD = 2  # pixels between the label text and its background's edge

# 5x7 glyphs, one hex byte per row (bit 4 = leftmost column), HD44780 style.
_GLYPHS: dict[str, str] = {
    "0": "0E11131519110E", "1": "040C040404040E", "2": "0E11010204081F",
    "3": "1F02040201110E", "4": "02060A121F0202", "5": "1F101E0101110E",
    "6": "0608101E11110E", "7": "1F010204080808", "8": "0E11110E11110E",
    "9": "0E11110F01020C", "a": "00000E010F110F", "b": "1010161911111E",
    "c": "00000E1010110E", "d": "01010D1311110F", "e": "00000E111F100E",
    "f": "0609081C080808", "g": "000F11110F010E", "h": "10101619111111",
    "i": "04000C0404040E", "j": "0200060202120C", "k": "10101214181412",
    "l": "0C04040404040E", "m": "00001A15151111", "n": "00001619111111",
    "o": "00000E1111110E", "p": "00001E111E1010", "q": "00000D130F0101",
    "r": "00001619101010", "s": "00000E100E011E", "t": "08081C08080906",
    "u": "0000111111130D", "v": "00001111110A04", "w": "0000111115150A",
    "x": "0000110A040A11", "y": "000011110F010E", "z": "00001F0204081F",
    " ": "00000000000000", ".": "00000000000C0C", ":": "000C0C000C0C00",
    "%": "18190204081303", "-": "0000001F000000",
}  # fmt: skip
_GLYPH_W, _GLYPH_H = 5, 7


def color_for(class_id: int) -> Color:
    """The palette colour of ``class_id``."""
    return PALETTE[int(class_id) % len(PALETTE)]


def label_text(name: str, score: float) -> str:
    """``"cat 0.87"``."""
    return f"{name} {float(score):.2f}"


@lru_cache(maxsize=1)
def _cv2() -> ModuleType | None:
    try:
        import cv2  # optional, and slow to import: only on first use
    except ImportError:
        return None
    return cv2


@lru_cache(maxsize=64)
def _glyph(char: str) -> np.ndarray:
    """The (7, 5) bool mask of ``char``; unknown characters draw as blanks."""
    code = _GLYPHS.get(char.lower(), _GLYPHS[" "])
    rows = [int(code[i : i + 2], 16) for i in range(0, 2 * _GLYPH_H, 2)]
    bits = [[(row >> (_GLYPH_W - 1 - col)) & 1 for col in range(_GLYPH_W)] for row in rows]
    return np.array(bits, dtype=bool)


@lru_cache(maxsize=256)
def bitmap_text_mask(text: str, scale: int = 1) -> np.ndarray:
    """A bool mask of ``text`` in the 5x7 font, one blank column between glyphs."""
    if not text:
        return np.zeros((_GLYPH_H * scale, 0), dtype=bool)
    spacer = np.zeros((_GLYPH_H, 1), dtype=bool)
    parts: list[np.ndarray] = []
    for char in text:
        parts.extend((_glyph(char), spacer))
    mask = np.concatenate(parts[:-1], axis=1)
    return np.repeat(np.repeat(mask, scale, axis=0), scale, axis=1)


def _clip_box(box: np.ndarray, width: int, height: int) -> tuple[int, int, int, int] | None:
    """Inclusive pixel bounds of ``box`` inside the image, or ``None`` if none is visible."""
    if box.shape != (4,) or not np.all(np.isfinite(box)):
        return None
    x1, x2 = sorted((float(box[0]), float(box[2])))
    y1, y2 = sorted((float(box[1]), float(box[3])))
    if x2 < 0 or y2 < 0 or x1 > width - 1 or y1 > height - 1:
        return None
    return (
        round(max(x1, 0.0)),
        round(max(y1, 0.0)),
        round(min(x2, width - 1.0)),
        round(min(y2, height - 1.0)),
    )


def draw_box(
    image: np.ndarray,
    bounds: tuple[int, int, int, int],
    color: Color,
    thickness: int = BOX_THICKNESS,
) -> None:
    """Outline the inclusive pixel rectangle ``bounds`` (already inside the image)."""
    x1, y1, x2, y2 = bounds
    t = thickness
    image[y1 : y1 + t, x1 : x2 + 1] = color
    image[max(y2 - t + 1, y1) : y2 + 1, x1 : x2 + 1] = color
    image[y1 : y2 + 1, x1 : x1 + t] = color
    image[y1 : y2 + 1, max(x2 - t + 1, x1) : x2 + 1] = color


def _text_color(background: Color) -> Color:
    luma = 0.299 * background[0] + 0.587 * background[1] + 0.114 * background[2]
    return (0, 0, 0) if luma > 140 else (255, 255, 255)


def _label_origin(
    bounds: tuple[int, int, int, int], size: tuple[int, int], image_shape: tuple[int, ...]
) -> tuple[int, int]:
    """Top-left of a ``size`` label: just above the box, or inside its top if no room."""
    x1, y1 = bounds[0], bounds[1]
    w, h = size
    y = y1 - h if y1 - h >= 0 else y1
    x = max(min(x1, image_shape[1] - w), 0)
    return x, y


def _fill(image: np.ndarray, x: int, y: int, w: int, h: int, color: Color) -> None:
    image[max(y, 0) : max(y + h, 0), max(x, 0) : max(x + w, 0)] = color


def _draw_label_bitmap(
    image: np.ndarray, bounds: tuple[int, int, int, int], text: str, color: Color
) -> None:
    scale = 1 if image.shape[0] < 400 else 2
    mask = bitmap_text_mask(text, scale)
    w, h = mask.shape[1] + 2 * _PAD, mask.shape[0] + 2 * _PAD
    x, y = _label_origin(bounds, (w, h), image.shape)
    _fill(image, x, y, w, h, color)
    # Clip the glyph mask to the image (the label may be wider than the image).
    tx, ty = x + _PAD, y + _PAD
    region = image[ty : ty + mask.shape[0], tx : tx + mask.shape[1]]
    region[mask[: region.shape[0], : region.shape[1]]] = _text_color(color)


def _draw_label_cv2(
    cv2: ModuleType,
    image: np.ndarray,
    bounds: tuple[int, int, int, int],
    text: str,
    color: Color,
) -> None:
    font, font_scale = cv2.FONT_HERSHEY_SIMPLEX, 0.5 if image.shape[0] < 720 else 0.7
    (tw, th), baseline = cv2.getTextSize(text, font, font_scale, 1)
    w, h = tw + 2 * _PAD, th + baseline + 2 * _PAD
    x, y = _label_origin(bounds, (w, h), image.shape)
    _fill(image, x, y, w, h, color)
    origin = (x + _PAD, y + _PAD + th)
    cv2.putText(image, text, origin, font, font_scale, _text_color(color), 1, cv2.LINE_AA)


def _label(labels: Sequence[str] | Mapping[int, str], class_id: int) -> str:
    if isinstance(labels, Mapping):
        return labels.get(class_id, str(class_id))
    return labels[class_id] if 0 <= class_id < len(labels) else str(class_id)


def draw_detections(
    image: np.ndarray,
    boxes: np.ndarray,
    scores: np.ndarray,
    class_ids: np.ndarray,
    labels: Sequence[str] | Mapping[int, str],
    *,
    font: Font = "auto",
) -> None:
    """Draw each detection's box and ``"name score"`` label onto ``image`` in place.

    ``image`` is HxWx3 uint8; ``boxes`` (N, 4) x1 y1 x2 y2 in image pixels;
    ``labels[class_id]`` names a class (a sequence by id, or a mapping; ids it lacks are
    shown as numbers).
    ``font`` forces a text renderer; ``auto`` uses OpenCV when available.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"need an HxWx3 uint8 image, got {image.shape} {image.dtype}")
    cv2 = _cv2() if font != "bitmap" else None
    if font == "cv2" and cv2 is None:
        raise ValueError("font='cv2' needs OpenCV (pip install opencv-python-headless)")
    # OpenCV draws in place only into a contiguous buffer; a strided view would be copied.
    use_cv2 = cv2 is not None and image.flags.c_contiguous
    height, width = image.shape[:2]
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    for box, score, class_id in zip(boxes, scores, class_ids, strict=False):
        bounds = _clip_box(box, width, height)
        if bounds is None:
            continue
        cid = int(class_id)
        color = color_for(cid)
        draw_box(image, bounds, color)
        name = _label(labels, cid)
        text = label_text(name, float(score))
        if use_cv2 and cv2 is not None:
            _draw_label_cv2(cv2, image, bounds, text, color)
        else:
            _draw_label_bitmap(image, bounds, text, color)
