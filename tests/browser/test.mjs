// Browser test of the web page served by `rtdetr serve` (Debian's chromium driven by
// playwright-core, headless, with Chromium's fake camera).
//
//   RTDETR_SERVER_URL=http://127.0.0.1:PORT RTDETR_API_KEY=KEY node tests/browser/test.mjs [IMAGE]
//
// 1. upload mode: an example image is picked; boxes must be drawn on the canvas (it differs
//    from the plain image) and the listed detections must equal what the API returns;
//    the model picker lists the server's models, and picking the second one detects the
//    image again with it (the request names it; the list equals the API's for that model);
// 2. webcam mode: frames from the fake camera go over /v1/stream and answers come back for
//    several frames (the frame counter increases); with "Track" ticked the server
//    acknowledges tracking and every detection shown carries a track id.
// Screenshots go to target/browser-screenshots/. Exit code 1 on any failure.

import { chromium } from "playwright-core";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, "../..");
const base = (process.env.RTDETR_SERVER_URL || "").replace(/\/$/, "");
const key = process.env.RTDETR_API_KEY || "";
const image = path.resolve(process.argv[2] || path.join(root, "examples/shapes-1.png"));
const shots = path.join(root, "target/browser-screenshots");
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
if (!base) {
  console.error("set RTDETR_SERVER_URL");
  process.exit(2);
}
fs.mkdirSync(shots, { recursive: true });

const auth = key ? { Authorization: `Bearer ${key}` } : {};
let passed = 0, failed = 0;
function check(cond, what) {
  if (!cond) throw new Error(what);
}

async function waitHealthy() {
  const until = Date.now() + 180_000;
  while (Date.now() < until) {
    try {
      const r = await fetch(`${base}/health`);
      if (r.ok) return;
    } catch {}
    await new Promise((r) => setTimeout(r, 250));
  }
  throw new Error("the server did not become healthy within 180 s");
}

async function run(name, fn) {
  const t = Date.now();
  try {
    await fn();
    passed++;
    console.log(`ok   ${name} (${Date.now() - t} ms)`);
  } catch (e) {
    failed++;
    console.log(`FAIL ${name}: ${e && e.stack ? e.stack : e}`);
  }
}

await waitHealthy();
const browser = await chromium.launch({
  executablePath,
  headless: true,
  args: [
    "--no-sandbox",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    // A clip of shapes (run.sh makes it) instead of Chromium's test pattern, which the demo
    // model finds nothing in.
    ...(process.env.RTDETR_FAKE_CAMERA ? [`--use-file-for-fake-video-capture=${process.env.RTDETR_FAKE_CAMERA}`] : []),
  ],
});
const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
const consoleErrors = [];
page.on("console", (m) => { if (m.type() === "error") consoleErrors.push(m.text()); });
page.on("pageerror", (e) => consoleErrors.push(String(e)));
await page.addInitScript((k) => localStorage.setItem("rtdetr-api-key", k), key);
// The models the server serves (run.sh starts two).
const served = (await (await fetch(`${base}/v1/models`, { headers: auth })).json()).data.map((m) => m.id);
// Every /v1/detections request body the page sends, and every WebSocket URL it opens.
const detectionBodies = [], socketUrls = [];
page.on("request", (r) => { if (r.url().endsWith("/v1/detections")) detectionBodies.push(JSON.parse(r.postData() || "{}")); });
page.on("websocket", (ws) => socketUrls.push(ws.url()));

// The rows of the page's detection table, and what they should be for an API answer.
const tableRows = () => page.$$eval("#detections tbody tr", (trs) => trs.map((tr) => [...tr.children].map((td) => td.textContent)));
const rowsOf = (api) => api.detections.map((d) => [
  d.label,
  d.score.toFixed(3),
  [d.box.xmin, d.box.ymin, d.box.xmax, d.box.ymax].map((v) => v.toFixed(0)).join(", "),
]);
async function apiDetections(dataUrl, threshold, model) {
  const r = await fetch(`${base}/v1/detections`, {
    method: "POST",
    headers: { "Content-Type": "application/json", ...auth },
    body: JSON.stringify({ image: dataUrl, threshold, model }),
  });
  check(r.ok, `API answered ${r.status}`);
  return r.json();
}

try {
  await run("upload: boxes drawn and the listed detections equal the API's", async () => {
    await page.goto(`${base}/`);
    await page.waitForFunction(() => document.getElementById("model").dataset.ready === "1", null, { timeout: 30_000 });
    const listed = await page.$$eval("#model option", (os) => os.map((o) => o.value));
    check(JSON.stringify(listed) === JSON.stringify(served), `picker lists ${JSON.stringify(listed)}, /v1/models ${JSON.stringify(served)}`);
    check((await page.inputValue("#model")) === served[0], "the first model is not selected at first");
    await page.setInputFiles("#file", image);
    await page.waitForFunction(() => /detections above/.test(document.getElementById("status").textContent), null, {
      timeout: 60_000,
    });
    // What the API answers for the same image at the page's default threshold (0.50).
    const dataUrl = `data:image/png;base64,${fs.readFileSync(image).toString("base64")}`;
    const api = await apiDetections(dataUrl, 0.5, served[0]);
    check(api.detections.length > 0, "the API found nothing in the example image");
    const rows = await tableRows();
    const want = rowsOf(api);
    check(JSON.stringify(rows) === JSON.stringify(want), `page lists ${JSON.stringify(rows)}, API ${JSON.stringify(want)}`);
    check(detectionBodies.at(-1).model === served[0], `the page asked for model ${detectionBodies.at(-1).model}`);
    // The canvas shows the image with boxes: compare its pixels with the plain image.
    const diff = await page.evaluate(async (src) => {
      const view = document.getElementById("view");
      const img = new Image();
      img.src = src;
      await img.decode();
      const plain = document.createElement("canvas");
      plain.width = view.width; plain.height = view.height;
      plain.getContext("2d").drawImage(img, 0, 0, view.width, view.height);
      const a = view.getContext("2d").getImageData(0, 0, view.width, view.height).data;
      const b = plain.getContext("2d").getImageData(0, 0, view.width, view.height).data;
      let changed = 0, distinct = new Set();
      for (let i = 0; i < a.length; i += 4) {
        if (Math.abs(a[i] - b[i]) + Math.abs(a[i + 1] - b[i + 1]) + Math.abs(a[i + 2] - b[i + 2]) > 30) changed++;
        if (distinct.size < 64) distinct.add((a[i] << 16) | (a[i + 1] << 8) | a[i + 2]);
      }
      return { changed, colours: distinct.size, width: view.width, height: view.height, count: view.dataset.count };
    }, dataUrl);
    check(diff.width === api.width && diff.height === api.height, `canvas ${diff.width}x${diff.height}`);
    check(diff.colours > 8, `the canvas looks blank (${diff.colours} colours)`);
    check(diff.changed > 200, `no boxes drawn: only ${diff.changed} pixels differ from the plain image`);
    check(diff.count === String(api.detections.length), `canvas reports ${diff.count} boxes`);
    await page.screenshot({ path: path.join(shots, "upload.png"), fullPage: true });
    console.log(`     ${api.detections.length} detections: ${api.detections.map((d) => d.label).join(", ")}; ${diff.changed} pixels drawn`);
  });

  await run("model picker: the second model detects the same image again", async () => {
    check(served.length >= 2, `the server serves ${served.length} model(s); run.sh starts two`);
    const dataUrl = `data:image/png;base64,${fs.readFileSync(image).toString("base64")}`;
    const before = detectionBodies.length;
    await page.selectOption("#model", served[1]);
    await page.waitForFunction((m) => document.getElementById("status").textContent.includes(`by ${m}`), served[1], {
      timeout: 60_000,
    });
    check(detectionBodies.length === before + 1 && detectionBodies.at(-1).model === served[1],
      `the page did not ask ${served[1]}: ${JSON.stringify(detectionBodies.slice(before))}`);
    // The slider at 0.01 (the page's own request threshold) lists everything it got.
    await page.$eval("#threshold", (e) => { e.value = "0.01"; e.dispatchEvent(new Event("input")); });
    const api = await apiDetections(dataUrl, 0.01, served[1]);
    const first = await apiDetections(dataUrl, 0.01, served[0]);
    check(JSON.stringify(rowsOf(api)) !== JSON.stringify(rowsOf(first)), "both models answer the same");
    const rows = await tableRows();
    check(JSON.stringify(rows) === JSON.stringify(rowsOf(api)), `page lists ${rows.length} rows, API ${api.detections.length} for ${served[1]}`);
    await page.screenshot({ path: path.join(shots, "model-picker.png"), fullPage: true });
    console.log(`     ${served[1]}: ${api.detections.length} detections above 0.01 (${served[0]}: ${first.detections.length})`);
    // Back to the first model (kept in local storage) and the default threshold.
    await page.selectOption("#model", served[0]);
    await page.waitForFunction((m) => document.getElementById("status").textContent.includes(`by ${m}`), served[0], {
      timeout: 60_000,
    });
    await page.$eval("#threshold", (e) => { e.value = "0.5"; e.dispatchEvent(new Event("input")); });
  });

  await run("webcam: fake camera frames over /v1/stream get answers, frame counter increases, tracking", async () => {
    await page.click("#webcam");
    const frames = async () => Number((await page.getAttribute("#stats", "data-frames")) || 0);
    const last = async () => Number((await page.getAttribute("#stats", "data-last-frame")) || -1);
    // Three answered frames, or an error shown (then fail at once).
    await page.waitForFunction(
      () =>
        Number(document.getElementById("stats").dataset.frames || 0) >= 3 ||
        document.getElementById("status").className === "error",
      null,
      { timeout: 90_000 },
    );
    const shown = await page.$eval("#status", (e) => ({ text: e.textContent, error: e.className === "error" }));
    check(!shown.error, `the page shows an error: ${shown.text}`);
    const f1 = await frames(), l1 = await last();
    await page.waitForFunction((n) => Number(document.getElementById("stats").dataset.frames || 0) >= n + 3, f1, {
      timeout: 90_000,
    });
    const f2 = await frames(), l2 = await last();
    check(f2 > f1 && l2 > l1, `frame counter did not increase: ${f1}/${l1} -> ${f2}/${l2}`);
    const stats = await page.textContent("#stats");
    check(/\d+(\.\d)? FPS/.test(stats) && /ms round trip/.test(stats), `stats not shown: ${stats}`);
    const st = await page.$eval("#status", (e) => ({ text: e.textContent, error: e.className === "error" }));
    check(!st.error, `error shown: ${st.text}`);
    // The canvas shows the camera (not blank).
    const colours = await page.evaluate(() => {
      const v = document.getElementById("view");
      const a = v.getContext("2d").getImageData(0, 0, v.width, v.height).data;
      const s = new Set();
      for (let i = 0; i < a.length && s.size < 64; i += 4 * 97) s.add((a[i] << 16) | (a[i + 1] << 8) | a[i + 2]);
      return s.size;
    });
    check(colours > 4, `webcam canvas looks blank (${colours} colours)`);
    check(socketUrls.length && new URL(socketUrls.at(-1)).searchParams.get("model") === served[0],
      `the stream did not name the chosen model: ${socketUrls.at(-1)}`);
    await page.screenshot({ path: path.join(shots, "webcam.png"), fullPage: true });
    console.log(`     ${f2} answered frames, last frame ${l2}: ${stats}`);

    // "Track": the page sends {"track": true}, the server acknowledges it, answers keep
    // coming and every detection shown then carries a track id.
    await page.check("#track");
    await page.waitForFunction(() => document.getElementById("stats").dataset.track === "on", null, { timeout: 30_000 });
    const f3 = await frames();
    await page.waitForFunction((n) => Number(document.getElementById("stats").dataset.frames || 0) >= n + 3, f3, {
      timeout: 90_000,
    });
    const tracked = await page.evaluate(() => ({
      all: state.result.detections.every((d) => Number.isInteger(d.track_id)),
      n: state.result.detections.length,
      status: document.getElementById("status").textContent,
      error: document.getElementById("status").className === "error",
    }));
    check(!tracked.error && /tracked detections/.test(tracked.status), `tracking status: ${tracked.status}`);
    check(tracked.all, "a detection without track_id while tracking");
    // Vacuous without boxes: the fake camera's clip of shapes must give some.
    if (process.env.RTDETR_FAKE_CAMERA) check(tracked.n > 0, "no tracked detections on the clip of shapes");
    await page.screenshot({ path: path.join(shots, "webcam-track.png"), fullPage: true });
    console.log(`     tracking: ${tracked.n} tracked detections in the last answer`);
    await page.uncheck("#track");
    await page.waitForFunction(() => document.getElementById("stats").dataset.track === "off", null, { timeout: 30_000 });
    await page.click("#webcam"); // stop
  });
} finally {
  await browser.close();
}
if (consoleErrors.length) console.log(`console errors:\n  ${consoleErrors.join("\n  ")}`);
console.log(`browser: ${passed} passed, ${failed} failed`);
process.exit(failed || !passed ? 1 : 0);
