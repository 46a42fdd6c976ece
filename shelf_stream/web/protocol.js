// shelf-stream wire protocol, version 1: the browser's half of shelf_stream/protocol.py.
//
// Every message, both ways, is one binary WebSocket message holding one record:
//   type u8, flags u8, length u32 (big-endian), then `length` bytes of body.
// Pure functions only (bytes in, objects out): no sockets, no DOM.
//
// Every message type can be encoded and decoded here, in both directions, although the
// page itself only sends Hello, Video, Probe and Bye: tests/web/test_protocol_vectors.py
// feeds this module vectors made by protocol.py and has protocol.py parse what this module
// encodes, so the two cannot drift apart unnoticed.

export const PROTOCOL_VERSION = 1;
export const TIME_BASE_HZ = 90000;
export const FLAG_KEYFRAME = 0x01;

export const MessageType = Object.freeze({
  HELLO: 1,
  READY: 2,
  VIDEO: 3,
  RESULT: 4,
  DROPPED: 5,
  KEYFRAME_REQUEST: 6,
  ERROR: 7,
  FEEDBACK: 8,
  BYE: 9,
  PROBE: 10,
  PROBE_ACK: 11,
});

// Error codes (protocol.ErrorCode), by number.
export const ErrorName = Object.freeze({
  1: "protocol",
  2: "unsupported_version",
  3: "unsupported_codec",
  4: "bad_hello",
  5: "message_too_large",
  6: "unauthorized",
  7: "unexpected_message",
  8: "limit_exceeded",
  9: "server_busy",
  10: "internal",
});

// Why the server answered a pts with Dropped (protocol.DropReason).
export const DropReason = Object.freeze({
  1: "decode_error",
  2: "awaiting_keyframe",
  3: "superseded",
  4: "too_old",
  5: "shutdown",
  6: "gap",
  7: "invalid",
  8: "no_frame",
  9: "inference_error",
  10: "size_mismatch",
});

export const KeyframeReason = Object.freeze({
  1: "decode_error",
  2: "gap",
  3: "stream_start",
  4: "still_waiting",
});

const TYPE_NAMES = Object.freeze({
  1: "hello",
  2: "ready",
  3: "video",
  4: "result",
  5: "dropped",
  6: "keyframe_request",
  7: "error",
  8: "feedback",
  9: "bye",
  10: "probe",
  11: "probe_ack",
});
// Types a server may send; anything else from it is a protocol error.
const FROM_SERVER = new Set([
  "ready",
  "result",
  "dropped",
  "keyframe_request",
  "error",
  "feedback",
  "probe_ack",
]);

export const HEADER_BYTES = 6;
export const VIDEO_HEADER_BYTES = 4 + 8 + 8; // seq u32, pts i64, capture_us i64
const RESULT_HEADER_BYTES = 8 + 8 + 4 * 4 + 2; // pts, capture_us, 4 stage times, count
const DETECTION_BYTES = 2 + 4 * 5; // class_id u16, score + box as f32
const DROPPED_BYTES = 8 + 8 + 1;
const FEEDBACK_ENTRY_BYTES = 4 + 8;
export const PROBE_HEADER_BYTES = 4 + 8; // probe_id u32, send_us i64
const PROBE_ACK_BYTES = 4 + 8 + 8 + 4;
export const MAX_FEEDBACK_ENTRIES = 1024;
const MAX_ERROR_TEXT_BYTES = 1024;
const U32_MAX = 2 ** 32 - 1;

/** A message that does not follow the protocol. */
export class ProtocolError extends Error {}

const nameOf = (table, number) => table[number];
const numberOf = (table, name, what) => {
  const found = Object.keys(table).find((key) => table[key] === name);
  if (found === undefined) throw new ProtocolError(`unknown ${what} ${name}`);
  return Number(found);
};

// ------------------------------------------------------------------------- encoding

function record(type, body, flags = 0) {
  const bytes = new Uint8Array(HEADER_BYTES + body.byteLength);
  const view = new DataView(bytes.buffer);
  view.setUint8(0, type);
  view.setUint8(1, flags);
  view.setUint32(2, body.byteLength);
  bytes.set(body, HEADER_BYTES);
  return bytes.buffer;
}

/** A fixed-size body: `write(view)` fills a DataView of `size` bytes. */
function fixed(type, size, write, flags = 0) {
  const body = new Uint8Array(size);
  write(new DataView(body.buffer));
  return record(type, body, flags);
}

function u32(value, what) {
  if (!Number.isInteger(value) || value < 0 || value > U32_MAX) {
    throw new ProtocolError(`${what} ${value} is not a u32`);
  }
  return value;
}

function i64(value, what) {
  if (!Number.isSafeInteger(value)) throw new ProtocolError(`${what} ${value} is not an integer`);
  return BigInt(value);
}

const json = (type, object) => record(type, new TextEncoder().encode(JSON.stringify(object)));

/** Hello: the stream's codec, size and rate (and the server's token, if it wants one). */
export function encodeHello({ codec, width, height, fps, token = null, client = "" }) {
  const hello = {
    protocol: PROTOCOL_VERSION,
    codec,
    width,
    height,
    fps,
    time_base: [1, TIME_BASE_HZ],
    client: client.slice(0, 100),
  };
  if (token !== null && token !== undefined) hello.token = token;
  return json(MessageType.HELLO, hello);
}

export function encodeReady(ready) {
  return json(MessageType.READY, {
    protocol: PROTOCOL_VERSION,
    session: ready.session,
    model: ready.model,
    class_names: ready.classNames,
    max_message_bytes: ready.maxMessageBytes,
    max_width: ready.maxWidth,
    max_height: ready.maxHeight,
    max_fps: ready.maxFps,
  });
}

/**
 * One access unit as a Video message. `chunk` is an EncodedVideoChunk (Annex-B bytes) or
 * anything with `byteLength` and `copyTo(destination)`, copied straight into the message
 * buffer after the 26 bytes of headers (no intermediate copy).
 */
export function encodeVideo({ seq, pts, captureUs, keyframe, chunk }) {
  const size = VIDEO_HEADER_BYTES + chunk.byteLength;
  const bytes = new Uint8Array(HEADER_BYTES + size);
  const view = new DataView(bytes.buffer);
  view.setUint8(0, MessageType.VIDEO);
  view.setUint8(1, keyframe ? FLAG_KEYFRAME : 0);
  view.setUint32(2, size);
  view.setUint32(6, u32(seq, "seq"));
  view.setBigInt64(10, i64(pts, "pts"));
  view.setBigInt64(18, i64(captureUs, "capture_us"));
  chunk.copyTo(bytes.subarray(HEADER_BYTES + VIDEO_HEADER_BYTES));
  return bytes.buffer;
}

/** Bytes as a chunk for encodeVideo (tests, and anything that is not an EncodedVideoChunk). */
export function bytesChunk(data) {
  return { byteLength: data.byteLength, copyTo: (destination) => destination.set(data) };
}

export function encodeResult({ pts, captureUs, decodeUs, queueUs, inferUs, totalUs, detections }) {
  const clamp = (value) => Math.min(Math.max(Math.trunc(value), 0), U32_MAX);
  const size = RESULT_HEADER_BYTES + detections.length * DETECTION_BYTES;
  return fixed(MessageType.RESULT, size, (view) => {
    view.setBigInt64(0, i64(pts, "pts"));
    view.setBigInt64(8, i64(captureUs, "capture_us"));
    [decodeUs, queueUs, inferUs, totalUs].forEach((us, i) => view.setUint32(16 + 4 * i, clamp(us)));
    view.setUint16(32, detections.length);
    detections.forEach((d, i) => {
      const offset = RESULT_HEADER_BYTES + i * DETECTION_BYTES;
      view.setUint16(offset, d.classId);
      [d.score, d.x1, d.y1, d.x2, d.y2].forEach((v, j) => view.setFloat32(offset + 2 + 4 * j, v));
    });
  });
}

export function encodeDropped({ pts, captureUs, reason }) {
  return fixed(MessageType.DROPPED, DROPPED_BYTES, (view) => {
    view.setBigInt64(0, i64(pts, "pts"));
    view.setBigInt64(8, i64(captureUs, "capture_us"));
    view.setUint8(16, numberOf(DropReason, reason, "drop reason"));
  });
}

export function encodeKeyframeRequest({ reason }) {
  return fixed(MessageType.KEYFRAME_REQUEST, 1, (view) =>
    view.setUint8(0, numberOf(KeyframeReason, reason, "keyframe reason")),
  );
}

export function encodeError({ code, message }) {
  let text = new TextEncoder().encode(message);
  if (text.byteLength > MAX_ERROR_TEXT_BYTES) {
    // Cut at the limit, then drop a broken trailing character (as protocol.py does).
    const decoded = new TextDecoder().decode(text.subarray(0, MAX_ERROR_TEXT_BYTES));
    text = new TextEncoder().encode(decoded.replace(/\uFFFD$/, ""));
  }
  const body = new Uint8Array(2 + text.byteLength);
  new DataView(body.buffer).setUint16(0, code);
  body.set(text, 2);
  return record(MessageType.ERROR, body);
}

export function encodeFeedback({ arrivals }) {
  if (arrivals.length > MAX_FEEDBACK_ENTRIES) throw new ProtocolError("too many feedback entries");
  return fixed(MessageType.FEEDBACK, 2 + arrivals.length * FEEDBACK_ENTRY_BYTES, (view) => {
    view.setUint16(0, arrivals.length);
    arrivals.forEach(([seq, arrivalUs], i) => {
      view.setUint32(2 + i * FEEDBACK_ENTRY_BYTES, u32(seq, "seq"));
      view.setBigInt64(6 + i * FEEDBACK_ENTRY_BYTES, i64(arrivalUs, "arrival_us"));
    });
  });
}

export function encodeBye() {
  return record(MessageType.BYE, new Uint8Array(0));
}

/** Probe: id and the page's send time (µs), then `padding` zero bytes (a burst's size). */
export function encodeProbe({ probeId, sendUs, padding = 0 }) {
  return fixed(MessageType.PROBE, PROBE_HEADER_BYTES + padding, (view) => {
    view.setUint32(0, u32(probeId, "probe id"));
    view.setBigInt64(4, i64(sendUs, "send_us"));
  });
}

export function encodeProbeAck({ probeId, sendUs, arrivalUs, size }) {
  return fixed(MessageType.PROBE_ACK, PROBE_ACK_BYTES, (view) => {
    view.setUint32(0, u32(probeId, "probe id"));
    view.setBigInt64(4, i64(sendUs, "send_us"));
    view.setBigInt64(12, i64(arrivalUs, "arrival_us"));
    view.setUint32(20, u32(size, "size"));
  });
}

const ENCODERS = {
  hello: encodeHello,
  ready: encodeReady,
  video: (m) => encodeVideo({ ...m, chunk: bytesChunk(m.data) }),
  result: encodeResult,
  dropped: encodeDropped,
  keyframe_request: encodeKeyframeRequest,
  error: encodeError,
  feedback: encodeFeedback,
  bye: encodeBye,
  probe: encodeProbe,
  probe_ack: encodeProbeAck,
};

/** Any message object as decodeRecord returns it (its `type` says which) → bytes. */
export function encodeMessage(message) {
  const encode = ENCODERS[message.type];
  if (!encode) throw new ProtocolError(`unknown message type ${message.type}`);
  return encode(message);
}

/** True when `data` starts with an Annex-B start code (00 00 01 or 00 00 00 01). */
export function isAnnexB(data) {
  return (
    data.length > 4 &&
    data[0] === 0 &&
    data[1] === 0 &&
    (data[2] === 1 || (data[2] === 0 && data[3] === 1))
  );
}

// ------------------------------------------------------------------------- decoding

/**
 * Parse one server message (an ArrayBuffer) into a plain object with a `type` field:
 * ready, result, dropped, keyframe_request, error, feedback or probe_ack.
 * `classNames` (from Ready) label the detections of a Result.
 * Throws ProtocolError for anything malformed or not valid from a server.
 */
export function decodeMessage(buffer, classNames = []) {
  if (!(buffer instanceof ArrayBuffer)) throw new ProtocolError("text message from the server");
  const type = buffer.byteLength ? TYPE_NAMES[new DataView(buffer).getUint8(0)] : undefined;
  if (buffer.byteLength >= HEADER_BYTES && !FROM_SERVER.has(type)) {
    throw new ProtocolError(`message type ${type ?? "unknown"} is not valid from a server`);
  }
  return decodeRecord(buffer, classNames);
}

/** Parse one record of any type, in either direction (see decodeMessage for the page's). */
export function decodeRecord(buffer, classNames = []) {
  if (buffer.byteLength < HEADER_BYTES) throw new ProtocolError("message shorter than a header");
  const view = new DataView(buffer);
  const type = TYPE_NAMES[view.getUint8(0)];
  const flags = view.getUint8(1);
  const length = view.getUint32(2);
  if (length !== buffer.byteLength - HEADER_BYTES) {
    throw new ProtocolError(`message length ${buffer.byteLength} does not match its header`);
  }
  if (type === undefined) throw new ProtocolError(`unknown message type ${view.getUint8(0)}`);
  if (flags && type !== "video") {
    throw new ProtocolError(`${type} has unexpected flags 0x${flags.toString(16)}`);
  }
  const body = new DataView(buffer, HEADER_BYTES, length);
  return { type, ...PARSERS[type](body, classNames, flags) };
}

const PARSERS = {
  hello: (body) => parseHello(parseJson(body, "hello")),
  ready: (body) => parseReady(parseJson(body, "ready")),
  video: parseVideo,
  result: parseResult,
  dropped: parseDropped,
  keyframe_request: (body) => {
    expectLength(body, 1, "keyframe request");
    return { reason: enumName(KeyframeReason, body.getUint8(0), "keyframe reason") };
  },
  error: parseError,
  feedback: parseFeedback,
  bye: (body) => {
    expectLength(body, 0, "bye");
    return {};
  },
  probe: (body) => {
    if (body.byteLength < PROBE_HEADER_BYTES) throw new ProtocolError("probe is truncated");
    return {
      probeId: body.getUint32(0),
      sendUs: readI64(body, 4, "send_us"),
      padding: body.byteLength - PROBE_HEADER_BYTES,
    };
  },
  probe_ack: (body) => {
    expectLength(body, PROBE_ACK_BYTES, "probe ack");
    return {
      probeId: body.getUint32(0),
      sendUs: readI64(body, 4, "send_us"),
      arrivalUs: readI64(body, 12, "arrival_us"),
      size: body.getUint32(20),
    };
  },
};

function expectLength(body, length, what) {
  if (body.byteLength !== length) throw new ProtocolError(`${what} has the wrong length`);
}

/** An i64 as a Number: exact for anything a clock or a 90 kHz pts reaches (< 2^53). */
function readI64(body, offset, what) {
  const value = body.getBigInt64(offset);
  if (value > BigInt(Number.MAX_SAFE_INTEGER) || value < BigInt(Number.MIN_SAFE_INTEGER)) {
    throw new ProtocolError(`${what} ${value} is beyond what this page can count exactly`);
  }
  return Number(value);
}

function enumName(table, number, what) {
  const name = nameOf(table, number);
  if (name === undefined) throw new ProtocolError(`unknown ${what} ${number}`);
  return name;
}

function parseJson(body, what) {
  let object;
  try {
    object = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(body));
  } catch (error) {
    throw new ProtocolError(`${what} is not valid JSON: ${error.message}`);
  }
  if (object === null || typeof object !== "object" || Array.isArray(object)) {
    throw new ProtocolError(`${what} must be a JSON object`);
  }
  if (object.protocol !== PROTOCOL_VERSION) {
    throw new ProtocolError(`${what}: protocol ${object.protocol}, this page speaks 1`);
  }
  return object;
}

function parseHello(hello) {
  return {
    codec: String(hello.codec),
    width: Number(hello.width),
    height: Number(hello.height),
    fps: Number(hello.fps),
    token: typeof hello.token === "string" ? hello.token : null,
    client: typeof hello.client === "string" ? hello.client : "",
  };
}

function parseReady(ready) {
  return {
    session: String(ready.session),
    model: String(ready.model),
    classNames: Array.isArray(ready.class_names) ? ready.class_names.map(String) : [],
    maxMessageBytes: Number(ready.max_message_bytes),
    maxWidth: Number(ready.max_width),
    maxHeight: Number(ready.max_height),
    maxFps: Number(ready.max_fps),
  };
}

function parseVideo(body, _classNames, flags) {
  if (body.byteLength <= VIDEO_HEADER_BYTES) throw new ProtocolError("video carries no data");
  if (flags & ~FLAG_KEYFRAME) throw new ProtocolError(`video has unknown flags 0x${flags}`);
  const data = new Uint8Array(body.buffer, body.byteOffset + VIDEO_HEADER_BYTES);
  return {
    seq: body.getUint32(0),
    pts: readI64(body, 4, "pts"),
    captureUs: readI64(body, 12, "capture_us"),
    keyframe: Boolean(flags & FLAG_KEYFRAME),
    data: data.slice(),
  };
}

function parseResult(body, classNames) {
  if (body.byteLength < RESULT_HEADER_BYTES) throw new ProtocolError("result is truncated");
  const count = body.getUint16(RESULT_HEADER_BYTES - 2);
  expectLength(body, RESULT_HEADER_BYTES + count * DETECTION_BYTES, "result");
  const detections = [];
  for (let offset = RESULT_HEADER_BYTES; offset < body.byteLength; offset += DETECTION_BYTES) {
    const classId = body.getUint16(offset);
    detections.push({
      classId,
      label: classNames[classId] ?? `class_${classId}`,
      score: body.getFloat32(offset + 2),
      x1: body.getFloat32(offset + 6),
      y1: body.getFloat32(offset + 10),
      x2: body.getFloat32(offset + 14),
      y2: body.getFloat32(offset + 18),
    });
  }
  return {
    pts: readI64(body, 0, "pts"),
    captureUs: readI64(body, 8, "capture_us"),
    decodeUs: body.getUint32(16),
    queueUs: body.getUint32(20),
    inferUs: body.getUint32(24),
    totalUs: body.getUint32(28),
    detections,
  };
}

function parseDropped(body) {
  expectLength(body, DROPPED_BYTES, "dropped");
  return {
    pts: readI64(body, 0, "pts"),
    captureUs: readI64(body, 8, "capture_us"),
    reason: enumName(DropReason, body.getUint8(16), "drop reason"),
  };
}

function parseError(body) {
  if (body.byteLength < 2 || body.byteLength > 2 + MAX_ERROR_TEXT_BYTES) {
    throw new ProtocolError("error message has the wrong length");
  }
  const code = body.getUint16(0);
  const text = new TextDecoder().decode(
    new Uint8Array(body.buffer, body.byteOffset + 2, body.byteLength - 2),
  );
  // A newer peer's code: keep its text and call it internal, as protocol.py does.
  return { code, name: ErrorName[code] ?? "internal", message: text };
}

function parseFeedback(body) {
  if (body.byteLength < 2) throw new ProtocolError("feedback is truncated");
  const count = body.getUint16(0);
  if (count > MAX_FEEDBACK_ENTRIES) throw new ProtocolError("feedback has too many entries");
  expectLength(body, 2 + count * FEEDBACK_ENTRY_BYTES, "feedback");
  const arrivals = [];
  for (let i = 0; i < count; i += 1) {
    const offset = 2 + i * FEEDBACK_ENTRY_BYTES;
    arrivals.push([body.getUint32(offset), readI64(body, offset + 4, "arrival_us")]);
  }
  return { arrivals };
}
