// shelf-stream wire protocol, version 1: the browser's half of shelf_stream/protocol.py.
//
// Every message, both ways, is one binary WebSocket message holding one record:
//   type u8, flags u8, length u32 (big-endian), then `length` bytes of body.
// Pure functions only (bytes in, objects out): no sockets, no DOM.

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
});

export const KeyframeReason = Object.freeze({
  1: "decode_error",
  2: "gap",
  3: "stream_start",
  4: "still_waiting",
});

const HEADER_BYTES = 6;
const VIDEO_HEADER_BYTES = 4 + 8 + 8; // seq u32, pts i64, capture_us i64
const RESULT_HEADER_BYTES = 8 + 8 + 4 * 4 + 2; // pts, capture_us, 4 stage times, count
const DETECTION_BYTES = 2 + 4 * 5; // class_id u16, score + box as f32
const FEEDBACK_ENTRY_BYTES = 4 + 8;

/** A message from the server that does not follow the protocol. */
export class ProtocolError extends Error {}

function record(type, body, flags = 0) {
  const bytes = new Uint8Array(HEADER_BYTES + body.byteLength);
  const view = new DataView(bytes.buffer);
  view.setUint8(0, type);
  view.setUint8(1, flags);
  view.setUint32(2, body.byteLength);
  bytes.set(body, HEADER_BYTES);
  return bytes.buffer;
}

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
  if (token) hello.token = token;
  return record(MessageType.HELLO, new TextEncoder().encode(JSON.stringify(hello)));
}

/**
 * One access unit as a Video message. `chunk` is an EncodedVideoChunk (Annex-B bytes),
 * copied straight into the message buffer after the 26 bytes of headers.
 */
export function encodeVideo({ seq, pts, captureUs, keyframe, chunk }) {
  const size = VIDEO_HEADER_BYTES + chunk.byteLength;
  const bytes = new Uint8Array(HEADER_BYTES + size);
  const view = new DataView(bytes.buffer);
  view.setUint8(0, MessageType.VIDEO);
  view.setUint8(1, keyframe ? FLAG_KEYFRAME : 0);
  view.setUint32(2, size);
  view.setUint32(6, seq >>> 0);
  view.setBigInt64(10, BigInt(pts));
  view.setBigInt64(18, BigInt(captureUs));
  chunk.copyTo(bytes.subarray(HEADER_BYTES + VIDEO_HEADER_BYTES));
  return bytes.buffer;
}

export function encodeBye() {
  return record(MessageType.BYE, new Uint8Array(0));
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

/**
 * Parse one server message (an ArrayBuffer) into a plain object with a `type` field:
 * ready, result, dropped, keyframe_request, error, feedback or probe_ack.
 * `classNames` (from Ready) label the detections of a Result.
 * Throws ProtocolError for anything malformed.
 */
export function decodeMessage(buffer, classNames = []) {
  if (!(buffer instanceof ArrayBuffer)) throw new ProtocolError("text message from the server");
  if (buffer.byteLength < HEADER_BYTES) throw new ProtocolError("message shorter than a header");
  const view = new DataView(buffer);
  const type = view.getUint8(0);
  const length = view.getUint32(2);
  if (length !== buffer.byteLength - HEADER_BYTES) {
    throw new ProtocolError(`message length ${buffer.byteLength} does not match its header`);
  }
  const body = new DataView(buffer, HEADER_BYTES, length);
  switch (type) {
    case MessageType.READY:
      return { type: "ready", ...parseReady(body) };
    case MessageType.RESULT:
      return { type: "result", ...parseResult(body, classNames) };
    case MessageType.DROPPED:
      return { type: "dropped", ...parseDropped(body) };
    case MessageType.KEYFRAME_REQUEST:
      expectLength(body, 1, "keyframe request");
      return { type: "keyframe_request", reason: KeyframeReason[body.getUint8(0)] ?? "unknown" };
    case MessageType.ERROR:
      return { type: "error", ...parseError(body) };
    case MessageType.FEEDBACK:
      return { type: "feedback", count: parseFeedbackCount(body) };
    case MessageType.PROBE_ACK:
      return { type: "probe_ack" };
    default:
      throw new ProtocolError(`message type ${type} is not valid from a server`);
  }
}

function expectLength(body, length, what) {
  if (body.byteLength !== length) throw new ProtocolError(`${what} has the wrong length`);
}

function parseReady(body) {
  let ready;
  try {
    ready = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(body));
  } catch (error) {
    throw new ProtocolError(`ready is not valid JSON: ${error.message}`);
  }
  if (ready === null || typeof ready !== "object" || ready.protocol !== PROTOCOL_VERSION) {
    throw new ProtocolError(`server speaks protocol ${ready?.protocol}, we speak 1`);
  }
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
    pts: Number(body.getBigInt64(0)),
    captureUs: Number(body.getBigInt64(8)),
    decodeUs: body.getUint32(16),
    queueUs: body.getUint32(20),
    inferUs: body.getUint32(24),
    totalUs: body.getUint32(28),
    detections,
  };
}

function parseDropped(body) {
  expectLength(body, 8 + 8 + 1, "dropped");
  return {
    pts: Number(body.getBigInt64(0)),
    captureUs: Number(body.getBigInt64(8)),
    reason: DropReason[body.getUint8(16)] ?? "unknown",
  };
}

function parseError(body) {
  if (body.byteLength < 2) throw new ProtocolError("error message is truncated");
  const code = body.getUint16(0);
  const text = new TextDecoder().decode(
    new Uint8Array(body.buffer, body.byteOffset + 2, body.byteLength - 2),
  );
  return { code, name: ErrorName[code] ?? "internal", message: text };
}

function parseFeedbackCount(body) {
  if (body.byteLength < 2) throw new ProtocolError("feedback is truncated");
  const count = body.getUint16(0);
  expectLength(body, 2 + count * FEEDBACK_ENTRY_BYTES, "feedback");
  return count;
}
