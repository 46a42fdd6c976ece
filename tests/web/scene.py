"""The browser tests' fake camera: a pan along a shelf of real photographs, every
object's true position known for every frame.

The shelf is a strip ``STRIP_W`` pixels long that repeats (the last photo is followed by
the first), and the camera's window slides along it at a speed that varies smoothly
around ``SPEED_PX_S`` (a hand that pans faster and slower); after ``FRAMES`` frames the
window has gone round once, so Chromium's looping of the file is seamless. Everything in
the picture moves together: between frames ``a`` and ``b`` an object moves by
``displacement(a, b)`` pixels in x and none in y.

Each frame carries its index as a barcode in its bottom-left corner (``BITS`` black or
white blocks), so a test can tell which frame the page captured or shows by reading pixels
(the detector ignores it: it looks like nothing in COCO).
"""

from __future__ import annotations

import math
from pathlib import Path

import av
import numpy as np

from shelf_stream.client.sources import _read_photo, _skimage_data_dir

WIDTH, HEIGHT, FPS = 640, 480, 15
FRAMES = 90  # 6 s
SPEED_PX_S = 200.0  # mean pan speed: ~20°/s with a 65° field of view across 640 px
SWAY_PX = 60.0  # the speed varies by ±SWAY_PX·2π/6 s ≈ ±63 px/s over the loop
STRIP_W = round(SPEED_PX_S * FRAMES / FPS)  # 1200: one loop of the file is one lap
PHOTOS = (  # (skimage file, COCO label, x on the strip, y)
    ("astronaut.png", "person", 20, 95),
    ("chelsea.png", "cat", 320, 110),
    ("coffee.png", "cup", 620, 100),
    ("motorcycle_left.png", "motorcycle", 910, 120),
)
PHOTO_BOX = 270  # each photo is fitted into this square
BITS, BIT_W, BIT_H, BIT_X, BIT_Y = 7, 24, 16, 8, HEIGHT - 18
BACKGROUND = (118, 112, 104)


def window_x(index: int) -> int:
    """Left edge of frame ``index``'s window on the strip (unwrapped, whole pixels)."""
    t = index / FPS
    return round(SPEED_PX_S * t + SWAY_PX * math.sin(2 * math.pi * index / FRAMES))


def displacement(from_index: int, to_index: int) -> float:
    """How far (x, px) everything in the picture moves from one frame to another: the
    shortest way round the loop, so frames on either side of the file's end compare."""
    dx = -(window_x(to_index % FRAMES) - window_x(from_index % FRAMES))
    return (dx + STRIP_W / 2) % STRIP_W - STRIP_W / 2


def _strip() -> np.ndarray:
    strip = np.empty((HEIGHT, STRIP_W, 3), np.uint8)
    strip[:] = BACKGROUND
    # Shelf edges: horizontal bands give the encoder something to spend bits on.
    for y in (60, 380):
        strip[y : y + 14] = (70, 66, 60)
    data = _skimage_data_dir()
    for name, _, x, y in PHOTOS:
        photo = _read_photo(data / name, PHOTO_BOX, PHOTO_BOX)
        h, w = photo.shape[:2]
        strip[y : y + h, x : x + w] = photo
    return strip


def _stamp(frame: np.ndarray, index: int) -> None:
    for bit in range(BITS):
        x = BIT_X + bit * BIT_W
        value = 255 if (index >> bit) & 1 else 0
        frame[BIT_Y : BIT_Y + BIT_H, x : x + BIT_W - 4] = value


def render(strip: np.ndarray, index: int) -> np.ndarray:
    columns = (window_x(index) + np.arange(WIDTH)) % STRIP_W
    frame = strip[:, columns].copy()
    _stamp(frame, index)
    return frame


def write_y4m(path: Path) -> Path:
    """The scene as an uncompressed y4m file: Chromium's fake camera plays it in a loop."""
    strip = _strip()
    with av.open(str(path), "w", format="yuv4mpegpipe") as container:
        stream = container.add_stream("rawvideo", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        for index in range(FRAMES):
            frame = av.VideoFrame.from_ndarray(render(strip, index), "rgb24")
            frame = frame.reformat(format="yuv420p")
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


# Read in the page (injected by the tests): the frame index a picture carries.
#   shelfBarcode.fromVideo(video)          the frame a <video> shows now
#   shelfBarcode.fromCanvas(canvas)        a canvas holding a streamed frame 1:1
#   shelfBarcode.onScreen(canvas, fit, w)  a frame drawn into `fit` (CSS px) of a canvas
READ_BARCODE_JS = f"""
window.shelfBarcode = (() => {{
  const bits = {BITS}, bitW = {BIT_W}, bitX = {BIT_X}, bitY = {BIT_Y + BIT_H // 2};
  const decode = (sample) => {{
    let index = 0;
    for (let bit = 0; bit < bits; bit++) {{
      const px = sample(bitX + bit * bitW + (bitW - 4) / 2, bitY);
      if ((px[0] + px[1] + px[2]) / 3 > 128) index |= 1 << bit;
    }}
    return index;
  }};
  const scratch = document.createElement('canvas');
  scratch.width = {WIDTH}; scratch.height = {HEIGHT};
  const scratchCtx = scratch.getContext('2d', {{ willReadFrequently: true }});
  const at = (ctx, x, y) => ctx.getImageData(Math.round(x), Math.round(y), 1, 1).data;
  return {{
    fromVideo(video) {{
      scratchCtx.drawImage(video, 0, 0, {WIDTH}, {HEIGHT});
      return decode((x, y) => at(scratchCtx, x, y));
    }},
    fromCanvas(canvas) {{
      const ctx = canvas.getContext('2d');
      return decode((x, y) => at(ctx, x, y));
    }},
    onScreen(canvas, fit, frameWidth) {{
      const ctx = canvas.getContext('2d');
      const dpr = canvas.width / canvas.getBoundingClientRect().width;
      const scale = fit.w / frameWidth;
      return decode((x, y) => at(ctx, (fit.x + x * scale) * dpr, (fit.y + y * scale) * dpr));
    }},
  }};
}})();
"""
