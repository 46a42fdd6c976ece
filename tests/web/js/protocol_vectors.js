// Decode and re-encode protocol.py's vectors with protocol.js; try the malformed ones.
// Run by tests/web/test_page_modules.py in a page served by shelf-stream.
async function run(data) {
  const proto = await import("/static/protocol.js");
  const bytes = (hex) => new Uint8Array(hex.match(/../g).map((h) => parseInt(h, 16))).buffer;
  const hex = (buffer) =>
    [...new Uint8Array(buffer)].map((b) => b.toString(16).padStart(2, "0")).join("");
  const plain = (m) => (m.type === "video" ? { ...m, data: [...m.data] } : m);
  const vectors = data.vectors.map((v) => {
    const decoded = proto.decodeRecord(bytes(v), data.classNames);
    let fromServer;
    try {
      fromServer = proto.decodeMessage(bytes(v), data.classNames).type;
    } catch (error) {
      fromServer = error instanceof proto.ProtocolError ? "refused" : String(error);
    }
    return { decoded: plain(decoded), reencoded: hex(proto.encodeMessage(decoded)), fromServer };
  });
  const malformed = data.malformed.map((v) => {
    try {
      return "accepted: " + JSON.stringify(proto.decodeRecord(bytes(v)));
    } catch (error) {
      return error instanceof proto.ProtocolError ? "refused" : String(error);
    }
  });
  return { vectors, malformed };
}
