// Replay recorded BandwidthProbe calls (traces.py) into probe.js; its result and start.
// Run by tests/web/test_page_modules.py in a page served by shelf-stream.
async function run(data) {
  const { BandwidthProbe, chooseStart } = await import("/static/probe.js");
  return data.map((trace) => {
    const probe = new BandwidthProbe(trace.config, trace.now);
    const sent = [];
    for (const op of trace.ops) {
      if (op[0] === "next")
        sent.push(JSON.stringify(probe.nextProbes(op[1])) === JSON.stringify(op[2]));
      else if (op[0] === "ack")
        probe.onAck({ probeId: op[1][0], sendUs: op[1][1], arrivalUs: op[1][2] }, op[2]);
      else probe.handleTimer(op[1]);
    }
    const result = probe.result();
    const args = { ...trace.startArgs, ladder: trace.startArgs.ladder ?? null };
    const c = chooseStart(result, args);
    return {
      sameProbes: sent.every(Boolean),
      result,
      choice: [c.bitrateKbps, c.width, c.height, c.fps],
    };
  });
}
