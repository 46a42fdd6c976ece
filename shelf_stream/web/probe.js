// The pre-stream link probe and the choice of the starting quality: a port of
// shelf_stream/client/probe.py (same bursts, same arithmetic, same start for the same
// acknowledgements).
//
// 1. one small probe: its echo gives the round-trip time;
// 2. a burst of 10 probes back to back: the bottleneck spaces them out, so the server's
//    arrival spread gives the throughput (only differences of server times are used);
// 3. if that burst arrived too tightly to measure, one bigger burst sized from the first
//    estimate, within the byte and time budgets.
// The page calls nextProbes() after creating it and after every onAck/handleTimer, sends
// what it returns, and calls handleTimer at getTimer().

import { defaultLadder } from "./ladder.js";
import { HEADER_BYTES, PROBE_HEADER_BYTES } from "./protocol.js";

export const PROBE_OVERHEAD_BYTES = HEADER_BYTES + PROBE_HEADER_BYTES;

export const PROBE_CONFIG = Object.freeze({
  burstCount: 10,
  burstPaddingBytes: 6000,
  secondBurstCount: 20,
  minSpreadMs: 25,
  targetSpreadMs: 60,
  maxTotalBytes: 2_000_000,
  maxDurationS: 1.5,
  minAcks: 4,
  minReliableSpreadMs: 5,
});

export class BandwidthProbe {
  constructor(config, now) {
    this.config = config;
    this.start = now;
    this.deadline = now + config.maxDurationS;
    this.phase = "rtt";
    this.sent = new Map(); // probe id → { burst, size }
    this.bytesSent = 0;
    this.nextId = 0;
    this.bursts = 0;
    this.outbox = [this.newProbe(0, 0)];
    this.rttS = null;
    this.arrivals = new Map(); // probe id → server arrival µs, for burst probes
    this.end = null;
    this.throughputKbps = null;
    this.reliable = false;
    this.beyondKbps = null;
  }

  get done() {
    return this.phase === "done";
  }

  /** [probeId, paddingBytes] of the probes to send now, in order. */
  nextProbes() {
    const out = this.outbox;
    this.outbox = [];
    return out;
  }

  /** A ProbeAck arrived at `now`; unknown, duplicate and late acks are harmless. */
  onAck(ack, now) {
    const sent = this.sent.get(ack.probeId);
    if (sent === undefined || this.done) return;
    const rtt = now - ack.sendUs / 1e6;
    if (rtt >= 0 && (this.rttS === null || rtt < this.rttS)) this.rttS = rtt;
    if (sent.burst > 0 && !this.arrivals.has(ack.probeId)) {
      this.arrivals.set(ack.probeId, ack.arrivalUs);
    }
    this.advance(now);
  }

  getTimer() {
    return this.done ? null : this.deadline;
  }

  handleTimer(now) {
    if (!this.done && now >= this.deadline) this.finish(now);
  }

  result() {
    if (!this.done) throw new Error("the probe is still running");
    return {
      rttMs: this.rttS === null ? null : this.rttS * 1000,
      throughputKbps: this.throughputKbps,
      bytesSent: this.bytesSent,
      durationMs: (this.end - this.start) * 1000,
      reliable: this.reliable && this.rttS !== null,
      beyondKbps: this.beyondKbps,
    };
  }

  // -- internals

  newProbe(burst, padding) {
    const probeId = this.nextId;
    this.nextId += 1;
    const size = PROBE_OVERHEAD_BYTES + padding;
    this.sent.set(probeId, { burst, size });
    this.bytesSent += size;
    return [probeId, padding];
  }

  sendBurst(count, padding) {
    this.bursts += 1;
    this.phase = "burst";
    for (let i = 0; i < count; i += 1) this.outbox.push(this.newProbe(this.bursts, padding));
  }

  waitingFor(burst) {
    if (burst === 0) return this.rttS === null;
    for (const [id, sent] of this.sent) {
      if (sent.burst === burst && !this.arrivals.has(id)) return true;
    }
    return false;
  }

  advance(now) {
    if (this.phase === "rtt" && !this.waitingFor(0)) {
      this.sendBurst(this.config.burstCount, this.config.burstPaddingBytes);
    } else if (this.phase === "burst" && !this.waitingFor(this.bursts)) {
      this.measure(this.bursts);
      if (this.bursts === 2 || !this.secondBurst(now)) this.finish(now);
    }
  }

  /** Send a bigger burst if the first spread too little to trust and budgets allow. */
  secondBurst(now) {
    const cfg = this.config;
    const spreadMs = this.spreadMs(1);
    if (this.throughputKbps === null || spreadMs >= cfg.minSpreadMs) return false;
    const bytesPerS = (this.throughputKbps * 1000) / 8;
    const wanted = (bytesPerS * cfg.targetSpreadMs) / 1000;
    const budget = cfg.maxTotalBytes - this.bytesSent;
    const total = Math.min(wanted, budget);
    const expectedS = total / bytesPerS + 1.5 * (this.rttS ?? 0);
    if (total <= this.burstBytes(1) || now + expectedS > this.deadline) return false;
    const count = cfg.secondBurstCount;
    this.sendBurst(count, Math.max(0, Math.trunc(total / count) - PROBE_OVERHEAD_BYTES));
    return true;
  }

  burstBytes(burst) {
    let total = 0;
    for (const sent of this.sent.values()) if (sent.burst === burst) total += sent.size;
    return total;
  }

  burstArrivals(burst) {
    return [...this.arrivals].filter(([id]) => this.sent.get(id).burst === burst);
  }

  spreadMs(burst) {
    const times = this.burstArrivals(burst).map(([, t]) => t);
    return times.length >= 2 ? (Math.max(...times) - Math.min(...times)) / 1000 : 0;
  }

  /** Throughput of one burst by receiver-side dispersion (sizes from what was sent). */
  measure(burst) {
    const answered = this.burstArrivals(burst)
      .map(([id, t]) => [t, id])
      .sort((a, b) => a[0] - b[0] || a[1] - b[1]);
    if (answered.length < 2) return;
    const [firstUs, firstId] = answered[0];
    const [lastUs, lastId] = answered[answered.length - 1];
    const spanS = (lastUs - firstUs) / 1e6;
    if (spanS <= 0) return;
    const low = Math.min(firstId, lastId);
    const high = Math.max(firstId, lastId);
    let crossed = 0;
    for (let id = low + 1; id <= high; id += 1) crossed += this.sent.get(id).size;
    this.throughputKbps = (crossed * 8) / spanS / 1000;
    const cfg = this.config;
    const enough = answered.length >= cfg.minAcks;
    this.reliable = enough && spanS * 1000 >= cfg.minReliableSpreadMs;
    const tooFast = enough && !this.reliable;
    this.beyondKbps = tooFast ? (crossed * 8) / cfg.minReliableSpreadMs : null;
  }

  finish(now) {
    if (this.phase === "burst" && this.throughputKbps === null) {
      this.measure(this.bursts); // the deadline: use what arrived
    } else if (this.phase === "burst" && this.bursts === 2 && this.waitingFor(2)) {
      // A partial second burst: keep the first's measurement unless this one is trustworthy.
      const first = [this.throughputKbps, this.reliable];
      this.measure(2);
      if (!this.reliable) [this.throughputKbps, this.reliable] = first;
    }
    this.phase = "done";
    this.outbox = [];
    this.end = now;
  }
}

/**
 * The starting bitrate and rung (probe.choose_start): below half the measured throughput
 * (an unreliable one is trusted half as much), on the first rung whose floor fits.
 * Returns { bitrateKbps, fps, width, height, reason }.
 */
export function chooseStart(
  result,
  {
    ladder = null,
    maxBitrateKbps,
    fps,
    width,
    height,
    utilisation = 0.7,
    serialisationBudget = 0.5,
  },
) {
  const rungs = ladder ?? defaultLadder(width, height, fps);
  const bottom = rungs[rungs.length - 1];
  if (result.throughputKbps === null) {
    const bitrate = Math.min(bottom.minKbps, maxBitrateKbps);
    return choice(bottom, bitrate, "the probe measured no throughput: bottom rung");
  }
  const share = Math.min(utilisation, serialisationBudget);
  const trust = result.reliable ? 1 : 0.5;
  const cap = share * trust * result.throughputKbps;
  const measured =
    `probe ${Math.round(result.throughputKbps)} kbit/s` +
    (result.reliable ? "" : " (unreliable, trusted half)");
  for (const rung of rungs) {
    const floor = Math.min(rung.minKbps, maxBitrateKbps);
    if (cap >= floor) {
      const bitrate = Math.min(cap, maxBitrateKbps, rung.maxKbps);
      return choice(rung, bitrate, `${measured}: ${share} of it fits`);
    }
  }
  return choice(bottom, Math.max(cap, 1), `${measured}: below the lowest floor`);
}

function choice(rung, bitrateKbps, reason) {
  return {
    bitrateKbps: Math.floor(bitrateKbps),
    fps: rung.fps,
    width: rung.width,
    height: rung.height,
    reason,
  };
}
