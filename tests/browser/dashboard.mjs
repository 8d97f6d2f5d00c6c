// The admin dashboard in a real browser (headless Chromium through
// playwright-core): sign in with the token, read the upstream rows, the
// indicators and a sparkline, look a session up, drain relay-a.
//
//   node tests/browser/dashboard.mjs BASE_URL TOKEN SCREENSHOT_PATH
//
// Needs Debian's chromium at /usr/bin/chromium and playwright-core in
// target/browser/node_modules (scripts/test.sh installs both). Prints one
// JSON line on success; on any failure prints the reason to stderr and exits
// 1. A console error, an uncaught exception or a request to another origin
// (the page must load nothing from outside) is a failure.

import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";

const STEP_MS = 15_000;
const TOTAL_MS = 90_000;
const CHROMIUM = "/usr/bin/chromium";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");
const modules = path.join(root, "target", "browser", "node_modules");
const require = createRequire(path.join(modules, "..", "package.json"));

const [baseUrl, token, screenshot] = process.argv.slice(2);
if (!baseUrl || !token || !screenshot) {
  console.error("usage: node tests/browser/dashboard.mjs BASE_URL TOKEN SCREENSHOT_PATH");
  process.exit(1);
}
const origin = new URL(baseUrl).origin;

let playwright;
try {
  playwright = require(path.join(modules, "playwright-core"));
} catch (e) {
  console.error(`playwright-core is not in ${modules} (${e.message}); install it with: npm install --prefix target/browser playwright-core`);
  process.exit(1);
}
if (!fs.existsSync(CHROMIUM)) {
  console.error(`${CHROMIUM} is missing; install it with: apt-get install chromium`);
  process.exit(1);
}

const problems = [];
const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), "relay-edge-dashboard-"));
let context = null;
let page = null;
let step = "starting";
const refusals = { logged: 0, unauthenticated: 0 };

async function cleanUp() {
  if (context) await context.close().catch(() => {});
  fs.rmSync(userDataDir, { recursive: true, force: true });
}

const watchdog = setTimeout(async () => {
  console.error(`dashboard test: timed out after ${TOTAL_MS} ms at step: ${step}`);
  await cleanUp();
  process.exit(1);
}, TOTAL_MS);

/** Fail unless no console error, page error or outside request was seen. */
function noProblems() {
  if (refusals.logged > refusals.unauthenticated) {
    problems.push(`console error: ${refusals.logged} resources refused with 401, only ${refusals.unauthenticated} of them sent without the token`);
  }
  if (problems.length) throw new Error(problems.join("\n"));
}

async function run() {
  step = "launching chromium";
  context = await playwright.chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM,
    headless: true,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--no-first-run",
    ],
    viewport: { width: 1360, height: 900 },
    timeout: STEP_MS,
  });
  context.setDefaultTimeout(STEP_MS);
  context.on("request", (r) => {
    const url = r.url();
    let requestOrigin = "unparsable";
    try {
      requestOrigin = new URL(url).origin;
    } catch (_) {
      // kept as unparsable
    }
    if (requestOrigin !== origin) problems.push(`request to another origin: ${url}`);
    if (url.includes(token)) problems.push(`the token appears in a URL: ${r.method()} ${url.split("?")[0]}`);
  });
  context.on("response", (r) => {
    if (r.status() === 401 && !r.request().headers().authorization) refusals.unauthenticated += 1;
  });
  page = context.pages()[0] || (await context.newPage());
  page.on("console", (m) => {
    if (m.type() === "error") {
      const at = m.location();
      // Before sign-in every API call is refused with 401 by design, and
      // Chromium logs each refused resource: counted, and excused at the end
      // as far as requests without a token were refused.
      if (/status of 401\b/.test(m.text())) {
        refusals.logged += 1;
        return;
      }
      problems.push(`console error: ${m.text()}${at && at.url ? ` (${at.url}:${at.lineNumber})` : ""}`);
    }
  });
  page.on("pageerror", (e) => problems.push(`uncaught exception in the page: ${e.message}`));

  step = "opening the page";
  const response = await page.goto(baseUrl, { waitUntil: "domcontentloaded" });
  if (!response || response.status() !== 200) {
    throw new Error(`GET ${baseUrl} answered ${response ? response.status() : "nothing"}; the page itself must load without the token`);
  }

  step = "waiting for the token form";
  await page.locator("#token-form").waitFor({ state: "visible" });
  const type = await page.locator("#token-form input#token").getAttribute("type");
  if (type !== "password") throw new Error(`input#token has type ${type}, not password`);
  await page.locator("#token-form input#token").fill(token);
  await page.locator("#token-form button[type=submit], #token-form input[type=submit]").first().click();

  step = "waiting for the upstream rows relay-a and relay-b";
  const signedIn = await page.waitForFunction(() =>
    document.querySelector('tr[data-upstream="relay-a"]') ? "yes" : !document.querySelector("#token-form").hidden && "refused");
  if ((await signedIn.jsonValue()) === "refused") throw new Error("the token was refused: the token form came back");
  await page.locator('tr[data-upstream="relay-a"]').waitFor();
  await page.locator('tr[data-upstream="relay-b"]').waitFor();
  await page.locator("#token-form").waitFor({ state: "hidden" });
  const rows = await page.locator("tr[data-upstream]").evaluateAll((trs) => trs.map((tr) => tr.dataset.upstream));

  step = "waiting for 8 indicators";
  await page.waitForFunction(() => document.querySelectorAll(".indicator[data-name]").length === 8);
  const indicators = await page.locator(".indicator[data-name]").evaluateAll((els) =>
    els.map((e) => ({ name: e.dataset.name, state: ["ok", "bad", "unknown"].filter((c) => e.classList.contains(c)) })));
  const unclassed = indicators.filter((i) => i.state.length !== 1).map((i) => i.name);
  if (unclassed.length) throw new Error(`indicators without exactly one of ok/bad/unknown: ${unclassed.join(", ")}`);

  step = "waiting for relay-a's requests sparkline to have at least 2 points";
  await page.waitForFunction(() => {
    const svg = document.querySelector('svg.spark[data-upstream="relay-a"][data-series="requests"]');
    if (!svg) return false;
    const drawn = [...svg.querySelectorAll("path, polyline")].map((e) => e.getAttribute("d") || e.getAttribute("points") || "");
    // Distinct points: a marker drawn as a zero-length path is no line.
    const points = (d) => new Set((d.match(/-?[\d.]+(e-?\d+)?[ ,]+-?[\d.]+(e-?\d+)?/g) || []).map((p) => p.replace(/[ ,]+/, ","))).size;
    return drawn.some((d) => points(d) >= 2);
  });
  for (const series of ["requests", "errors", "p99_ms", "affinity_hit_rate"]) {
    const n = await page.locator(`svg.spark[data-upstream="relay-b"][data-series="${series}"]`).count();
    if (n !== 1) throw new Error(`relay-b has ${n} ${series} sparklines, not 1`);
  }

  step = "looking up session alice";
  await page.locator("#session-key").fill("alice");
  await page.locator("form:has(#session-key) button").first().click();
  const found = await page.waitForFunction(() => {
    const m = (document.querySelector("#session-result")?.textContent || "").match(/relay-[ab]/);
    return m && m[0];
  });
  const sessionUpstream = await found.jsonValue();

  step = "draining relay-a";
  const relayA = page.locator('tr[data-upstream="relay-a"]');
  const button = relayA.locator("button.drain");
  const label = (await button.textContent()).trim();
  if (label !== "drain") throw new Error(`relay-a's button reads ${JSON.stringify(label)}, not "drain"`);
  await button.click();
  await page.waitForFunction(() => {
    const tr = document.querySelector('tr[data-upstream="relay-a"]');
    return tr && tr.querySelector(".state")?.textContent.trim() === "draining" && tr.querySelector("button.drain")?.textContent.trim() === "undrain";
  });

  step = "checking where the token is kept";
  const kept = await page.evaluate(() => localStorage.length + sessionStorage.length + document.cookie.length);
  if (kept !== 0) throw new Error("the page stored something (localStorage, sessionStorage or a cookie); the token must stay in a variable");

  step = "taking the screenshot";
  fs.mkdirSync(path.dirname(path.resolve(screenshot)), { recursive: true });
  await page.screenshot({ path: screenshot, fullPage: true });
  noProblems();
  return { rows, indicators: indicators.length, session_upstream: sessionUpstream, drained: "relay-a" };
}

let code = 0;
try {
  const summary = await run();
  console.log(JSON.stringify(summary));
} catch (e) {
  code = 1;
  const seen = problems.length ? `\n${problems.join("\n")}` : "";
  console.error(`dashboard test failed at step: ${step}: ${e.message.split("\n")[0]}${seen}`);
  if (page) {
    const failed = screenshot.replace(/(\.png)?$/, ".failed.png");
    await page.screenshot({ path: failed, fullPage: true }).then(
      () => console.error(`screenshot of the failure: ${failed}`),
      () => {},
    );
  }
} finally {
  clearTimeout(watchdog);
  await cleanUp();
}
process.exit(code);
