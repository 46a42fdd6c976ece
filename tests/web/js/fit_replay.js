// Replay encoded-frame sizes into adaptation.js's BitrateFit; its factor after each.
// Run by tests/web/test_page_modules.py.
async function run(data) {
  const { BitrateFit } = await import("/static/adaptation.js");
  const fit = new BitrateFit();
  return data.map(([size, kbps, fps, now, target]) => {
    fit.onEncoded(size, kbps, fps, now);
    return [fit.factor, fit.encoderKbps(target)];
  });
}
