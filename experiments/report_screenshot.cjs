// Render a gmia HTML report in headless Chromium, save a full-page screenshot, print what the browser saw.
//
//     make check-report          # fetches Chromium from the npm registry into .cache/chromium, runs the test
//     NODE_PATH=.cache/chromium/node_modules node experiments/report_screenshot.cjs REPORT.html OUT.png
//
// Why npm: Chromium is not on PyPI, and @sparticuz/chromium ships the browser inside the package itself (no
// second download from a CDN), so this works where only package registries are reachable.
// Prints one JSON line: {"title", "headings": [h2 texts], "images", "broken_images", "width", "height"}.
const path = require("path");
const chromiumModule = require("@sparticuz/chromium");
const chromium = chromiumModule.default || chromiumModule;  // CJS build exports the class itself
const puppeteer = require("puppeteer-core");

async function main() {
  const [html, png] = process.argv.slice(2);
  if (!html || !png) {
    console.error("usage: node report_screenshot.cjs REPORT.html OUT.png");
    process.exit(2);
  }
  const browser = await puppeteer.launch({
    args: chromium.args, executablePath: await chromium.executablePath(), headless: true,
  });
  try {
    const page = await browser.newPage();
    await page.setViewport({ width: 1200, height: 900 });
    await page.goto("file://" + path.resolve(html), { waitUntil: "load", timeout: 60000 });
    const seen = await page.evaluate(() => ({
      title: document.title,
      headings: [...document.querySelectorAll("h2")].map((e) => e.textContent.trim()),
      images: document.images.length,
      // an embedded image that failed to decode has naturalWidth 0 after "load"
      broken_images: [...document.images].filter((i) => !i.complete || i.naturalWidth === 0).length,
      width: document.documentElement.scrollWidth,
      height: document.documentElement.scrollHeight,
    }));
    await page.screenshot({ path: png, fullPage: true });
    console.log(JSON.stringify(seen));
  } finally {
    await browser.close();
  }
}

main().catch((err) => { console.error(String(err)); process.exit(1); });
