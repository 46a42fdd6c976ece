// shelf-stream browser client.
//
// camera (getUserMedia) ─▶ <video> ─▶ capture canvas at the streamed size ─▶ VideoFrame
//   ─▶ WebCodecs VideoEncoder (HEVC if the browser can, else H.264; Annex-B, realtime)
//   ─▶ one Video message per access unit over a WebSocket to this page's own server
//   ◀─ Result / Dropped / KeyframeRequest / Feedback / Error, matched by pts
//   ─▶ boxes drawn on a canvas over the camera view; FPS, kbit/s and latency below it.
//
// It speaks exactly the protocol `shelf-stream send` speaks (see protocol.js), so the
// server treats it like any other stream. Settings come from the page address:
//   ?autostart=1   start without a tap (kiosks, tests)
//   ?token=SECRET  the server's shared secret (serve --token)
//   ?codec=h264    force a codec (hevc or h264); default: HEVC where supported
//   ?fps=15  ?size=640 (long side of the streamed frame)  ?bitrate=KBPS (start rate)
//   ?facing=user   the front camera (default: the rear one, "environment")
//
// Everything a test or a curious user may want is mirrored in `window.shelfStats`.

import {
  TIME_BASE_HZ,
  decodeMessage,
  encodeBye,
  encodeHello,
  encodeVideo,
  isAnnexB,
} from "./protocol.js";

const KEYFRAME_INTERVAL_MS = 4000; // periodic keyframe; the server asks for more when it needs one
const RING_SIZE = 90; // captured frames remembered for matching answers by pts (~6 s at 15 fps)
const WINDOW_MS = 2000; // FPS and kbit/s are averaged over this window
const LATENCY_SAMPLES = 200; // p50/p95 over the last this many results
const BOXES_STALE_MS = 1000; // boxes older than this are taken off the picture
const STATUS_INTERVAL_MS = 500;
const RECONNECT_DELAYS_MS = [500, 1000, 2000, 4000, 8000, 15000];
const BYE_TIMEOUT_MS = 3000; // after Bye, wait this long for the server to answer and close
// Server errors that a retry cannot fix: show them and stop instead of reconnecting.
const FATAL_ERRORS = new Set([
  "unauthorized",
  "unsupported_version",
  "unsupported_codec",
  "bad_hello",
  "limit_exceeded",
  "message_too_large",
  "protocol",
]);
const CODEC_LABELS = { hevc: "H.265/HEVC", h264: "H.264" };

const $ = (id) => document.getElementById(id);
const ui = {
  start: $("start"),
  stop: $("stop"),
  message: $("message"),
  video: $("video"),
  overlay: $("overlay"),
  state: $("state"),
  fps: $("fps"),
  kbps: $("kbps"),
  latency: $("latency"),
  codec: $("codec"),
  codecReason: $("codec-reason"),
};

const settings = readSettings(new URLSearchParams(location.search));

// Live figures, also read by tests through the DevTools protocol.
const stats = {
  state: "idle",
  codec: null,
  codecString: null,
  codecReason: "",
  width: 0,
  height: 0,
  targetKbps: 0,
  framesCaptured: 0,
  framesSent: 0,
  framesSkipped: 0,
  keyframesSent: 0,
  keyframeRequests: 0,
  bytesSent: 0,
  results: 0,
  resultsWithDetections: 0,
  dropped: 0,
  dropReasons: {},
  labels: {},
  boxesDrawn: 0,
  fps: 0,
  sendFps: 0,
  kbps: 0,
  latencyP50: null,
  latencyP95: null,
  bufferedAmount: 0,
  backlogMs: 0,
  bitrateChanges: 0,
  connections: 0,
  reconnects: 0,
  message: "",
  errors: [],
};
window.shelfStats = stats;

/** An error whose message is meant for the person in front of the page. */
class UserError extends Error {}

function readSettings(params) {
  const number = (name, fallback, min, max) => {
    const value = Number(params.get(name));
    return Number.isFinite(value) && value > 0 ? Math.min(max, Math.max(min, value)) : fallback;
  };
  const codec = params.get("codec");
  return {
    autostart: params.get("autostart") === "1",
    token: params.get("token") || null,
    codec: codec === "hevc" || codec === "h264" ? codec : null,
    fps: number("fps", 15, 1, 60),
    size: Math.round(number("size", 640, 64, 3840)),
    bitrateKbps: number("bitrate", 0, 50, 50000) || null,
    facing: params.get("facing") === "user" ? "user" : "environment",
  };
}

// ------------------------------------------------------------------------- messages

function showMessage(text, kind = "info") {
  stats.message = text;
  ui.message.textContent = text;
  ui.message.className = kind;
  ui.message.hidden = !text;
  if (kind === "error" && text) {
    stats.errors.push(text);
    if (stats.errors.length > 20) stats.errors.shift();
  }
}

function setState(state) {
  stats.state = state;
  ui.state.textContent = state;
}

function checkBrowser() {
  if (!window.isSecureContext || !navigator.mediaDevices?.getUserMedia) {
    throw new UserError(
      "The camera needs a secure page: open https://SERVER:PORT/ (start the server with " +
        "--certfile/--keyfile) or use http://localhost on the server itself.",
    );
  }
  if (typeof VideoEncoder === "undefined" || typeof VideoFrame === "undefined") {
    throw new UserError(
      "This browser cannot encode video (no WebCodecs VideoEncoder). Use a recent Chrome, " +
        "Edge, Safari (16.4+) or Firefox (130+).",
    );
  }
}

function cameraError(error) {
  switch (error?.name) {
    case "NotAllowedError":
    case "SecurityError":
      return new UserError(
        "Camera access was denied. Allow the camera for this site (address bar → site " +
          "settings), then tap Start again.",
      );
    case "NotFoundError":
    case "OverconstrainedError":
      return new UserError("No camera was found on this device.");
    case "NotReadableError":
    case "AbortError":
      return new UserError("The camera could not be started: is another app using it?");
    default:
      return new UserError(`The camera could not be opened: ${error?.message ?? error}`);
  }
}

// --------------------------------------------------------------------- camera, codec

async function openCamera() {
  const constraints = {
    audio: false,
    video: {
      facingMode: { ideal: settings.facing },
      width: { ideal: settings.size },
      height: { ideal: Math.round((settings.size * 3) / 4) },
      frameRate: { ideal: settings.fps },
    },
  };
  try {
    return await navigator.mediaDevices.getUserMedia(constraints);
  } catch (error) {
    throw cameraError(error);
  }
}

async function showCamera(stream) {
  const video = ui.video;
  video.srcObject = stream;
  await video.play();
  if (!video.videoWidth) {
    await new Promise((resolve) =>
      video.addEventListener("loadedmetadata", resolve, { once: true }),
    );
  }
}

/** The streamed frame size: the camera's picture scaled so its long side fits, both even. */
function streamSize(videoWidth, videoHeight) {
  const scale = Math.min(1, settings.size / Math.max(videoWidth, videoHeight));
  const even = (value) => Math.max(16, 2 * Math.floor((value * scale) / 2));
  return { width: even(videoWidth), height: even(videoHeight) };
}

function startBitrateKbps(codec, { width, height }) {
  if (settings.bitrateKbps) return settings.bitrateKbps;
  // Bits per pixel that look fine for detection on a hand-held camera; HEVC needs less.
  const bitsPerPixel = codec === "hevc" ? 0.07 : 0.1;
  return Math.min(
    8000,
    Math.max(150, Math.round((width * height * settings.fps * bitsPerPixel) / 1000)),
  );
}

/** The codec string: the lowest level that holds this size and rate. */
function codecString(codec, width, height, fps) {
  if (codec === "hevc") {
    const samples = width * height;
    const levels = [
      [552960, 16588800, 90],
      [983040, 33177600, 93],
      [2228224, 66846720, 120],
      [2228224, 133693440, 123],
      [8912896, 267386880, 150],
    ];
    const found = levels.find(([picture, rate]) => samples <= picture && samples * fps <= rate);
    return `hvc1.1.6.L${found ? found[2] : 153}.B0`; // Main profile
  }
  const macroblocks = Math.ceil(width / 16) * Math.ceil(height / 16);
  const levels = [
    [1620, 40500, 0x1e],
    [3600, 108000, 0x1f],
    [8192, 245760, 0x28],
    [8704, 522240, 0x2a],
  ];
  const found = levels.find(([frame, rate]) => macroblocks <= frame && macroblocks * fps <= rate);
  const level = found ? found[2] : 0x33;
  // Constrained Baseline: no B-frames, what every H.264 encoder and decoder supports.
  return `avc1.42E0${level.toString(16).toUpperCase().padStart(2, "0")}`;
}

function encoderConfig(codec, { width, height }, bitrateKbps) {
  const config = {
    codec: codecString(codec, width, height, settings.fps),
    width,
    height,
    framerate: settings.fps,
    bitrate: Math.round(bitrateKbps * 1000),
    latencyMode: "realtime", // one access unit out per frame in, no lookahead
    hardwareAcceleration: "no-preference",
  };
  // Annex-B (start codes, parameter sets in keyframes): what the server's decoder reads.
  if (codec === "hevc") config.hevc = { format: "annexb" };
  else config.avc = { format: "annexb" };
  return config;
}

/**
 * HEVC where the browser's VideoEncoder supports it (with Annex-B output), else H.264.
 * Returns { codec, reason }; throws a UserError when neither works.
 */
async function chooseCodec(size, exclude = []) {
  const wanted = settings.codec ? [settings.codec] : ["hevc", "h264"];
  const candidates = wanted.filter((codec) => !exclude.includes(codec));
  const problems = [...exclude.map((codec) => `${CODEC_LABELS[codec]} refused by the server`)];
  for (const codec of candidates) {
    const config = encoderConfig(codec, size, startBitrateKbps(codec, size));
    const label = CODEC_LABELS[codec];
    let support;
    try {
      support = await VideoEncoder.isConfigSupported(config);
    } catch (error) {
      problems.push(`${label}: ${error.message}`);
      continue;
    }
    // A browser that does not know the Annex-B option leaves it out of the echoed config
    // (and would send length-prefixed NAL units the server cannot read).
    const echoed = codec === "hevc" ? support.config?.hevc : support.config?.avc;
    if (!support.supported) {
      problems.push(`${label} encoding is not supported by this browser`);
    } else if (echoed?.format !== "annexb") {
      problems.push(`${label}: this browser cannot output Annex-B`);
    } else {
      const why = settings.codec
        ? "chosen in the page address (?codec=)"
        : "supported by this browser";
      const reason = problems.length ? `${problems.join("; ")}, so ${label}` : `${label}: ${why}`;
      return { codec, codecString: config.codec, reason };
    }
  }
  throw new UserError(
    `This browser cannot encode ${candidates.map((c) => CODEC_LABELS[c]).join(" or ")} at ` +
      `${size.width}x${size.height}: ${problems.join("; ")}.`,
  );
}

// ------------------------------------------------------------------------- the client

class CameraClient {
  constructor() {
    this.camera = null; // MediaStream
    this.size = null; // { width, height } streamed
    this.codec = null; // { codec, codecString, reason }
    this.ws = null;
    this.ready = null; // the server's Ready
    this.encoder = null; // one VideoEncoder per connection: each stream starts afresh
    this.streaming = false; // Ready received, frames may be encoded and sent
    this.stopping = false; // Stop pressed: no reconnects
    this.fatal = null; // a server error a reconnect cannot fix
    this.restart = false; // closing on purpose to start a new stream (camera rotated)
    this.byeSent = false; // no Video may follow a Bye on this connection
    this.serverError = null;
    this.excludedCodecs = [];
    this.reconnectAttempt = 0;
    this.reconnectTimer = null;
    this.seq = 0;
    this.lastPts = -1;
    this.epochUs = null;
    this.ring = []; // recently captured frames: { timestampUs, pts, captureUs, width, height }
    this.inFlight = new Set(); // pts sent on this connection and not answered yet
    this.forceKeyframe = true;
    this.lastKeyframeAt = -Infinity;
    this.lastCaptureAt = -Infinity;
    this.captureCanvas = document.createElement("canvas");
    this.captureContext = this.captureCanvas.getContext("2d", { alpha: false });
    this.bitrateKbps = 0;
    this.maxKbps = 0;
    this.minKbps = 0;
    this.calmSince = 0;
    this.lastBitrateChange = 0;
    this.sentLog = []; // [time, bytes] of sent Video messages, for kbit/s and send FPS
    this.resultTimes = [];
    this.latencies = [];
    this.lastBoxes = null; // { detections, width, height, at }
    this.captureLoop = 0; // incremented per capture loop started
  }

  async start() {
    ui.start.disabled = true;
    this.stopping = false;
    this.fatal = null;
    this.serverError = null;
    showMessage("");
    try {
      checkBrowser();
      setState("opening camera");
      this.camera = await openCamera();
      this.camera.getVideoTracks()[0]?.addEventListener("ended", () => this.cameraEnded());
      await showCamera(this.camera);
      await this.prepareStream();
    } catch (error) {
      this.releaseCamera();
      showMessage(
        error instanceof UserError ? error.message : `Could not start: ${error}`,
        "error",
      );
      setState("idle");
      ui.start.disabled = false;
      return;
    }
    ui.start.hidden = true;
    ui.stop.hidden = false;
    this.startCaptureLoop();
    this.connect();
  }

  /** Frame size, codec and starting bitrate for the camera's current picture. */
  async prepareStream() {
    this.size = streamSize(ui.video.videoWidth, ui.video.videoHeight);
    this.codec = await chooseCodec(this.size, this.excludedCodecs);
    this.captureCanvas.width = this.size.width;
    this.captureCanvas.height = this.size.height;
    this.bitrateKbps = startBitrateKbps(this.codec.codec, this.size);
    this.maxKbps = this.bitrateKbps;
    this.minKbps = Math.max(50, this.bitrateKbps / 8);
    Object.assign(stats, {
      codec: this.codec.codec,
      codecString: this.codec.codecString,
      codecReason: this.codec.reason,
      width: this.size.width,
      height: this.size.height,
      targetKbps: this.bitrateKbps,
    });
    ui.codec.textContent = `${CODEC_LABELS[this.codec.codec]} ${this.size.width}x${this.size.height}`;
    ui.codecReason.textContent = `Codec: ${this.codec.reason}.`;
  }

  // ----------------------------------------------------------------- connection

  connect() {
    clearTimeout(this.reconnectTimer);
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const ws = new WebSocket(`${scheme}://${location.host}/`);
    ws.binaryType = "arraybuffer";
    this.ws = ws;
    this.ready = null;
    this.serverError = null;
    this.byeSent = false;
    this.inFlight.clear();
    setState("connecting");
    ws.onopen = () => {
      ws.send(
        encodeHello({
          codec: this.codec.codec,
          width: this.size.width,
          height: this.size.height,
          fps: settings.fps,
          token: settings.token,
          client: `browser ${navigator.userAgent}`,
        }),
      );
      setState("handshake");
    };
    ws.onmessage = (event) => this.onMessage(ws, event.data);
    ws.onclose = (event) => this.onClose(ws, event);
  }

  onMessage(ws, data) {
    if (ws !== this.ws) return;
    let message;
    try {
      message = decodeMessage(data, this.ready?.classNames ?? []);
    } catch (error) {
      this.serverError = `The server sent something this page does not understand: ${error.message}`;
      ws.close(1002, "protocol error");
      return;
    }
    switch (message.type) {
      case "ready":
        this.onReady(message);
        break;
      case "result":
        this.onResult(message);
        break;
      case "dropped":
        this.inFlight.delete(message.pts);
        stats.dropped += 1;
        stats.dropReasons[message.reason] = (stats.dropReasons[message.reason] ?? 0) + 1;
        break;
      case "keyframe_request":
        stats.keyframeRequests += 1;
        this.forceKeyframe = true; // the next captured frame is encoded as a keyframe
        break;
      case "error":
        this.onServerError(message);
        break;
      default: // feedback, probe_ack: this page adapts on its own send backlog instead
        break;
    }
  }

  onReady(ready) {
    this.ready = ready;
    this.reconnectAttempt = 0;
    stats.connections += 1;
    this.seq = 0;
    this.forceKeyframe = true;
    this.encoder = this.makeEncoder();
    this.streaming = true;
    setState("streaming");
    if (!this.fatal) showMessage("");
  }

  onServerError({ name, message }) {
    if (name === "unsupported_codec" && this.codec.codec === "hevc" && !settings.codec) {
      // This server does not take HEVC (serve --codecs): try again with H.264 at once.
      this.excludedCodecs.push("hevc");
      this.restart = true;
      return;
    }
    if (name === "unauthorized") {
      this.fatal = settings.token
        ? "The server did not accept the token in this page's address (?token=…)."
        : "This server requires a token: open the page as https://SERVER:PORT/?token=SECRET.";
    } else if (FATAL_ERRORS.has(name)) {
      this.fatal = `The server refused the stream (${name}): ${message}`;
    } else {
      this.serverError = `Server error (${name}): ${message}`;
    }
  }

  async onClose(ws, event) {
    if (ws !== this.ws) return;
    this.ws = null;
    this.ready = null;
    this.streaming = false;
    this.closeEncoder();
    if (this.stopping) return;
    if (this.fatal) {
      showMessage(this.fatal, "error");
      this.finish("refused");
      return;
    }
    if (this.restart) {
      this.restart = false;
      try {
        await this.prepareStream();
      } catch (error) {
        showMessage(error.message, "error");
        this.finish("idle");
        return;
      }
      this.connect();
      return;
    }
    // Lost: try again with exponential backoff (and some jitter, so that many pages
    // cut off by one server restart do not all come back in the same millisecond).
    const base =
      RECONNECT_DELAYS_MS[Math.min(this.reconnectAttempt, RECONNECT_DELAYS_MS.length - 1)];
    const delay = Math.round(base * (0.75 + Math.random() * 0.5));
    this.reconnectAttempt += 1;
    stats.reconnects += 1;
    const why = this.serverError ?? `Connection lost (${closeText(event)})`;
    showMessage(`${why}. Reconnecting in ${(delay / 1000).toFixed(1)} s…`, "error");
    setState("reconnecting");
    this.reconnectTimer = setTimeout(() => this.connect(), delay);
  }

  // -------------------------------------------------------------------- encoding

  makeEncoder() {
    const encoder = new VideoEncoder({
      output: (chunk) => this.onChunk(encoder, chunk),
      error: (error) => this.onEncoderError(encoder, error),
    });
    encoder.configure(encoderConfig(this.codec.codec, this.size, this.bitrateKbps));
    return encoder;
  }

  closeEncoder() {
    const encoder = this.encoder;
    this.encoder = null;
    if (encoder && encoder.state !== "closed") encoder.close();
  }

  onEncoderError(encoder, error) {
    if (encoder !== this.encoder) return;
    // Start a fresh stream (new encoder, keyframe first) on a new connection.
    this.serverError = `The video encoder failed: ${error.message}`;
    this.ws?.close(1000, "encoder failed");
  }

  /** An access unit is ready: send it as one Video message, stamped by its frame. */
  onChunk(encoder, chunk) {
    const ws = this.ws;
    if (encoder !== this.encoder || !ws || ws.readyState !== WebSocket.OPEN) return;
    if (!this.ready || this.byeSent) return;
    const frame = this.ring.find((entry) => entry.timestampUs === chunk.timestamp);
    if (!frame) return;
    const keyframe = chunk.type === "key";
    const message = encodeVideo({
      seq: this.seq,
      pts: frame.pts,
      captureUs: frame.captureUs,
      keyframe,
      chunk,
    });
    if (this.seq === 0 && !isAnnexB(new Uint8Array(message, 26, Math.min(5, chunk.byteLength)))) {
      this.fatal = "This browser's encoder ignored the Annex-B format; the server cannot read it.";
      ws.close(1000, "encoder output unusable");
      return;
    }
    if (message.byteLength > this.ready.maxMessageBytes) {
      this.forceKeyframe = true; // the skipped frame breaks the chain: restart it
      return;
    }
    ws.send(message);
    this.inFlight.add(frame.pts);
    this.seq += 1;
    stats.framesSent += 1;
    stats.bytesSent += message.byteLength;
    if (keyframe) stats.keyframesSent += 1;
    this.sentLog.push([performance.now(), message.byteLength]);
  }

  // --------------------------------------------------------------------- capture

  startCaptureLoop() {
    // A new loop per Start; an older one (its video gone quiet) ends on its next tick.
    const loop = (this.captureLoop += 1);
    const video = ui.video;
    // requestVideoFrameCallback fires once per new camera frame; old browsers poll.
    const schedule = () =>
      "requestVideoFrameCallback" in video
        ? video.requestVideoFrameCallback(tick)
        : setTimeout(tick, 1000 / settings.fps / 2);
    const tick = () => {
      if (!this.camera || loop !== this.captureLoop) return;
      this.captureFrame();
      schedule();
    };
    schedule();
  }

  /** Encode the picture on screen now, unless it is too early or the link is behind. */
  captureFrame() {
    const now = performance.now();
    const encoder = this.encoder;
    if (!this.streaming || !encoder || encoder.state !== "configured") return;
    if (now - this.lastCaptureAt < (1000 / settings.fps) * 0.85) return; // pace to ?fps
    // Newest frame wins: while the link is behind (see behind()) or the encoder is busy,
    // skip this frame rather than queue it; a queue would only add latency.
    if (this.behind() || encoder.encodeQueueSize > 1) {
      stats.framesSkipped += 1;
      return;
    }
    this.lastCaptureAt = now;
    const { width, height } = this.size;
    this.captureContext.drawImage(ui.video, 0, 0, width, height);
    const timestampUs = Math.round(now * 1000);
    this.epochUs ??= timestampUs;
    // pts on the 90 kHz clock of the protocol; strictly increasing across reconnects.
    const pts = Math.max(
      this.lastPts + 1,
      Math.round(((timestampUs - this.epochUs) * TIME_BASE_HZ) / 1e6),
    );
    this.lastPts = pts;
    this.ring.push({ timestampUs, pts, captureUs: timestampUs, width, height });
    if (this.ring.length > RING_SIZE) this.ring.shift();
    const keyFrame = this.forceKeyframe || now - this.lastKeyframeAt >= KEYFRAME_INTERVAL_MS;
    if (keyFrame) {
      this.forceKeyframe = false;
      this.lastKeyframeAt = now;
    }
    const frame = new VideoFrame(this.captureCanvas, { timestamp: timestampUs });
    try {
      encoder.encode(frame, { keyFrame });
    } finally {
      frame.close();
    }
    stats.framesCaptured += 1;
  }

  /**
   * Is the way to the server behind? Two signs, both from our own bookkeeping:
   * - ws.bufferedAmount: bytes ws.send() accepted but the browser has not written to
   *   the network yet, above about two frames at the target rate;
   * - frames sent but not answered (every pts gets a Result or Dropped), above one
   *   second's worth: the bytes left the browser but sit in the kernel, the network or
   *   the server's decode queue. This bounds the delay even where socket buffers are
   *   large (loopback, bloated uplinks), where bufferedAmount alone stays at zero.
   */
  behind() {
    const highWaterBytes = Math.max(32 * 1024, ((this.bitrateKbps * 1000) / 8 / settings.fps) * 2);
    return this.ws.bufferedAmount > highWaterBytes || this.inFlight.size >= settings.fps;
  }

  /**
   * Crude congestion control on our own send backlog, checked twice a second. The
   * backlog, in milliseconds, is the larger of
   *   - ws.bufferedAmount as milliseconds of video at the current rate: it only grows
   *     when the link (or the server, which stops reading while its decoder is behind)
   *     is slower than the encoder;
   *   - the frames in flight (sent, not answered yet) times the frame interval.
   * Then, like TCP's AIMD:
   *   - above 400 ms: cut the bitrate by 30 % (at most once a second);
   *   - below 150 ms for 3 s running: raise it by 15 %, back up to the starting rate
   *     (chosen per pixel as enough for detection; more would only cost bandwidth).
   * Skipping frames (captureFrame) keeps the backlog short meanwhile; a lower bitrate
   * makes the frames we do send smaller, so fewer need skipping.
   */
  adaptBitrate(now) {
    if (!this.streaming || !this.ws) return;
    const bufferedMs = (this.ws.bufferedAmount * 8) / this.bitrateKbps;
    const inFlightMs = (this.inFlight.size * 1000) / settings.fps;
    const backlogMs = Math.max(bufferedMs, inFlightMs);
    stats.backlogMs = Math.round(backlogMs);
    if (backlogMs > 400 && now - this.lastBitrateChange > 1000) {
      this.setBitrate(Math.max(this.minKbps, this.bitrateKbps * 0.7), now);
      this.calmSince = now;
    } else if (backlogMs >= 150) {
      this.calmSince = now;
    } else if (now - this.calmSince > 3000 && this.bitrateKbps < this.maxKbps) {
      this.setBitrate(Math.min(this.maxKbps, this.bitrateKbps * 1.15), now);
      this.calmSince = now;
    }
  }

  setBitrate(kbps, now) {
    if (Math.abs(kbps - this.bitrateKbps) < 1) return;
    this.bitrateKbps = Math.round(kbps);
    this.lastBitrateChange = now;
    stats.targetKbps = this.bitrateKbps;
    stats.bitrateChanges += 1;
    if (this.encoder?.state === "configured") {
      // Reconfiguring an active encoder is allowed: a browser either just retargets the
      // rate or starts a new encoder, whose first output is a keyframe anyway.
      this.encoder.configure(encoderConfig(this.codec.codec, this.size, this.bitrateKbps));
    }
  }

  /** The camera's picture changed shape (a phone turned): stream the new size afresh. */
  onVideoResize() {
    if (!this.ws || !this.size) return;
    const size = streamSize(ui.video.videoWidth, ui.video.videoHeight);
    if (size.width === this.size.width && size.height === this.size.height) return;
    this.restart = true;
    this.sayBye(this.ws);
  }

  // --------------------------------------------------------------------- answers

  onResult(result) {
    const now = performance.now();
    const frame = this.ring.find((entry) => entry.pts === result.pts);
    this.inFlight.delete(result.pts);
    // Latency on the page's own clock: frame captured → its result arrived.
    const latencyMs = now - result.captureUs / 1000;
    stats.results += 1;
    this.resultTimes.push(now);
    this.latencies.push(latencyMs);
    if (this.latencies.length > LATENCY_SAMPLES) this.latencies.shift();
    if (result.detections.length) stats.resultsWithDetections += 1;
    for (const detection of result.detections) {
      stats.labels[detection.label] = (stats.labels[detection.label] ?? 0) + 1;
    }
    // Boxes are in the streamed frame's pixels: remember that frame's size to scale them.
    this.lastBoxes = {
      detections: result.detections,
      width: frame?.width ?? this.size.width,
      height: frame?.height ?? this.size.height,
      at: now,
    };
    this.drawBoxes(now);
  }

  /** Draw the newest result's boxes over the video, scaled to its displayed size. */
  drawBoxes(now) {
    const canvas = ui.overlay;
    const rect = canvas.getBoundingClientRect();
    const dpr = window.devicePixelRatio || 1;
    const width = Math.round(rect.width * dpr);
    const height = Math.round(rect.height * dpr);
    if (canvas.width !== width || canvas.height !== height) {
      canvas.width = width;
      canvas.height = height;
    }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.clearRect(0, 0, width, height);
    const boxes = this.lastBoxes;
    const videoWidth = ui.video.videoWidth;
    const videoHeight = ui.video.videoHeight;
    if (!boxes || now - boxes.at > BOXES_STALE_MS || !videoWidth || !rect.width) return;
    // object-fit: contain puts the picture in a centred rectangle of the element.
    const fit = Math.min(rect.width / videoWidth, rect.height / videoHeight);
    const offsetX = (rect.width - videoWidth * fit) / 2;
    const offsetY = (rect.height - videoHeight * fit) / 2;
    const scaleX = (videoWidth * fit) / boxes.width; // streamed pixels → CSS pixels
    const scaleY = (videoHeight * fit) / boxes.height;
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.lineWidth = 2;
    ctx.font = "600 13px system-ui, sans-serif";
    ctx.textBaseline = "top";
    for (const d of boxes.detections) {
      const x = offsetX + d.x1 * scaleX;
      const y = offsetY + d.y1 * scaleY;
      const w = (d.x2 - d.x1) * scaleX;
      const h = (d.y2 - d.y1) * scaleY;
      const colour = `hsl(${(d.classId * 47) % 360} 85% 55%)`;
      ctx.strokeStyle = colour;
      ctx.strokeRect(x, y, w, h);
      const text = `${d.label} ${Math.round(d.score * 100)}%`;
      const textWidth = ctx.measureText(text).width + 8;
      const textY = y >= 18 ? y - 18 : y;
      ctx.fillStyle = colour;
      ctx.fillRect(x - 1, textY, textWidth, 18);
      ctx.fillStyle = "#000";
      ctx.fillText(text, x + 3, textY + 2);
    }
    stats.boxesDrawn += boxes.detections.length;
  }

  // ---------------------------------------------------------------------- status

  updateStatus() {
    const now = performance.now();
    const since = now - WINDOW_MS;
    while (this.sentLog.length && this.sentLog[0][0] < since) this.sentLog.shift();
    while (this.resultTimes.length && this.resultTimes[0] < since) this.resultTimes.shift();
    const bytes = this.sentLog.reduce((sum, [, size]) => sum + size, 0);
    stats.kbps = Math.round((bytes * 8) / WINDOW_MS);
    stats.sendFps = round1((this.sentLog.length * 1000) / WINDOW_MS);
    stats.fps = round1((this.resultTimes.length * 1000) / WINDOW_MS);
    const sorted = [...this.latencies].sort((a, b) => a - b);
    stats.latencyP50 = sorted.length ? Math.round(percentile(sorted, 0.5)) : null;
    stats.latencyP95 = sorted.length ? Math.round(percentile(sorted, 0.95)) : null;
    stats.bufferedAmount = this.ws?.bufferedAmount ?? 0;
    ui.fps.textContent = `${stats.fps.toFixed(1)} fps`;
    ui.kbps.textContent = `${stats.kbps} kbit/s (target ${stats.targetKbps})`;
    ui.latency.textContent =
      stats.latencyP50 === null
        ? "latency –"
        : `latency p50 ${stats.latencyP50} ms · p95 ${stats.latencyP95} ms`;
    if (this.lastBoxes && now - this.lastBoxes.at > BOXES_STALE_MS) {
      this.lastBoxes = null;
      this.drawBoxes(now);
    }
    this.adaptBitrate(now);
  }

  // ------------------------------------------------------------------------ stop

  /** Send Bye: the server answers every frame in flight, then closes normally. */
  sayBye(ws) {
    if (ws.readyState === WebSocket.OPEN && this.ready) {
      this.streaming = false;
      this.byeSent = true;
      ws.send(encodeBye());
      setTimeout(() => ws.close(1000, "bye"), BYE_TIMEOUT_MS);
    } else {
      ws.close(1000, "bye");
    }
  }

  async stop() {
    this.stopping = true;
    clearTimeout(this.reconnectTimer);
    this.streaming = false;
    const ws = this.ws;
    const encoder = this.encoder;
    if (encoder?.state === "configured") {
      setState("finishing");
      // Frames already given to the encoder still come out and are sent before Bye.
      await encoder.flush().catch(() => {});
    }
    if (ws) {
      const closed = new Promise((resolve) =>
        ws.addEventListener("close", resolve, { once: true }),
      );
      this.sayBye(ws);
      await closed;
    }
    this.finish("stopped");
  }

  cameraEnded() {
    if (this.stopping || !this.camera) return;
    showMessage(
      "The camera stopped (unplugged, or taken by another app). Tap Start to try again.",
      "error",
    );
    this.stop();
  }

  /** Back to the start screen: camera off, Start enabled. */
  finish(state) {
    this.stopping = true;
    clearTimeout(this.reconnectTimer);
    this.streaming = false;
    this.closeEncoder();
    if (this.ws) this.sayBye(this.ws);
    this.releaseCamera();
    this.lastBoxes = null;
    this.drawBoxes(performance.now());
    setState(state);
    ui.start.hidden = false;
    ui.start.disabled = false;
    ui.stop.hidden = true;
  }

  releaseCamera() {
    for (const track of this.camera?.getTracks() ?? []) track.stop();
    this.camera = null;
    ui.video.srcObject = null;
  }
}

function percentile(sorted, q) {
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
}

function round1(value) {
  return Math.round(value * 10) / 10;
}

function closeText(event) {
  if (event.code === 1006) return "the network or the server went away";
  return `code ${event.code}${event.reason ? `: ${event.reason}` : ""}`;
}

// --------------------------------------------------------------------------- wiring

const client = new CameraClient();
ui.start.addEventListener("click", () => client.start());
ui.stop.addEventListener("click", () => client.stop());
ui.video.addEventListener("resize", () => client.onVideoResize());
window.addEventListener("resize", () => client.drawBoxes(performance.now()));
// Leaving the page: tell the server, so it does not wait for a timeout.
window.addEventListener("pagehide", () => {
  if (client.ws?.readyState === WebSocket.OPEN && client.ready) client.ws.send(encodeBye());
});
setInterval(() => client.updateStatus(), STATUS_INTERVAL_MS);

setState("idle");
ui.start.disabled = false;
if (settings.autostart) client.start();
else showMessage("Tap Start to stream this camera to the server and see what it detects.");
