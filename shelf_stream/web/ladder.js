// Quality ladder: the (size, fps) rungs the page may stream at, with their bitrate ranges.
// A port of shelf_stream/client/ladder.py (same rungs for the same request): rung 0 is the
// requested quality; the frame rate goes down before the size, since for detection on
// shelves a sharp picture matters more than a fluid one.

// The bitrate floor of 1280x720@30; other rungs scale from it with the pixel rate.
const REFERENCE_PIXEL_RATE = 1280 * 720 * 30;
const REFERENCE_FLOOR_KBPS = 1500;
const PIXEL_RATE_EXPONENT = 0.9; // bits needed grow slower than the pixel rate
const CEILING_FACTOR = 8 / 3; // a rung's ceiling: 1500 → 4000 kbit/s at 720p30
// [scale of width and height, divisor of the fps], best first.
const DEFAULT_STEPS = [
  [1.0, 1],
  [1.0, 2],
  [0.75, 2],
  [0.5, 2],
  [1 / 3, 2],
  [1 / 3, 3],
  [0.25, 3],
];
const MIN_FPS = 5;
const MIN_SIDE = 64;

/** Python's round(): halves go to the even neighbour (the port must pick the same sizes). */
export function roundHalfEven(value) {
  const floor = Math.floor(value);
  const diff = value - floor;
  if (diff > 0.5) return floor + 1;
  if (diff < 0.5) return floor;
  return floor % 2 === 0 ? floor : floor + 1;
}

export function rungName(rung) {
  return `${rung.width}x${rung.height}@${Number(rung.fps.toPrecision(6))}`;
}

/** The lowest useful bitrate for this size and rate. */
export function floorKbps(width, height, fps) {
  const ratio = (width * height * fps) / REFERENCE_PIXEL_RATE;
  return nice(REFERENCE_FLOOR_KBPS * ratio ** PIXEL_RATE_EXPONENT);
}

/** Rungs relative to the requested size and rate (aspect ratio kept, sizes even). */
export function defaultLadder(width, height, fps) {
  const sizes = [];
  for (const [scale, divisor] of DEFAULT_STEPS) {
    const w = even(width * scale);
    const h = even(height * scale);
    const rate = Math.max(fps / divisor, Math.min(fps, MIN_FPS));
    const seen = sizes.some(([sw, sh, sr]) => sw === w && sh === h && sr === rate);
    if ((scale < 1 && Math.min(w, h) < MIN_SIDE) || seen) continue;
    sizes.push([w, h, rate]);
  }
  const floors = sizes.map(([w, h, rate]) => floorKbps(w, h, rate));
  return sizes.map(([w, h, rate], i) => {
    // The controller climbs once its estimate passes 1.2 x the next rung's floor: keep the
    // ceiling high enough for that to be reachable (see ladder.py).
    const above = i ? floors[i - 1] : 0;
    const low = floors[i];
    return {
      width: w,
      height: h,
      fps: rate,
      minKbps: low,
      maxKbps: nice(Math.max(low * CEILING_FACTOR, above)),
    };
  });
}

/** The rung matching (width, height, fps), else the best rung not above that quality. */
export function rungIndex(ladder, width, height, fps) {
  const exact = ladder.findIndex(
    (r) => r.width === width && r.height === height && Math.abs(r.fps - fps) < 1e-6,
  );
  if (exact >= 0) return exact;
  const pixelRate = width * height * fps;
  const below = ladder.findIndex((r) => r.width * r.height * r.fps <= pixelRate * (1 + 1e-9));
  return below >= 0 ? below : ladder.length - 1;
}

function even(value) {
  return Math.max(2, 2 * roundHalfEven(value / 2));
}

/** Two significant figures: ladders are heuristics, not measurements. */
function nice(kbps) {
  if (kbps <= 0) return 0;
  const digits = String(Math.trunc(kbps)).length - 2;
  const step = digits > 0 ? 10 ** digits : 1;
  return roundHalfEven(kbps / step) * step;
}
