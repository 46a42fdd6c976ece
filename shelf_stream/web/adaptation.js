// When a new target from the rate controller is worth an encoder change, and meanwhile the
// share of frames to encode: a port of Retarget and FrameThinner in
// shelf_stream/client/adaptation.py.
//
// Why it matters in a browser too: VideoEncoder.configure() flushes the encoder in
// Chromium and made a keyframe on every call in Safari until WebKit fixed it late in 2023 (bug 261402), so
// a bitrate change is a cost, not a free knob. Small changes wait; a decrease must hold
// for half a second, and until then (and for a dip that ends sooner) it is met at once by
// encoding fewer frames, each with its full budget, without touching the encoder.

export const RETARGET_POLICY = Object.freeze({
  minChange: 0.1, // relative bitrate change
  minDownIntervalS: 0.25,
  minUpIntervalS: 1.0,
  settleS: 5.0,
  minSettledChange: 0.03,
  minDownHoldS: 0.5,
});

const sameRung = (a, b) => a.width === b.width && a.height === b.height && a.fps === b.fps;

export class Retarget {
  constructor(current, now, policy = RETARGET_POLICY) {
    this.policy = policy;
    this.current = current;
    this.switches = 0;
    this.lastSwitch = now;
    this.share = 1;
    this.downSince = null;
  }

  /** Share of the frames to encode (1: all): the target over the encoder's rate. */
  get frameShare() {
    return this.share;
  }

  /** Consider `target`; true if the encoder should be reconfigured for it. */
  offer(target, now) {
    if (!this.worthSwitching(target, now)) {
      let share = target.bitrateKbps / this.current.bitrateKbps;
      if (share > 1 - this.policy.minSettledChange) share = 1; // not worth a stutter either
      this.share = share;
      return false;
    }
    this.share = 1;
    this.downSince = null;
    this.current = target;
    this.lastSwitch = now;
    this.switches += 1;
    return true;
  }

  worthSwitching(target, now) {
    const current = this.current;
    if (!sameRung(target, current)) return true; // the controller holds rung changes already
    const policy = this.policy;
    const change = target.bitrateKbps / current.bitrateKbps - 1;
    const settled = now - this.lastSwitch >= policy.settleS;
    const needed = settled ? policy.minSettledChange : policy.minChange;
    if (change > -needed) this.downSince = null;
    else if (this.downSince === null) this.downSince = now;
    if (Math.abs(change) < needed) return false;
    if (change < 0) {
      const held = this.downSince !== null && now - this.downSince >= policy.minDownHoldS;
      return held && now - this.lastSwitch >= policy.minDownIntervalS;
    }
    return now - this.lastSwitch >= policy.minUpIntervalS;
  }
}

/** Which frames to encode for a share below 1: evenly spread, never in runs. */
export class FrameThinner {
  constructor() {
    this.credit = 0; // stays below 1 between calls
  }

  admit(share) {
    this.credit += Math.min(Math.max(share, 0), 1);
    if (this.credit >= 1 - 1e-9) {
      this.credit -= 1;
      return true;
    }
    return false;
  }
}
