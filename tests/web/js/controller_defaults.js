// controller.js's own defaults, as the page uses them (rateControlConfig() with nothing
// overridden). Run by tests/web/test_page_modules.py in a page served by shelf-stream.
async function run() {
  const { rateControlConfig } = await import("/static/controller.js");
  return rateControlConfig();
}
