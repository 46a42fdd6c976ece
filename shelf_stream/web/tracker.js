// Boxes that stay on their objects in the live view.
//
// A result describes the frame captured `latency` ago; the live video has moved on since
// (a pan at 30°/s moves a shelf by ~40 px in 150 ms). BoxTracker keeps one track per
// object across results (greedy IoU matching, same class), estimates each track's motion
// in the picture from its observations (their capture times, not their arrival times:
// arrival spacing is network jitter), and extrapolates every box to the capture time of
// the frame on screen now. Where the phone reports its rotation (DeviceMotion), the
// rotation since capture shifts the boxes directly and only the motion it does not explain
// is extrapolated, so a pan that stops stops the boxes at once. A track not confirmed by a
// result for a while fades out, then goes.
//
// Motion model: on a shelf nearly everything in the picture moves together (the camera
// moves, the products do not), so each track's velocity is shrunk halfway towards the
// picture's common motion (the median over tracks): the noise of one box's jitter is
// halved, and an object that does move on its own still gets half of its motion from its
// own track (tests/web/test_boxes.py, one run each, p95 of raw vs compensated distance:
// 98 vs 32 px keeping all of a track's own motion, 64 vs 17 px keeping half).
//
// All boxes are in streamed-frame pixels; all times are milliseconds on the page's clock
// (performance.now()), which is also what the page stamps each captured frame with.

export const TRACKER_DEFAULTS = Object.freeze({
  maxTracks: 64, // bounded: a result carries at most 100 detections, a shelf far fewer
  minIou: 0.2, // after moving a track to the new capture time, its box must overlap this much
  smoothing: 0.5, // weight of the newest velocity measurement
  ownMotion: 0.5, // share of a track's own deviation from the common motion it keeps
  maxExtrapolateMs: 1200, // beyond this a guess is worse than the stale box
  maxVelocityGapMs: 1000, // observations further apart do not give a velocity
  edgePx: 2, // a box this close to the frame's edge is cut by it: its centre lags the object
  fadeStartMs: 300, // unconfirmed this long (page time, ~3 results missed): start fading
  fadeEndMs: 800, // unconfirmed this long: gone
});

export function iou(a, b) {
  const w = Math.min(a.x2, b.x2) - Math.max(a.x1, b.x1);
  const h = Math.min(a.y2, b.y2) - Math.max(a.y1, b.y1);
  if (w <= 0 || h <= 0) return 0;
  const inter = w * h;
  const union = (a.x2 - a.x1) * (a.y2 - a.y1) + (b.x2 - b.x1) * (b.y2 - b.y1) - inter;
  return union > 0 ? inter / union : 0;
}

const shifted = (box, dx, dy) => ({
  ...box,
  x1: box.x1 + dx,
  y1: box.y1 + dy,
  x2: box.x2 + dx,
  y2: box.y2 + dy,
});

const centre = (box) => [(box.x1 + box.x2) / 2, (box.y1 + box.y2) / 2];
const NO_SHIFT = Object.freeze({ dx: 0, dy: 0 });

function median(values) {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

export class BoxTracker {
  constructor(options = {}) {
    this.options = { ...TRACKER_DEFAULTS, ...options };
    this.clear();
    this.nextId = 1;
  }

  clear() {
    this.tracks = [];
    this.lastCaptureMs = -Infinity;
    // The picture's common motion (median of the tracks' own): also what a new object
    // entering during a pan moves with until it has a velocity of its own.
    this.common = { vx: 0, vy: 0, at: -Infinity };
  }

  /**
   * A result for the frame captured at `captureMs` arrived at `nowMs`. Options: `motion`
   * (the camera's rotation as a picture shift: shift(fromMs, toMs) → { dx, dy }), `pts`
   * (kept with the tracks it confirms), `frame` ({ width, height }: boxes at its edge give
   * no velocity). Results older than the newest one seen are ignored (they would move
   * tracks backwards).
   */
  update(detections, captureMs, nowMs, { motion = null, pts = null, frame = null } = {}) {
    if (captureMs < this.lastCaptureMs) return;
    this.lastCaptureMs = captureMs;
    const matches = this.match(detections, captureMs, motion);
    const matched = new Set();
    for (const [track, detection] of matches) {
      this.observe(track, detection, captureMs, nowMs, { motion, pts, frame });
      matched.add(detection);
    }
    this.updateCommonMotion(nowMs);
    this.dropDuplicates(detections, matches, captureMs, motion);
    for (const detection of detections) {
      if (!matched.has(detection)) this.add(detection, captureMs, nowMs, pts);
    }
    this.expire(nowMs);
  }

  /** Greedy IoU matching of detections to tracks moved to `captureMs`, best pairs first. */
  match(detections, captureMs, motion) {
    const pairs = [];
    for (const track of this.tracks) {
      const predicted = this.boxAt(track, captureMs, motion);
      for (const detection of detections) {
        if (detection.classId !== track.box.classId) continue;
        const overlap = iou(predicted, detection);
        if (overlap >= this.options.minIou) pairs.push([overlap, track, detection]);
      }
    }
    pairs.sort((a, b) => b[0] - a[0]);
    const usedTracks = new Set();
    const usedDetections = new Set();
    const matches = [];
    for (const [, track, detection] of pairs) {
      if (usedTracks.has(track) || usedDetections.has(detection)) continue;
      usedTracks.add(track);
      usedDetections.add(detection);
      matches.push([track, detection]);
    }
    return matches;
  }

  /** A matched observation: the object's own motion is what the rotation does not explain. */
  observe(track, detection, captureMs, nowMs, { motion, pts, frame }) {
    const dt = captureMs - track.captureMs;
    const measurable = !this.atEdge(track.box, frame) && !this.atEdge(detection, frame);
    if (dt > 0 && dt <= this.options.maxVelocityGapMs && measurable) {
      const [x0, y0] = centre(track.box);
      const [x1, y1] = centre(detection);
      const rotation = motion?.shift(track.captureMs, captureMs) ?? NO_SHIFT;
      const vx = (x1 - x0 - rotation.dx) / dt;
      const vy = (y1 - y0 - rotation.dy) / dt;
      const a = track.hasVelocity ? this.options.smoothing : 1;
      track.vx = a * vx + (1 - a) * track.vx;
      track.vy = a * vy + (1 - a) * track.vy;
      track.hasVelocity = true;
    } else if (dt > this.options.maxVelocityGapMs) {
      track.hasVelocity = false; // too long ago to say how it moves now
    }
    track.box = detection;
    track.captureMs = captureMs;
    track.confirmedMs = nowMs;
    track.pts = pts;
  }

  atEdge(box, frame) {
    if (!frame) return false;
    const edge = this.options.edgePx;
    return (
      box.x1 <= edge ||
      box.y1 <= edge ||
      box.x2 >= frame.width - edge ||
      box.y2 >= frame.height - edge
    );
  }

  updateCommonMotion(nowMs) {
    const moving = this.tracks.filter((t) => t.hasVelocity && t.confirmedMs === nowMs);
    if (!moving.length) return;
    this.common = {
      vx: median(moving.map((t) => t.vx)),
      vy: median(moving.map((t) => t.vy)),
      at: nowMs,
    };
  }

  /**
   * A track this result did not confirm, lying on a detection of its class that another
   * track did or will take: the same object, whose track lost it (a bad guess of its
   * motion). Left alone it would drift on beside the right box until it faded.
   */
  dropDuplicates(detections, matches, captureMs, motion) {
    const confirmed = new Set(matches.map(([track]) => track));
    const halfIou = this.options.minIou / 2;
    this.tracks = this.tracks.filter((track) => {
      if (confirmed.has(track)) return true;
      const here = this.boxAt(track, captureMs, motion);
      return !detections.some((d) => d.classId === track.box.classId && iou(here, d) >= halfIou);
    });
  }

  add(detection, captureMs, nowMs, pts) {
    this.tracks.push({
      id: this.nextId++,
      box: detection,
      captureMs,
      confirmedMs: nowMs,
      vx: 0,
      vy: 0,
      hasVelocity: false,
      pts,
    });
    if (this.tracks.length > this.options.maxTracks) {
      // The least recently confirmed go first.
      this.tracks.sort((a, b) => b.confirmedMs - a.confirmedMs);
      this.tracks.length = this.options.maxTracks;
    }
  }

  expire(nowMs) {
    this.tracks = this.tracks.filter((t) => nowMs - t.confirmedMs < this.options.fadeEndMs);
  }

  /** The velocity a track is extrapolated with (px/ms): its own, shrunk towards the common. */
  velocity(track) {
    const common = this.common;
    const recent = track.confirmedMs - common.at <= this.options.maxVelocityGapMs;
    const cx = recent ? common.vx : 0;
    const cy = recent ? common.vy : 0;
    if (!track.hasVelocity) return [cx, cy];
    const k = this.options.ownMotion;
    return [cx + k * (track.vx - cx), cy + k * (track.vy - cy)];
  }

  /** Where a track's box is at capture time `atMs`. */
  boxAt(track, atMs, motion) {
    const dt = Math.min(Math.max(atMs - track.captureMs, 0), this.options.maxExtrapolateMs);
    const rotation = motion?.shift(track.captureMs, track.captureMs + dt) ?? NO_SHIFT;
    const [vx, vy] = this.velocity(track);
    return shifted(track.box, vx * dt + rotation.dx, vy * dt + rotation.dy);
  }

  /**
   * Every live track's box at `atMs` (the capture time of the frame on screen), with
   * `alpha` (1: confirmed recently; fading towards 0), the pts it was last seen in and the
   * box as last seen (`observed`, at `observedAtMs`).
   */
  boxes(atMs, nowMs, motion = null) {
    this.expire(nowMs);
    const { fadeStartMs, fadeEndMs } = this.options;
    return this.tracks.map((track) => {
      const age = nowMs - track.confirmedMs;
      const fade = 1 - (age - fadeStartMs) / (fadeEndMs - fadeStartMs);
      const { x1, y1, x2, y2 } = track.box;
      return {
        ...this.boxAt(track, atMs, motion),
        alpha: age <= fadeStartMs ? 1 : Math.max(0, fade),
        trackId: track.id,
        pts: track.pts,
        observed: { x1, y1, x2, y2 },
        observedAtMs: track.captureMs,
      };
    });
  }
}

// ------------------------------------------------------------------- camera rotation

const DEG = Math.PI / 180;

/**
 * The camera's rotation from DeviceMotion's rotationRate (degrees per second about the
 * device's x, y and z axes), integrated into angles and turned into a picture shift.
 *
 * Signs, for a phone upright in portrait: turning about the device's y axis (a pan) moves
 * the scene in the picture along x, +f·ω for both cameras; turning about x (a tilt) moves
 * it along y, +f·ω for the rear camera and −f·ω for the front one (it faces the other
 * way). In landscape the device axes are turned into the screen's by
 * screen.orientation.angle. `f` is the focal length in streamed pixels, from an assumed
 * horizontal field of view (phones do not report theirs); BoxTracker only uses the
 * rotation for what the measured motion does not explain, so a wrong guess costs accuracy
 * when the pan speed changes, not the direction.
 */
export class MotionHistory {
  constructor({ facing = "environment", fovDeg = 65, keepMs = 3000, maxSamples = 400 } = {}) {
    this.facing = facing;
    this.fovDeg = fovDeg;
    this.keepMs = keepMs;
    this.maxSamples = maxSamples;
    this.samples = []; // [tMs, angleX, angleY] in radians, screen axes, oldest first
    this.focalPx = 0;
  }

  /** The streamed frame's size decides the focal length in its pixels. */
  setFrame(width, height) {
    this.focalPx = Math.max(width, height) / 2 / Math.tan((this.fovDeg * DEG) / 2);
  }

  get active() {
    return this.samples.length >= 2;
  }

  /** One DeviceMotion reading: rates in °/s, `tMs` on the page's clock. */
  add(rotationRate, tMs, screenAngleDeg = 0) {
    if (!rotationRate || rotationRate.beta == null || rotationRate.gamma == null) return;
    const a = screenAngleDeg * DEG;
    // Device axes → screen axes (x right, y up as the device's are).
    const wx = rotationRate.beta * Math.cos(a) + rotationRate.gamma * Math.sin(a);
    const wy = -rotationRate.beta * Math.sin(a) + rotationRate.gamma * Math.cos(a);
    const last = this.samples[this.samples.length - 1];
    if (last && tMs <= last[0]) return;
    const dt = last ? (tMs - last[0]) / 1000 : 0;
    const angleX = (last ? last[1] : 0) + wx * DEG * dt;
    const angleY = (last ? last[2] : 0) + wy * DEG * dt;
    this.samples.push([tMs, angleX, angleY]);
    while (this.samples.length > this.maxSamples || this.samples[0][0] < tMs - this.keepMs) {
      this.samples.shift();
    }
  }

  /** The picture shift (streamed px) the rotation between two times caused. */
  shift(fromMs, toMs) {
    if (!this.active || !this.focalPx) return { dx: 0, dy: 0 };
    const [ax0, ay0] = this.anglesAt(fromMs);
    const [ax1, ay1] = this.anglesAt(toMs);
    const tilt = this.facing === "user" ? -1 : 1;
    return { dx: this.focalPx * (ay1 - ay0), dy: tilt * this.focalPx * (ax1 - ax0) };
  }

  /** Angles at `tMs`, interpolated; held at the ends of the history. */
  anglesAt(tMs) {
    const s = this.samples;
    if (tMs <= s[0][0]) return [s[0][1], s[0][2]];
    const last = s[s.length - 1];
    if (tMs >= last[0]) return [last[1], last[2]];
    let i = s.length - 1;
    while (s[i - 1][0] > tMs) i -= 1;
    const [t0, x0, y0] = s[i - 1];
    const [t1, x1, y1] = s[i];
    const f = (tMs - t0) / (t1 - t0);
    return [x0 + f * (x1 - x0), y0 + f * (y1 - y0)];
  }
}
