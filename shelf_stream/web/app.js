// shelf-stream browser client.
//
// camera (getUserMedia) ─▶ <video> ─▶ capture canvas at the streamed size ─▶ VideoFrame
//   ─▶ WebCodecs VideoEncoder (HEVC if the browser can, else H.264; Annex-B, realtime)
//   ─▶ one Video message per access unit over a WebSocket to this page's own server
//   ◀─ Result / Dropped / KeyframeRequest / Feedback / ProbeAck / Error
//   ─▶ boxes on the live view (moved to where the objects are now: tracker.js) or on the
//      very frame they belong to (synchronised view: framering.js); figures below.
//
// Per connection: Hello → Ready → a short link probe (probe.js) picks the start → frames,
// their rate driven by the server's Feedback through the same delay-based controller as
// `shelf-stream send` (controller.js, a port of client/controller.py).
//
// It speaks exactly the protocol `shelf-stream send` speaks (protocol.js), so the server
// treats it like any other stream. Settings come from the page address (see README):
//   ?autostart=1 ?token=SECRET ?codec=h264|hevc ?fps=15 ?size=640 ?bitrate=KBPS
//   ?max_bitrate=KBPS ?facing=user ?view=sync
//
// Everything a test or a curious user may want is mirrored in `window.shelfStats`;
// `window.shelfDebug.onDraw/onCapture`, when a test sets them, see each drawing and capture.

import { BitrateFit, FrameThinner, Retarget } from "./adaptation.js";
import { RateController, rateControlConfig } from "./controller.js";
import { FrameRing } from "./framering.js";
import { defaultLadder, rungName } from "./ladder.js";
import { BandwidthProbe, PROBE_CONFIG, chooseStart } from "./probe.js";
import {
  TIME_BASE_HZ,
  decodeMessage,
  encodeBye,
  encodeHello,
  encodeProbe,
  encodeVideo,
  isAnnexB,
} from "./protocol.js";
import { BoxTracker, MotionHistory } from "./tracker.js";
import { drawBoxes, drawPicture, fitRect, prepareCanvas, toScreen } from "./view.js";

// Periodic keyframe, as `shelf-stream send` (10 s): the server asks for one whenever it
// needs it, and each is a burst of several frames' bytes that the rate controller must
// look past (at 600 kbit/s a 640x480 keyframe holds the link for a third of a second).
const KEYFRAME_INTERVAL_MS = 10000;
const SENT_RING_SIZE = 90; // captured frames remembered to stamp their chunks (~6 s at 15 fps)
const WINDOW_MS = 2000; // results/s and kbit/s are averaged over this window
const LATENCY_SAMPLES = 200; // p50/p95 over the last this many results
const TICK_MS = 100; // rate controller timer and watchdogs
const STATUS_INTERVAL_MS = 500;
// From `new WebSocket` to Ready. A server answers a Hello in milliseconds; the rest is
// TCP, TLS and the upgrade, which take a few seconds at worst on a slow cellular link.
const HANDSHAKE_TIMEOUT_MS = 8000;
// Frames sent and none answered for this long: the socket is half-open (a Wi-Fi to
// cellular handover) or the server is stuck. Every pts gets an answer within the server's
// max frame age (0.5 s) plus the round trip, so 3 s is far beyond a slow link.
const ANSWER_TIMEOUT_MS = 3000;
const MAX_IN_FLIGHT_S = 2; // more than this many seconds of frames unanswered: skip frames
const SYNC_RING_S = 2; // the synchronised view keeps this much video (at most 30 frames)
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
  mode: $("mode"),
  message: $("message"),
  stage: $("stage"),
  video: $("video"),
  view: $("view"),
  overlay: $("overlay"),
  viewNote: $("view-note"),
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
  states: [],
  view: settings.view,
  codec: null,
  codecString: null,
  codecReason: "",
  width: 0,
  height: 0,
  fpsTarget: 0,
  targetKbps: 0,
  encoderKbps: 0,
  rung: "",
  probe: null,
  controller: null,
  framesCaptured: 0,
  framesSent: 0,
  framesSkipped: 0,
  framesThinned: 0,
  keyframesSent: 0,
  keyframesUnrequested: 0, // key chunks the page did not ask for (e.g. after configure())
  keyframeRequests: 0,
  bytesSent: 0,
  results: 0,
  resultsWithDetections: 0,
  dropped: 0,
  dropReasons: {},
  labels: {},
  boxesDrawn: 0,
  fps: 0, // results per second
  sendFps: 0,
  kbps: 0,
  latencyP50: null,
  latencyP95: null,
  bufferedAmount: 0,
  inFlight: 0,
  bitrateChanges: 0,
  rungChanges: 0,
  connections: 0,
  reconnects: 0,
  everConnected: false,
  videoFramesOpen: 0,
  bitmapsOpen: 0,
  ringFrames: 0,
  tracks: 0,
  motion: "none",
  wakeLock: "off",
  message: "",
  errors: [],
};
window.shelfStats = stats;
// Test hooks (null in normal use): called with each drawing and each captured frame.
window.shelfDebug = { onDraw: null, onCapture: null };

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
    maxBitrateKbps: number("max_bitrate", 0, 50, 50000) || null,
    facing: params.get("facing") === "user" ? "user" : "environment",
    view: params.get("view") === "sync" ? "sync" : "live",
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
  if (stats.state !== state) {
    stats.states.push(state); // the way here, for tests and bug reports (bounded)
    if (stats.states.length > 30) stats.states.shift();
  }
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
    const android = /Android/i.test(navigator.userAgent);
    const ios = /iPhone|iPad|iPod/i.test(navigator.userAgent);
    // Firefox for Android has no WebCodecs at all (desktop Firefox has since 130).
    const advice = android
      ? "On Android use Chrome, Edge or Samsung Internet."
      : ios
        ? "On iPhone and iPad update iOS to 16.4 or later (Safari or any browser)."
        : "Use a recent Chrome, Edge, Safari (16.4+) or Firefox (130+).";
    throw new UserError(
      `This browser cannot encode video (it has no WebCodecs VideoEncoder). ${advice}`,
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

/** Why a connection that never reached Ready failed, in words a user can act on. */
function neverConnectedText(opened, event) {
  const host = location.host;
  if (opened) {
    return `The server at ${host} accepted the connection but did not answer (${closeText(event)})`;
  }
  if (location.protocol === "https:") {
    // Browsers do not say why a wss:// connection failed; with a page served over
    // https by the same server, an untrusted certificate is by far the usual reason
    // (iOS Safari does not extend an exception accepted for the page to its WebSocket).
    return (
      `The secure connection to ${host} failed before it opened. Likely cause: this ` +
      "device does not trust the server's certificate. Fix: install the certificate (or " +
      "mkcert's root CA) on this device and trust it (iPhone: Settings → General → About → " +
      "Certificate Trust Settings), or give the server a certificate from a public CA; " +
      "then reload"
    );
  }
  return `Could not reach the server at ${host} (is it running, and is the address right?)`;
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

function encoderConfig(codec, { width, height }, bitrateKbps, fps) {
  const config = {
    codec: codecString(codec, width, height, fps),
    width,
    height,
    framerate: fps,
    bitrate: Math.round(bitrateKbps * 1000),
    latencyMode: "realtime", // one access unit out per frame in, no lookahead
    // Constant bitrate: frame sizes the link can take one after another. With "variable",
    // Chromium's H.264 encoder sent bursts at twice the target (measured in test_rate.py's
    // figures), which the delay-based controller reads as a queue building.
    bitrateMode: "constant",
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
    const config = encoderConfig(codec, size, 500, settings.fps);
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
    this.cameraSize = null; // { width, height } streamed at the top rung
    this.size = null; // { width, height } streamed now (the rung's)
    this.fps = settings.fps; // frames per second now (the rung's)
    this.codec = null; // { codec, codecString, reason }
    this.ladder = [];
    this.ws = null;
    this.wsOpened = false; // this connection's socket opened (Hello sent)
    this.ready = null; // the server's Ready
    this.encoder = null; // one VideoEncoder per connection: each stream starts afresh
    this.streaming = false; // the start is chosen: frames may be encoded and sent
    this.stopping = false; // Stop pressed: no reconnects
    this.paused = false; // the page is hidden: no stream until it is shown again
    this.cameraMuted = false; // the system paused the camera (track muted)
    this.fatal = null; // a server error a reconnect cannot fix
    this.restart = false; // closing on purpose to start a new stream (camera rotated)
    this.byeSent = false; // no Video may follow a Bye on this connection
    this.serverError = null;
    this.excludedCodecs = [];
    this.reconnectAttempt = 0;
    this.reconnectTimer = null;
    this.handshakeTimer = null;
    this.everConnected = false; // any Ready since Start: "lost" rather than "never connected"
    this.seq = 0;
    this.lastPts = -1;
    this.epochUs = null;
    this.sentFrames = []; // recently captured frames: { timestampUs, pts, captureUs, width, height, keyFrame }
    this.inFlight = new Map(); // pts → sent at (ms), on this connection, not answered yet
    this.lastAnswerAt = 0;
    this.forceKeyframe = true;
    this.lastKeyframeAt = -Infinity;
    this.lastCaptureAt = -Infinity;
    this.captureCanvas = document.createElement("canvas");
    this.captureContext = this.captureCanvas.getContext("2d", { alpha: false });
    this.probe = null;
    this.probeTimer = null;
    this.controller = null;
    this.retarget = null;
    this.thinner = new FrameThinner();
    this.fit = new BitrateFit(); // lives across connections: it learns the encoder, not the link
    this.encoderTarget = null; // { bitrateKbps, fps, width, height } the encoder runs at
    this.encoderKbps = 0; // what it is configured with for that target (see BitrateFit)
    this.sentLog = []; // [time, bytes] of sent Video messages, for kbit/s and send FPS
    this.resultTimes = [];
    this.latencies = [];
    this.tracker = new BoxTracker();
    this.motion = new MotionHistory({ facing: settings.facing });
    this.ring = new FrameRing(Math.min(30, Math.ceil(settings.fps * SYNC_RING_S)));
    this.shown = null; // the synchronised view's frame on screen: { pts, bitmap, detections, ... }
    this.newest = null; // newest result: { detections, pts, width, height } (raw boxes)
    this.wakeLock = null;
    this.motionListening = false; // one devicemotion listener for the page's life
    this.captureLoop = 0; // incremented per capture loop started
  }

  // ----------------------------------------------------------------- lifecycle

  async start() {
    ui.start.disabled = true;
    this.stopping = false;
    this.paused = false;
    this.fatal = null;
    this.serverError = null;
    this.everConnected = false;
    showMessage("");
    // iOS asks for motion access only from a tap: ask before anything is awaited.
    const motion = requestMotionPermission();
    try {
      checkBrowser();
      setState("opening camera");
      this.camera = await openCamera();
      this.watchTrack(this.camera.getVideoTracks()[0]);
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
    this.listenToMotion(await motion);
    ui.start.hidden = true;
    ui.stop.hidden = false;
    this.startCaptureLoop();
    this.holdWakeLock();
    this.connect();
  }

  watchTrack(track) {
    if (!track) return;
    track.addEventListener("ended", () => this.cameraEnded());
    // The system took the camera away for a while (a call, another app, the lock screen).
    track.addEventListener("mute", () => {
      this.cameraMuted = true;
      if (!this.stopping && !this.paused) setState("camera paused by the system");
    });
    track.addEventListener("unmute", () => {
      this.cameraMuted = false;
      this.forceKeyframe = true; // the picture jumped: start the chain afresh
      if (!this.stopping && !this.paused) setState(this.streamingState());
    });
  }

  listenToMotion(allowed) {
    if (!allowed || this.motionListening) return;
    this.motionListening = true;
    window.addEventListener("devicemotion", (event) => {
      if (!event.rotationRate) return;
      const angle = screen.orientation?.angle ?? window.orientation ?? 0;
      this.motion.add(event.rotationRate, event.timeStamp || performance.now(), angle);
      stats.motion = this.motion.active ? "gyroscope" : "none";
    });
  }

  /** Keep the screen on while streaming (a scan takes longer than the lock timeout). */
  async holdWakeLock() {
    if (!("wakeLock" in navigator)) {
      stats.wakeLock = "unsupported (the screen may lock; keep touching it)";
      return;
    }
    if (this.wakeLock || this.stopping || document.visibilityState !== "visible") return;
    try {
      this.wakeLock = await navigator.wakeLock.request("screen");
      stats.wakeLock = "on";
      // The browser releases it when the page is hidden; onVisible takes it again.
      this.wakeLock.addEventListener("release", () => {
        this.wakeLock = null;
        stats.wakeLock = "released";
      });
    } catch (error) {
      stats.wakeLock = `refused (${error.name}): the screen may lock`;
    }
  }

  releaseWakeLock() {
    const lock = this.wakeLock;
    this.wakeLock = null;
    lock?.release().catch(() => {});
    stats.wakeLock = "off";
  }

  /** Hidden (another app, the lock screen): end the stream, keep the camera. */
  onHidden() {
    if (!this.camera || this.stopping || this.paused) return;
    this.paused = true;
    clearTimeout(this.reconnectTimer);
    this.endStream();
    setState("paused (page hidden)");
  }

  /** Shown again: the video may have been paused by the system; start a fresh stream. */
  onVisible() {
    if (!this.camera || this.stopping || !this.paused) return;
    this.paused = false;
    ui.video.play().catch(() => {});
    this.holdWakeLock();
    this.reconnectAttempt = 0;
    this.connect();
  }

  /** Frame size and codec for the camera's current picture. */
  async prepareStream() {
    this.cameraSize = streamSize(ui.video.videoWidth, ui.video.videoHeight);
    this.codec = await chooseCodec(this.cameraSize, this.excludedCodecs);
    this.ladder = defaultLadder(this.cameraSize.width, this.cameraSize.height, settings.fps);
    this.setRung(this.ladder[0]);
    Object.assign(stats, {
      codec: this.codec.codec,
      codecString: this.codec.codecString,
      codecReason: this.codec.reason,
    });
    ui.codecReason.textContent = `Codec: ${this.codec.reason}.`;
  }

  setRung({ width, height, fps }) {
    this.size = { width, height };
    this.fps = fps;
    this.captureCanvas.width = width;
    this.captureCanvas.height = height;
    this.motion.setFrame(width, height);
    Object.assign(stats, { width, height, fpsTarget: fps });
    ui.codec.textContent = `${CODEC_LABELS[this.codec.codec]} ${width}x${height}`;
  }

  // ----------------------------------------------------------------- connection

  connect() {
    clearTimeout(this.reconnectTimer);
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const ws = new WebSocket(`${scheme}://${location.host}/`);
    ws.binaryType = "arraybuffer";
    this.ws = ws;
    this.wsOpened = false;
    this.ready = null;
    this.serverError = null;
    this.byeSent = false;
    this.inFlight.clear();
    setState(this.everConnected ? "reconnecting" : "connecting");
    clearTimeout(this.handshakeTimer);
    this.handshakeTimer = setTimeout(() => {
      const what = this.wsOpened ? "answer the handshake" : "accept the connection";
      this.abandon(ws, `The server did not ${what} within ${HANDSHAKE_TIMEOUT_MS / 1000} s`);
    }, HANDSHAKE_TIMEOUT_MS);
    ws.onopen = () => {
      this.wsOpened = true;
      ws.send(
        encodeHello({
          codec: this.codec.codec,
          width: this.cameraSize.width,
          height: this.cameraSize.height,
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

  /**
   * Give up on a connection that went quiet: a half-open socket never completes a
   * closing handshake, so do not wait for its close event; treat it as lost now.
   */
  abandon(ws, reason) {
    if (ws !== this.ws) return;
    ws.onmessage = ws.onclose = ws.onopen = null;
    ws.close(1000, "unresponsive");
    this.serverError = reason;
    this.onClose(ws, { code: 1006, reason: "" });
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
    const now = performance.now();
    switch (message.type) {
      case "ready":
        this.onReady(message, now);
        break;
      case "result":
        this.onResult(message, now);
        break;
      case "dropped":
        this.onDropped(message, now);
        break;
      case "keyframe_request":
        stats.keyframeRequests += 1;
        this.forceKeyframe = true; // the next captured frame is encoded as a keyframe
        break;
      case "feedback":
        this.controller?.onFeedback(message.arrivals, now / 1000);
        this.offerTarget(now);
        break;
      case "probe_ack":
        this.probe?.onAck(message, now / 1000);
        this.sendProbes();
        break;
      case "error":
        this.onServerError(message);
        break;
    }
  }

  onReady(ready, now) {
    clearTimeout(this.handshakeTimer);
    this.ready = ready;
    this.reconnectAttempt = 0;
    this.everConnected = stats.everConnected = true;
    stats.connections += 1;
    this.seq = 0;
    this.forceKeyframe = true;
    this.lastAnswerAt = now;
    if (!this.fatal) showMessage("");
    this.startProbe(now);
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
    clearTimeout(this.handshakeTimer);
    this.ws = null;
    this.endConnection();
    if (this.stopping || this.paused) return;
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
    this.scheduleReconnect(event);
  }

  /**
   * Lost: try again with exponential backoff (and some jitter, so that many pages cut
   * off by one server restart do not all come back in the same millisecond). Before the
   * first Ready the state and the message say "not connected yet", never "lost".
   */
  scheduleReconnect(event) {
    const base =
      RECONNECT_DELAYS_MS[Math.min(this.reconnectAttempt, RECONNECT_DELAYS_MS.length - 1)];
    const delay = Math.round(base * (0.75 + Math.random() * 0.5));
    this.reconnectAttempt += 1;
    stats.reconnects += 1;
    const retry = `Trying again in ${(delay / 1000).toFixed(1)} s…`;
    if (!this.everConnected) {
      const why = this.serverError ?? neverConnectedText(this.wsOpened, event);
      showMessage(`${why}. ${retry}`, "error");
      setState("cannot connect");
    } else {
      const why = this.serverError ?? `Connection lost (${closeText(event)})`;
      showMessage(`${why}. Reconnecting in ${(delay / 1000).toFixed(1)} s…`, "error");
      setState("reconnecting");
    }
    this.reconnectTimer = setTimeout(() => this.connect(), delay);
  }

  /** Per-connection state goes with the connection; the camera and the codec stay. */
  endConnection() {
    this.ready = null;
    this.streaming = false;
    this.closeEncoder();
    this.probe = null;
    clearTimeout(this.probeTimer);
    this.controller = null;
    this.inFlight.clear();
    this.ring.clear();
    this.releaseShown();
  }

  // --------------------------------------------------------------------- probe, start

  /** Before any video: measure the link, as `shelf-stream send` does, to pick the start. */
  startProbe(now) {
    setState("measuring the link");
    this.probe = new BandwidthProbe(PROBE_CONFIG, now / 1000);
    this.sendProbes();
  }

  sendProbes() {
    const probe = this.probe;
    const ws = this.ws;
    if (!probe || !ws) return;
    for (const [probeId, padding] of probe.nextProbes()) {
      ws.send(encodeProbe({ probeId, sendUs: Math.round(performance.now() * 1000), padding }));
    }
    clearTimeout(this.probeTimer);
    if (probe.done) {
      this.probe = null;
      this.beginStreaming(probe.result());
      return;
    }
    const due = probe.getTimer() * 1000 - performance.now();
    this.probeTimer = setTimeout(
      () => {
        if (this.probe !== probe) return;
        probe.handleTimer(performance.now() / 1000);
        this.sendProbes();
      },
      Math.max(0, due),
    );
  }

  beginStreaming(probeResult) {
    const now = performance.now();
    const top = this.ladder[0];
    const maxKbps = settings.maxBitrateKbps ?? top.maxKbps;
    let start = chooseStart(probeResult, {
      ladder: this.ladder,
      maxBitrateKbps: maxKbps,
      fps: top.fps,
      width: top.width,
      height: top.height,
    });
    if (settings.bitrateKbps) {
      // An explicit ?bitrate= wins over the probe (as send --bitrate does).
      start = { ...top, bitrateKbps: settings.bitrateKbps, reason: "?bitrate= in the address" };
    }
    stats.probe = { ...probeResult, start };
    const config = rateControlConfig({
      maxBitrateKbps: Math.max(maxKbps, 50),
      rttMs: probeResult.rttMs ?? 100,
    });
    this.controller = new RateController(config, { start, now: now / 1000, ladder: this.ladder });
    const target = this.controller.target();
    this.retarget = new Retarget(target, now / 1000);
    this.setRung(target);
    this.encoderTarget = target;
    this.encoderKbps = this.fit.encoderKbps(target.bitrateKbps);
    this.encoder = this.makeEncoder(target);
    this.streaming = true;
    this.lastAnswerAt = now;
    this.publishTarget(target);
    setState("waiting for the first result");
  }

  // ----------------------------------------------------------------- rate control

  /** The controller's newest target: reconfigure only when Retarget says it is worth it. */
  offerTarget(now) {
    const controller = this.controller;
    if (!controller || !this.streaming) return;
    const target = controller.target();
    stats.controller = controller.snapshot();
    if (this.retarget.offer(target, now / 1000)) this.applyTarget(target);
  }

  applyTarget(target) {
    const rungChanged =
      target.width !== this.size.width ||
      target.height !== this.size.height ||
      target.fps !== this.fps;
    if (rungChanged) {
      // Tracks are in the old size's pixels, and the next frames' boxes in the new one's.
      if (target.width !== this.size.width) this.tracker.clear();
      this.setRung(target);
      this.forceKeyframe = true;
      stats.rungChanges += 1;
    }
    this.encoderTarget = target;
    this.encoderKbps = this.fit.encoderKbps(target.bitrateKbps);
    stats.bitrateChanges += 1;
    this.publishTarget(target);
    if (this.encoder?.state === "configured") {
      // Same codec and size: Chromium and Safari (since late 2023) change the rate in
      // place; Retarget keeps these calls rare either way (see adaptation.js).
      this.encoder.configure(
        encoderConfig(this.codec.codec, this.size, this.encoderKbps, target.fps),
      );
    }
  }

  publishTarget(target) {
    stats.targetKbps = Math.round(target.bitrateKbps);
    stats.encoderKbps = this.encoderKbps;
    stats.rung = rungName(target);
  }

  tick() {
    const now = performance.now();
    const controller = this.controller;
    if (controller && now / 1000 >= controller.getTimer()) {
      controller.handleTimer(now / 1000);
      this.offerTarget(now);
    }
    this.checkAnswers(now);
  }

  /** Frames out and no answer for ANSWER_TIMEOUT_MS: the connection is dead. Reconnect. */
  checkAnswers(now) {
    const ws = this.ws;
    if (!ws || !this.streaming || !this.inFlight.size) return;
    const oldestSent = this.inFlight.values().next().value;
    const quietSince = Math.max(this.lastAnswerAt, oldestSent);
    if (now - quietSince >= ANSWER_TIMEOUT_MS) {
      this.abandon(
        ws,
        `No answer from the server for ${ANSWER_TIMEOUT_MS / 1000} s (${this.inFlight.size} ` +
          "frames waiting): the connection is dead or the server is stuck",
      );
    }
  }

  // -------------------------------------------------------------------- encoding

  makeEncoder(target) {
    const encoder = new VideoEncoder({
      output: (chunk) => this.onChunk(encoder, chunk),
      error: (error) => this.onEncoderError(encoder, error),
    });
    encoder.configure(encoderConfig(this.codec.codec, this.size, this.encoderKbps, target.fps));
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
    const frame = this.sentFrames.find((entry) => entry.timestampUs === chunk.timestamp);
    if (!frame) return;
    const keyframe = chunk.type === "key";
    if (keyframe && !frame.keyFrame) stats.keyframesUnrequested += 1;
    this.fit.onEncoded(chunk.byteLength, this.encoderKbps, this.fps, performance.now() / 1000);
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
      this.ring.discard(frame.pts);
      return;
    }
    const now = performance.now();
    ws.send(message);
    this.controller?.onSent(this.seq, message.byteLength, now / 1000, keyframe);
    this.inFlight.set(frame.pts, now);
    this.seq += 1;
    stats.framesSent += 1;
    stats.bytesSent += message.byteLength;
    if (keyframe) stats.keyframesSent += 1;
    this.sentLog.push([now, message.byteLength]);
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
      const now = performance.now();
      this.captureFrame(now);
      if (stats.view === "live") this.drawLive(now);
      schedule();
    };
    schedule();
  }

  /** Encode the picture on screen now, unless it is too early or the link is behind. */
  captureFrame(now) {
    const encoder = this.encoder;
    if (!this.streaming || !encoder || encoder.state !== "configured" || this.cameraMuted) return;
    if (now - this.lastCaptureAt < (1000 / this.fps) * 0.85) return; // pace to the rung's fps
    // Newest frame wins: while the link is behind or the encoder is busy, skip this frame
    // rather than queue it; a queue would only add latency.
    if (this.behind() || encoder.encodeQueueSize > 1) {
      stats.framesSkipped += 1;
      return;
    }
    this.lastCaptureAt = now;
    // A lower target than the encoder's, not yet worth a reconfigure: fewer frames.
    if (!this.thinner.admit(this.retarget.frameShare)) {
      stats.framesThinned += 1;
      return;
    }
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
    const keyFrame = this.forceKeyframe || now - this.lastKeyframeAt >= KEYFRAME_INTERVAL_MS;
    if (keyFrame) {
      this.forceKeyframe = false;
      this.lastKeyframeAt = now;
    }
    this.sentFrames.push({ timestampUs, pts, captureUs: timestampUs, width, height, keyFrame });
    if (this.sentFrames.length > SENT_RING_SIZE) this.sentFrames.shift();
    if (stats.view === "sync") this.ring.add(pts, this.captureCanvas);
    window.shelfDebug.onCapture?.({ pts, canvas: this.captureCanvas });
    const frame = new VideoFrame(this.captureCanvas, { timestamp: timestampUs });
    stats.videoFramesOpen += 1;
    try {
      encoder.encode(frame, { keyFrame });
    } finally {
      frame.close();
      stats.videoFramesOpen -= 1;
    }
    stats.framesCaptured += 1;
  }

  /**
   * Is the way to the server behind? Bytes ws.send() accepted but not yet written to the
   * network, above about two frames at the target rate (the link is slower than the
   * encoder right now); or more frames unanswered than MAX_IN_FLIGHT_S of video (a bound
   * on the page's state; the rate itself is the controller's business, from the delays).
   */
  behind() {
    const kbps = this.encoderTarget?.bitrateKbps ?? 500;
    const highWaterBytes = Math.max(32 * 1024, ((kbps * 1000) / 8 / this.fps) * 2);
    return (
      this.ws.bufferedAmount > highWaterBytes || this.inFlight.size >= MAX_IN_FLIGHT_S * this.fps
    );
  }

  /** The camera's picture changed shape (a phone turned): stream the new size afresh. */
  onVideoResize() {
    if (!this.ws || !this.cameraSize) return;
    const size = streamSize(ui.video.videoWidth, ui.video.videoHeight);
    if (size.width === this.cameraSize.width && size.height === this.cameraSize.height) return;
    this.restart = true;
    this.sayBye(this.ws);
  }

  // --------------------------------------------------------------------- answers

  answered(pts, now) {
    this.inFlight.delete(pts);
    this.lastAnswerAt = now;
  }

  onDropped(message, now) {
    this.answered(message.pts, now);
    this.ring.discard(message.pts);
    stats.dropped += 1;
    stats.dropReasons[message.reason] = (stats.dropReasons[message.reason] ?? 0) + 1;
  }

  onResult(result, now) {
    this.answered(result.pts, now);
    const frame = this.sentFrames.find((entry) => entry.pts === result.pts);
    // Latency on the page's own clock: frame captured → its result arrived.
    const captureMs = result.captureUs / 1000;
    const latencyMs = now - captureMs;
    stats.results += 1;
    this.resultTimes.push(now);
    this.latencies.push(latencyMs);
    if (this.latencies.length > LATENCY_SAMPLES) this.latencies.shift();
    if (result.detections.length) stats.resultsWithDetections += 1;
    for (const detection of result.detections) {
      stats.labels[detection.label] = (stats.labels[detection.label] ?? 0) + 1;
    }
    if (stats.state === "waiting for the first result") setState("streaming");
    // Boxes are in the streamed frame's pixels (the rung's size when it was captured):
    // bring them to the current size, which the tracker and the live view work in.
    const width = frame?.width ?? this.size.width;
    const height = frame?.height ?? this.size.height;
    const detections = scaleDetections(
      result.detections,
      this.size.width / width,
      this.size.height / height,
    );
    this.newest = { detections, pts: result.pts, captureMs };
    this.tracker.update(detections, captureMs, now, {
      motion: this.motion,
      pts: result.pts,
      frame: this.size,
    });
    stats.tracks = this.tracker.tracks.length;
    if (stats.view === "sync") this.showSynchronised(result, latencyMs, width, height);
  }

  // --------------------------------------------------------------------- drawing

  /** The live view: boxes moved to where their objects are in the frame on screen now. */
  drawLive(now) {
    const { ctx, width, height } = prepareCanvas(ui.overlay);
    if (!this.streaming || !this.size) return;
    const fit = fitRect(width, height, this.size.width, this.size.height);
    const mirrored = settings.facing === "user";
    const boxes = this.tracker.boxes(now, now, this.motion);
    const onScreen = boxes.map((box) => ({
      ...box,
      ...toScreen(box, fit, this.size.width, this.size.height, mirrored),
    }));
    drawBoxes(ctx, onScreen, fit);
    stats.boxesDrawn += onScreen.length;
    const hook = window.shelfDebug.onDraw;
    if (hook) {
      const raw = (this.newest?.detections ?? []).map((d) => ({
        ...d,
        pts: this.newest.pts,
        ...toScreen(d, fit, this.size.width, this.size.height, mirrored),
      }));
      hook({
        mode: "live",
        atMs: now,
        boxes: onScreen,
        raw,
        fit,
        frame: { ...this.size },
        mirrored,
        source: ui.video,
      });
    }
  }

  /** The synchronised view: the very frame of this result, with its boxes on it. */
  showSynchronised(result, latencyMs, width, height) {
    const entry = this.ring.take(result.pts);
    stats.ringFrames = this.ring.size;
    if (!entry) return; // not in the ring (evicted, or captured in the live view)
    this.releaseShown();
    this.shown = entry;
    const { ctx, width: cssWidth, height: cssHeight } = prepareCanvas(ui.view);
    const fit = fitRect(cssWidth, cssHeight, width, height);
    const mirrored = settings.facing === "user";
    drawPicture(ctx, entry.bitmap, fit, mirrored);
    const onScreen = result.detections.map((d) => ({
      ...d,
      pts: result.pts,
      ...toScreen(d, fit, width, height, mirrored),
    }));
    drawBoxes(ctx, onScreen, fit);
    stats.boxesDrawn += onScreen.length;
    ui.viewNote.textContent = `Synchronised: this frame is ${Math.round(latencyMs)} ms old; its boxes sit exactly on it.`;
    window.shelfDebug.onDraw?.({
      mode: "sync",
      atMs: performance.now(),
      pts: result.pts,
      boxes: onScreen,
      fit,
      frame: { width, height },
      mirrored,
      source: ui.view,
    });
  }

  releaseShown() {
    if (this.shown) this.ring.releaseTaken(this.shown);
    this.shown = null;
  }

  /** Switch between the live view (default) and the synchronised one. */
  setView(view) {
    stats.view = view;
    ui.stage.classList.toggle("sync", view === "sync");
    ui.mode.textContent = view === "sync" ? "View: synchronised" : "View: live";
    ui.mode.setAttribute("aria-pressed", String(view === "sync"));
    ui.viewNote.textContent = view === "sync" ? "Synchronised: waiting for a result…" : "";
    ui.viewNote.hidden = view !== "sync";
    if (view === "live") {
      this.ring.clear();
      this.releaseShown();
      prepareCanvas(ui.view);
    } else {
      prepareCanvas(ui.overlay);
    }
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
    stats.inFlight = this.inFlight.size;
    stats.bitmapsOpen = this.ring.open;
    stats.ringFrames = this.ring.size;
    ui.fps.textContent = `${stats.fps.toFixed(1)} results/s`;
    ui.kbps.textContent = `${stats.kbps} kbit/s (target ${stats.targetKbps})`;
    ui.latency.textContent =
      stats.latencyP50 === null
        ? "latency –"
        : `latency p50 ${stats.latencyP50} ms · p95 ${stats.latencyP95} ms`;
  }

  streamingState() {
    if (!this.ws) return this.everConnected ? "reconnecting" : "connecting";
    if (!this.ready) return "handshake";
    if (!this.streaming) return "measuring the link";
    return stats.results ? "streaming" : "waiting for the first result";
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

  /** Say Bye on the current connection and forget it (its answers no longer matter). */
  endStream() {
    const ws = this.ws;
    if (!ws) return;
    this.sayBye(ws);
    clearTimeout(this.handshakeTimer);
    this.ws = null;
    this.endConnection();
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
    clearTimeout(this.handshakeTimer);
    if (this.ws) this.sayBye(this.ws);
    this.ws = null;
    this.endConnection();
    this.releaseCamera();
    this.releaseWakeLock();
    this.tracker.clear();
    this.newest = null;
    prepareCanvas(ui.overlay);
    prepareCanvas(ui.view);
    stats.bitmapsOpen = this.ring.open;
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

/** Ask for motion sensor access where the browser wants a tap for it (iOS 13+). */
async function requestMotionPermission() {
  if (typeof DeviceMotionEvent === "undefined") return false;
  if (typeof DeviceMotionEvent.requestPermission !== "function") return true;
  try {
    return (await DeviceMotionEvent.requestPermission()) === "granted";
  } catch {
    return false; // not from a tap (autostart), or refused: boxes follow the picture alone
  }
}

function scaleDetections(detections, sx, sy) {
  if (sx === 1 && sy === 1) return detections;
  return detections.map((d) => ({
    ...d,
    x1: d.x1 * sx,
    y1: d.y1 * sy,
    x2: d.x2 * sx,
    y2: d.y2 * sy,
  }));
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
ui.mode.addEventListener("click", () => client.setView(stats.view === "live" ? "sync" : "live"));
ui.video.addEventListener("resize", () => client.onVideoResize());
document.addEventListener("visibilitychange", () =>
  document.visibilityState === "hidden" ? client.onHidden() : client.onVisible(),
);
// Leaving the page: tell the server, so it does not wait for a timeout.
window.addEventListener("pagehide", () => {
  if (client.ws?.readyState === WebSocket.OPEN && client.ready) client.ws.send(encodeBye());
});
setInterval(() => client.tick(), TICK_MS);
setInterval(() => client.updateStatus(), STATUS_INTERVAL_MS);

client.setView(settings.view);
ui.stage.classList.toggle("mirrored", settings.facing === "user");
setState("idle");
ui.start.disabled = false;
if (settings.autostart) client.start();
else showMessage("Tap Start to stream this camera to the server and see what it detects.");
