// Replay recorded RateController calls (traces.py) into controller.js; its state after each.
// Run by tests/web/test_page_modules.py in a page served by shelf-stream.
async function run(data) {
  const { RateController, rateControlConfig } = await import("/static/controller.js");
  return data.map((trace) => {
    const config = rateControlConfig(trace.config);
    const c = new RateController(config, {
      start: trace.start,
      now: trace.now,
      ladder: trace.ladder,
    });
    return trace.ops.map((op) => {
      if (op[0] === "sent") c.onSent(op[1], op[2], op[3], op[4]);
      else if (op[0] === "feedback") c.onFeedback(op[1], op[2]);
      else c.handleTimer(op[1]);
      const r = c.ladder.rung;
      return [c.aimd.kbps, r.width, r.height, r.fps, c.aimd.state, c.detector.usage];
    });
  });
}
