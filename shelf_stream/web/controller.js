// Delay-based adaptive bitrate after WebRTC's Google Congestion Control: a port of
// shelf_stream/client/controller.py, so that the page and `shelf-stream send` react to
// the same link the same way. Names, constants and the order of every calculation follow
// the Python module (see its docstrings for the reasons behind each number);
// tests/web/test_rate_control.py feeds one recorded feedback trace into both and checks
// that the targets agree. Times are seconds on the page's clock (`now`) or on the
// server's (arrivals); only differences of either are used.
//
// Pipeline per Feedback:
//   seq → (send time, size) + Feedback (seq, arrival) → packet groups → delay variation
//     → trendline slope → over-use detector (adaptive threshold) → AIMD with a link
//     capacity estimate; beside it the receive rate and the standing queueing delay
//     (a queue above 60 ms is drained whatever the trend says: TCP hides the trend).

import { defaultLadder, rungIndex, rungName } from "./ladder.js";

/** RateControlConfig's defaults (controller.py), overridable per field. */
export function rateControlConfig(overrides = {}) {
  const config = {
    minBitrateKbps: 50,
    maxBitrateKbps: 4000,
    beta: 0.9,
    increasePerS: 0.08,
    rampIncreasePerS: 0.3,
    largeDropShare: 0.66,
    packetBytes: 1200,
    minAdditiveKbpsPerS: 4,
    maxRateOverReceived: 1.5,
    rttMs: 100,
    rateWindowS: 0.5,
    rateWindowFrames: 4,
    burstTimeMs: 5,
    trendlineWindow: 10,
    trendlineSmoothing: 0.6,
    trendlineGain: 4,
    initialThresholdMs: 12.5,
    minThresholdMs: 10,
    maxThresholdMs: 600,
    thresholdGainUp: 0.0087,
    thresholdGainDown: 0.039,
    overuseTimeMs: 10,
    overuseMinQueueMs: 25,
    baseDelayWindowS: 10,
    standingWindowS: 0.2,
    queueDelayThresholdMs: 60,
    drainTimeS: 0.5,
    minDrainFactor: 0.15,
    capacityStaleS: 2,
    keyframeShadowMaxS: 0.25,
    stallTimeoutS: 1,
    tickS: 0.1,
    downHoldS: 1,
    upFactor: 1.2,
    upHoldS: 4,
    provenUpHoldS: 1,
    carriedWindowS: 1.5,
    minRungHoldS: 3,
    historyPackets: 4096,
    ...overrides,
  };
  if (!(config.minBitrateKbps > 0 && config.minBitrateKbps <= config.maxBitrateKbps)) {
    throw new RangeError("need 0 < minBitrateKbps <= maxBitrateKbps");
  }
  return Object.freeze(config);
}

export const Usage = Object.freeze({ NORMAL: "normal", OVERUSE: "overuse", UNDERUSE: "underuse" });
export const RateState = Object.freeze({
  HOLD: "hold",
  INCREASE: "increase",
  DECREASE: "decrease",
  DRAIN: "drain",
});

// ------------------------------------------------------------------------ delay signal

/** §5.2: packets → groups → (send, arrival) deltas between consecutive groups. */
export class InterGroupDelay {
  constructor(burstTimeMs) {
    this.burstS = burstTimeMs / 1000;
    this.current = null;
    this.previous = null;
  }

  add(sendS, arrivalS) {
    const group = this.current;
    if (group === null) {
      this.current = { firstSend: sendS, lastSend: sendS, lastArrival: arrivalS };
      return null;
    }
    if (this.joins(group, sendS, arrivalS)) {
      group.lastSend = Math.max(group.lastSend, sendS);
      group.lastArrival = Math.max(group.lastArrival, arrivalS);
      return null;
    }
    let delta = null;
    if (this.previous !== null) {
      const prev = this.previous;
      delta = {
        sendDeltaMs: (group.lastSend - prev.lastSend) * 1000,
        arrivalDeltaMs: (group.lastArrival - prev.lastArrival) * 1000,
        arrivalMs: group.lastArrival * 1000,
      };
    }
    this.previous = group;
    this.current = { firstSend: sendS, lastSend: sendS, lastArrival: arrivalS };
    return delta;
  }

  joins(group, sendS, arrivalS) {
    if (sendS - group.firstSend <= this.burstS) return true;
    const arrivalGap = arrivalS - group.lastArrival;
    const variation = arrivalGap - (sendS - group.lastSend);
    return arrivalGap <= this.burstS && variation < 0;
  }
}

/** Slope of the smoothed accumulated delay variation over the last `window` groups. */
export class Trendline {
  constructor(window, smoothing) {
    this.window = window;
    this.points = [];
    this.smoothing = smoothing;
    this.accumulated = 0;
    this.smoothed = 0;
    this.firstArrivalMs = null;
    this.slope = 0;
    this.samples = 0;
  }

  update(delta) {
    if (this.firstArrivalMs === null) this.firstArrivalMs = delta.arrivalMs;
    this.samples += 1;
    this.accumulated += delta.arrivalDeltaMs - delta.sendDeltaMs;
    const s = this.smoothing;
    this.smoothed = s * this.smoothed + (1 - s) * this.accumulated;
    this.points.push([delta.arrivalMs - this.firstArrivalMs, this.smoothed]);
    if (this.points.length > this.window) this.points.shift();
    if (this.points.length === this.window) {
      const slope = linearFitSlope(this.points);
      if (slope !== null) this.slope = slope;
    }
    return this.slope;
  }
}

/** Sums left to right, as Python 3.11's sum() does (3.12 compensates: differs by ulps). */
function sum(values) {
  let total = 0;
  for (const value of values) total += value;
  return total;
}

function linearFitSlope(points) {
  const n = points.length;
  const xMean = sum(points.map(([x]) => x)) / n;
  const yMean = sum(points.map(([, y]) => y)) / n;
  const num = sum(points.map(([x, y]) => (x - xMean) * (y - yMean)));
  const den = sum(points.map(([x]) => (x - xMean) ** 2));
  return den > 0 ? num / den : null;
}

/** §5.4: the (scaled) trend against an adaptive threshold gamma. */
export class OveruseDetector {
  static MAX_DELTAS = 60;
  static MAX_ADAPT_OFFSET_MS = 15;

  constructor(config) {
    this.cfg = config;
    this.threshold = config.initialThresholdMs;
    this.usage = Usage.NORMAL;
    this.modifiedTrend = 0;
    this.overuseMs = -1;
    this.overuseCount = 0;
    this.previousTrend = 0;
    this.lastUpdateMs = null;
  }

  detect(trend, samples, sendDeltaMs, nowMs) {
    if (samples < 2) {
      this.usage = Usage.NORMAL;
      return this.usage;
    }
    const m = Math.min(samples, OveruseDetector.MAX_DELTAS) * trend * this.cfg.trendlineGain;
    this.modifiedTrend = m;
    if (m > this.threshold) {
      this.overuseMs = this.overuseMs < 0 ? sendDeltaMs / 2 : this.overuseMs + sendDeltaMs;
      this.overuseCount += 1;
      if (
        this.overuseMs > this.cfg.overuseTimeMs &&
        this.overuseCount > 1 &&
        trend >= this.previousTrend
      ) {
        this.overuseMs = 0;
        this.overuseCount = 0;
        this.usage = Usage.OVERUSE;
      }
    } else if (m < -this.threshold) {
      this.overuseMs = -1;
      this.overuseCount = 0;
      this.usage = Usage.UNDERUSE;
    } else {
      this.overuseMs = -1;
      this.overuseCount = 0;
      this.usage = Usage.NORMAL;
    }
    this.previousTrend = trend;
    this.adapt(m, nowMs);
    return this.usage;
  }

  adapt(m, nowMs) {
    const cfg = this.cfg;
    const last = this.lastUpdateMs;
    this.lastUpdateMs = nowMs;
    if (last === null || Math.abs(m) > this.threshold + OveruseDetector.MAX_ADAPT_OFFSET_MS) {
      return;
    }
    const gain = Math.abs(m) < this.threshold ? cfg.thresholdGainDown : cfg.thresholdGainUp;
    const elapsedMs = Math.min(Math.max(nowMs - last, 0), 100);
    this.threshold += gain * (Math.abs(m) - this.threshold) * elapsedMs;
    this.threshold = Math.min(Math.max(this.threshold, cfg.minThresholdMs), cfg.maxThresholdMs);
  }
}

/** Minimum of (time, value) samples over the last `windowS` (monotonic queue). */
export class SlidingMin {
  constructor(windowS) {
    this.windowS = windowS;
    this.samples = [];
  }

  add(t, value) {
    while (this.samples.length && this.samples[this.samples.length - 1][1] >= value) {
      this.samples.pop();
    }
    this.samples.push([t, value]);
    while (this.samples[0][0] < t - this.windowS) this.samples.shift();
  }

  get value() {
    return this.samples.length ? this.samples[0][1] : null;
  }
}

/** One-way queueing delay: standing (arrival - send) minus its 10 s minimum. */
export class QueueDelay {
  constructor(baseWindowS, standingWindowS) {
    this.base = new SlidingMin(baseWindowS);
    this.standing = new SlidingMin(standingWindowS);
  }

  add(sendS, arrivalS) {
    const oneWay = arrivalS - sendS;
    this.base.add(arrivalS, oneWay);
    this.standing.add(arrivalS, oneWay);
  }

  get ms() {
    const base = this.base.value;
    const standing = this.standing.value;
    return base === null || standing === null ? 0 : (standing - base) * 1000;
  }
}

/** Bytes that arrived over a window of server time (at most `maxWindowS`), kbit/s. */
export class ReceiveRate {
  constructor(maxWindowS) {
    this.maxWindowS = maxWindowS;
    this.arrivals = [];
    this.firstArrival = null;
  }

  add(arrivalS, size) {
    if (this.firstArrival === null) this.firstArrival = arrivalS;
    this.arrivals.push([arrivalS, size]);
    while (this.arrivals[0][0] <= arrivalS - this.maxWindowS) this.arrivals.shift();
  }

  kbps(windowS) {
    if (this.firstArrival === null || this.arrivals.length < 2) return null;
    const last = this.arrivals[this.arrivals.length - 1][0];
    const window = Math.min(windowS, this.maxWindowS);
    const inWindow = sum(this.arrivals.filter(([t]) => t > last - window).map(([, s]) => s));
    const span = last - this.firstArrival;
    if (span >= window) return (inWindow * 8) / window / 1000;
    // Less history than a window: the first packet's bytes arrived before the span.
    return span > 0 ? ((inWindow - this.arrivals[0][1]) * 8) / span / 1000 : null;
  }
}

// ------------------------------------------------------------------------ rate control

/** Bytes over the span of their arrivals (the first packet's bytes excluded), kbit/s. */
export class DeliveryRate {
  static MIN_SPAN_S = 0.2;

  constructor() {
    this.first = null;
    this.last = 0;
    this.bytes = 0;
  }

  add(arrivalS, size) {
    if (this.first === null) {
      this.first = this.last = arrivalS;
      return;
    }
    this.last = Math.max(this.last, arrivalS);
    this.bytes += size;
  }

  kbps() {
    if (this.first === null || this.last - this.first < DeliveryRate.MIN_SPAN_S) return null;
    return (this.bytes * 8) / (this.last - this.first) / 1000;
  }
}

/** §5.5's "average max bitrate": an EWMA of the receive rate at over-use, with its variance. */
export class LinkCapacity {
  static ALPHA = 0.05;

  constructor() {
    this.estimate = null;
    this.deviation = 0.4;
  }

  onOveruse(receivedKbps) {
    const alpha = LinkCapacity.ALPHA;
    if (this.estimate === null) this.estimate = receivedKbps;
    else this.estimate += alpha * (receivedKbps - this.estimate);
    const error = this.estimate - receivedKbps;
    const norm = Math.max(this.estimate, 1);
    this.deviation = (1 - alpha) * this.deviation + (alpha * error ** 2) / norm;
    this.deviation = Math.min(Math.max(this.deviation, 0.4), 2.5);
  }

  reset() {
    this.estimate = null;
  }

  spread() {
    return 3 * Math.sqrt(this.deviation * this.estimate);
  }

  upper() {
    return this.estimate === null ? Infinity : this.estimate + this.spread();
  }

  lower() {
    return this.estimate === null ? 0 : this.estimate - this.spread();
  }

  near(kbps) {
    return this.lower() <= kbps && kbps <= this.upper();
  }
}

/** §5.5: the target rate from the detector's signal and the receive rate. */
export class Aimd {
  constructor(config, startKbps) {
    this.cfg = config;
    this.kbps = this.clamp(startKbps);
    this.state = RateState.HOLD;
    this.capacity = new LinkCapacity();
    this.lastDecrease = null;
    this.atCapacitySince = null;
    this.rttS = config.rttMs / 1000;
  }

  update(usage, received, now, dt) {
    this.state = nextState(this.state, usage);
    if (received === null) return;
    if (this.state !== RateState.INCREASE) this.atCapacitySince = null;
    if (this.state === RateState.DECREASE) {
      this.decrease(received, now);
    } else if (this.state === RateState.INCREASE) {
      this.expireCapacity(now);
      this.increase(received, dt);
    }
  }

  drain(received, queueMs, now) {
    const cfg = this.cfg;
    if (this.state !== RateState.DRAIN) this.noteOveruse(received);
    this.state = RateState.DRAIN;
    const factor = Math.max(cfg.minDrainFactor, cfg.beta - queueMs / 1000 / cfg.drainTimeS);
    this.kbps = Math.min(this.kbps, this.clamp(factor * received));
    this.lastDecrease = now;
  }

  endDrain(received, ceiling) {
    if (received !== null) {
      this.kbps = Math.max(this.kbps, this.clamp(Math.min(this.cfg.beta * received, ceiling)));
    }
    this.state = RateState.HOLD;
  }

  /** No higher than `kbps` from here (the AIMD state is kept). */
  limit(kbps) {
    this.kbps = Math.min(this.kbps, this.clamp(kbps));
  }

  /** No Feedback for a while: halve the rate; a drain goes on (see controller.py). */
  halve() {
    this.atCapacitySince = null;
    this.kbps = this.clamp(this.kbps / 2);
    if (this.state !== RateState.DRAIN) this.state = RateState.HOLD;
  }

  decrease(received, now) {
    // At most once per RTT (10..200 ms): a decrease shows only an RTT later.
    const interval = Math.min(Math.max(this.rttS, 0.01), 0.2);
    if (this.lastDecrease !== null && now - this.lastDecrease < interval) return;
    this.noteOveruse(received);
    const decreased = this.clamp(this.cfg.beta * received);
    if (decreased < this.kbps) this.kbps = decreased;
    this.lastDecrease = now;
  }

  expireCapacity(now) {
    if (this.capacity.estimate === null || this.kbps < this.capacity.lower()) {
      this.atCapacitySince = null;
      return;
    }
    if (this.atCapacitySince === null) this.atCapacitySince = now;
    else if (now - this.atCapacitySince >= this.cfg.capacityStaleS) {
      this.capacity.reset();
      this.atCapacitySince = null;
    }
  }

  noteOveruse(received) {
    this.atCapacitySince = null;
    if (received < this.capacity.lower()) this.capacity.reset(); // the link got much slower
    this.capacity.onOveruse(received);
  }

  increase(received, dt) {
    const cfg = this.cfg;
    if (received > this.capacity.upper()) this.capacity.reset(); // faster than ever seen
    const limit = cfg.maxRateOverReceived * received + 10;
    if (this.kbps >= limit) return;
    let step;
    const estimate = this.capacity.estimate;
    // Ramp where no capacity is known, and back up to it after a large drop.
    if (estimate === null || this.kbps < cfg.largeDropShare * estimate) {
      step = this.kbps * ((1 + cfg.rampIncreasePerS) ** dt - 1);
    } else if (this.capacity.near(this.kbps)) {
      step = this.additiveKbpsPerS() * dt;
    } else {
      step = this.kbps * ((1 + cfg.increasePerS) ** dt - 1);
    }
    this.kbps = this.clamp(Math.min(this.kbps + step, limit));
  }

  /** One packet per response time (WebRTC's AimdRateControl, §5.5). */
  additiveKbpsPerS() {
    const cfg = this.cfg;
    const frameBits = (this.kbps * 1000) / 30; // per frame at a nominal 30 fps, as WebRTC
    const packets = Math.max(1, Math.ceil(frameBits / (cfg.packetBytes * 8)));
    const responseS = this.rttS + 0.1;
    return Math.max(cfg.minAdditiveKbpsPerS, frameBits / packets / responseS / 1000);
  }

  clamp(kbps) {
    return Math.min(Math.max(kbps, this.cfg.minBitrateKbps), this.cfg.maxBitrateKbps);
  }
}

/** §5.5's state transition table (a finished drain counts as a decrease). */
function nextState(state, usage) {
  if (usage === Usage.OVERUSE) return RateState.DECREASE;
  if (usage === Usage.UNDERUSE) return RateState.HOLD;
  return state === RateState.DECREASE || state === RateState.DRAIN
    ? RateState.HOLD
    : RateState.INCREASE;
}

// ------------------------------------------------------------------------ ladder policy

/** Which rung to encode at, following the bitrate with hysteresis (see controller.py). */
export class LadderPolicy {
  constructor(config, rungs, index, now) {
    this.cfg = config;
    this.rungs = rungs;
    this.index = index;
    this.changes = 0;
    this.changedAt = now - config.minRungHoldS;
    this.belowSince = null;
    this.aboveSince = null;
    this.carriedSince = null;
  }

  get rung() {
    return this.rungs[this.index];
  }

  floor(index) {
    return Math.min(this.rungs[index].minKbps, this.cfg.maxBitrateKbps);
  }

  /** True when the rung changed (`carriedKbps`: what the link carried without congestion,
   * 0 when it is congested; a climb it proves waits provenUpHoldS, not upHoldS). */
  update(kbps, now, carriedKbps = 0) {
    const cfg = this.cfg;
    const settled = now - this.changedAt >= cfg.minRungHoldS;
    this.belowSince = since(this.belowSince, kbps < this.floor(this.index), now);
    if (this.belowSince !== null && now - this.belowSince >= cfg.downHoldS) {
      if (settled && this.index < this.rungs.length - 1) {
        let fits = this.rungs.length - 1;
        for (let i = this.index + 1; i < this.rungs.length; i += 1) {
          if (this.floor(i) <= kbps) {
            fits = i;
            break;
          }
        }
        return this.move(fits, now);
      }
      return false;
    }
    const up = this.index - 1;
    const climbKbps = up >= 0 ? cfg.upFactor * this.floor(up) : Infinity;
    this.aboveSince = since(this.aboveSince, kbps >= climbKbps, now);
    const proven = this.aboveSince !== null && carriedKbps >= climbKbps;
    this.carriedSince = since(this.carriedSince, proven, now);
    const held =
      isHeld(this.aboveSince, cfg.upHoldS, now) ||
      isHeld(this.carriedSince, cfg.provenUpHoldS, now);
    return held && settled && this.move(up, now);
  }

  move(index, now) {
    this.index = index;
    this.changes += 1;
    this.changedAt = now;
    this.belowSince = this.aboveSince = this.carriedSince = null;
    return true;
  }
}

function since(start, condition, now) {
  if (!condition) return null;
  return start === null ? now : start;
}

function isHeld(start, holdS, now) {
  return start !== null && now - start >= holdS;
}

// --------------------------------------------------------------------------- controller

/**
 * Sends and Feedback in, encoder targets out (sans-I/O, like controller.RateController).
 * `start`: { bitrateKbps, fps, width, height }; `ladder`: the rungs it may move between.
 */
export class RateController {
  constructor(config, { start, now, ladder = null }) {
    this.config = config;
    const rungs = ladder?.length ? ladder : defaultLadder(start.width, start.height, start.fps);
    const index = rungIndex(rungs, start.width, start.height, start.fps);
    this.ladder = new LadderPolicy(config, rungs, index, now);
    this.aimd = new Aimd(config, start.bitrateKbps);
    this.groups = new InterGroupDelay(config.burstTimeMs);
    this.trendline = new Trendline(config.trendlineWindow, config.trendlineSmoothing);
    this.detector = new OveruseDetector(config);
    this.queue = new QueueDelay(config.baseDelayWindowS, config.standingWindowS);
    this.rate = new ReceiveRate(Math.max(1, config.rateWindowS, config.carriedWindowS));
    this.sent = new Map(); // seq → { sendS, size, keyframe }, oldest first, bounded
    this.lastSeq = -1;
    this.arrivalOriginUs = null;
    this.lastUpdate = null;
    this.lastFeedback = null;
    this.stallChecked = now;
    this.drainCeiling = this.aimd.kbps;
    this.drainRate = new DeliveryRate();
    this.blindUntil = -Infinity; // server time: delay samples skipped (a keyframe)
    this.nextTick = now + config.tickS;
  }

  // -- inputs

  /** A Video message of `sizeBytes` went to the socket. */
  onSent(seq, sizeBytes, now, keyframe = false) {
    this.sent.set(seq, { sendS: now, size: sizeBytes, keyframe });
    while (this.sent.size > this.config.historyPackets) {
      this.sent.delete(this.sent.keys().next().value);
    }
  }

  /** A Feedback: [seq, arrival µs on the server's clock] of Video messages. */
  onFeedback(arrivals, now) {
    const sorted = [...arrivals].sort((a, b) => a[0] - b[0] || a[1] - b[1]);
    for (const [seq, arrivalUs] of sorted) {
      if (seq <= this.lastSeq) continue; // duplicate or stale
      const packet = this.sent.get(seq);
      if (packet !== undefined) {
        this.sent.delete(seq);
        // Server times count from its first report, in exact integer µs.
        if (this.arrivalOriginUs === null) this.arrivalOriginUs = arrivalUs;
        this.onPacket(packet, (arrivalUs - this.arrivalOriginUs) / 1e6);
      }
      this.lastSeq = seq;
    }
    // In-order transport: anything older than the newest report is never reported.
    for (const seq of [...this.sent.keys()]) if (seq <= this.lastSeq) this.sent.delete(seq);
    this.lastFeedback = now;
    this.updateRate(now);
  }

  setRttMs(rttMs) {
    this.aimd.rttS = rttMs / 1000;
  }

  getTimer() {
    return this.nextTick;
  }

  /** Time passed: check for stalled Feedback and let the ladder's hold times run. */
  handleTimer(now) {
    this.tick(now);
  }

  // -- outputs (queries)

  /** { bitrateKbps, fps, width, height } for the encoder now. */
  target() {
    const rung = this.ladder.rung;
    const bitrate = Math.min(this.aimd.kbps, rung.maxKbps);
    return {
      bitrateKbps: Math.round(bitrate * 10) / 10,
      fps: rung.fps,
      width: rung.width,
      height: rung.height,
    };
  }

  snapshot() {
    const received = this.receivedKbps();
    const round1 = (value) => (value === null ? null : Math.round(value * 10) / 10);
    return {
      targetKbps: round1(this.aimd.kbps),
      receiveKbps: round1(received),
      capacityKbps: round1(this.aimd.capacity.estimate),
      queueDelayMs: round1(this.queue.ms),
      usage: this.detector.usage,
      state: this.aimd.state,
      rung: rungName(this.ladder.rung),
    };
  }

  // -- internals

  onPacket(packet, arrivalS) {
    this.rate.add(arrivalS, packet.size);
    if (this.aimd.state === RateState.DRAIN) this.drainRate.add(arrivalS, packet.size);
    if (packet.keyframe) this.blindUntil = arrivalS + this.keyframeShadowS(packet.size);
    // A drain needs every sample: it ends when the queue is seen gone.
    const shadowed = packet.keyframe || arrivalS <= this.blindUntil;
    if (shadowed && this.aimd.state !== RateState.DRAIN) return;
    this.queue.add(packet.sendS, arrivalS);
    const delta = this.groups.add(packet.sendS, arrivalS);
    if (delta !== null) {
      const trend = this.trendline.update(delta);
      this.detector.detect(trend, this.trendline.samples, delta.sendDeltaMs, delta.arrivalMs);
    }
  }

  /** A rising trend with no queue to show for it is bunched frames, not congestion. */
  usageNow(queueMs) {
    const usage = this.detector.usage;
    if (usage === Usage.OVERUSE && queueMs < this.config.overuseMinQueueMs) return Usage.NORMAL;
    return usage;
  }

  /** How long after a keyframe's arrival its burst still shows in the delays, at most. */
  keyframeShadowS(size) {
    const rates = [this.receivedKbps(), this.aimd.capacity.estimate].filter((r) => r);
    if (!rates.length) return 0;
    return Math.min((size * 8) / (Math.max(...rates) * 1000), this.config.keyframeShadowMaxS);
  }

  updateRate(now) {
    const dt = this.lastUpdate === null ? 0 : Math.min(now - this.lastUpdate, 1);
    this.lastUpdate = now;
    const received = this.receivedKbps();
    const queueMs = this.queue.ms;
    const draining = this.aimd.state === RateState.DRAIN;
    if (received !== null && queueMs > this.config.queueDelayThresholdMs) {
      if (!draining) {
        this.drainCeiling = this.aimd.kbps;
        this.drainRate = new DeliveryRate();
      }
      // While the queue drains the link is never idle: what arrived since is its capacity.
      this.aimd.drain(this.drainRate.kbps() || received, queueMs, now);
    } else if (draining) {
      this.aimd.endDrain(this.drainRate.kbps() || received, this.drainCeiling);
    } else {
      this.aimd.update(this.usageNow(queueMs), received, now, dt);
    }
    this.tick(now);
  }

  receivedKbps() {
    const cfg = this.config;
    const window = Math.max(cfg.rateWindowS, cfg.rateWindowFrames / this.ladder.rung.fps);
    return this.rate.kbps(window);
  }

  tick(now) {
    this.nextTick = now + this.config.tickS;
    this.checkStall(now);
    const index = this.ladder.index;
    const carried = this.carriedKbps();
    if (this.ladder.update(this.sustainableKbps(), now, carried) && this.ladder.index < index) {
      this.startRung(carried);
    }
  }

  /** A climb starts from what the link has carried, not from the rate (see controller.py). */
  startRung(carriedKbps) {
    const climbKbps = this.config.upFactor * this.ladder.floor(this.ladder.index);
    this.aimd.limit(Math.max(carriedKbps, climbKbps));
  }

  /** While a queue drains the rate is briefly far below the link: keep the resolution. */
  sustainableKbps() {
    const received = this.receivedKbps();
    if (this.aimd.state === RateState.DRAIN && received !== null) {
      return Math.max(this.aimd.kbps, Math.min(this.config.beta * received, this.drainCeiling));
    }
    return this.aimd.kbps;
  }

  /** The receive rate while nothing says the link is congested (else 0). */
  carriedKbps() {
    const carried = this.rate.kbps(this.config.carriedWindowS);
    const congested = this.aimd.state === RateState.DECREASE || this.aimd.state === RateState.DRAIN;
    if (carried === null || congested || this.usageNow(this.queue.ms) === Usage.OVERUSE) return 0;
    return carried;
  }

  /** No Feedback while frames are outstanding: the queue is too long to even report. */
  checkStall(now) {
    if (this.lastFeedback === null || !this.sent.size) {
      this.stallChecked = now;
      return;
    }
    const oldest = this.sent.values().next().value.sendS;
    const start = Math.max(oldest, this.lastFeedback, this.stallChecked);
    if (now - start >= this.config.stallTimeoutS) {
      this.aimd.halve();
      this.stallChecked = now;
    }
  }
}
