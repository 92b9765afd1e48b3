// `npm run bench`: the web client's session setup and encrypt + decrypt
// times, in Debian's Chromium (headless) and in Node, each measured five
// times; prints the median and the spread (min–max) of the five.
import { createServer } from "node:http";
import { build } from "esbuild";
import { chromium } from "playwright-core";

const here = new URL(".", import.meta.url).pathname;
const rounds = Number(process.env.ROUNDS ?? 5);
const out = await build({ entryPoints: [`${here}bench-core.ts`], bundle: true, format: "esm", write: false, target: "chrome120" });
const script = out.outputFiles[0].text;

const server = createServer((req, res) => {
  if (req.url === "/bench.js") res.writeHead(200, { "content-type": "text/javascript" }).end(script);
  else res.writeHead(200, { "content-type": "text/html" }).end('<!doctype html><script type="module" src="/bench.js"></script>');
});
await new Promise((r) => server.listen(0, "127.0.0.1", r));
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const page = await browser.newPage();
await page.goto(`http://127.0.0.1:${server.address().port}/`);
await page.waitForFunction(() => typeof globalThis.chatifyBench === "function");
const inBrowser = await page.evaluate((n) => globalThis.chatifyBench(n), rounds);
await browser.close();
server.close();

const mod = `data:text/javascript;base64,${Buffer.from(script).toString("base64")}`;
await import(mod);
const inNode = await globalThis.chatifyBench(rounds);

const fmt = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  const us = (v) => (v * 1000 >= 1000 ? `${(v).toFixed(2)} ms` : `${(v * 1000).toFixed(0)} µs`);
  return `${us(s[Math.floor(s.length / 2)])} (${us(s[0])}–${us(s[s.length - 1])})`;
};
console.log(`| operation | Chromium ${browser.version?.() ?? ""} | Node ${process.versions.node} |`);
console.log("|---|---|---|");
for (const k of Object.keys(inBrowser)) console.log(`| ${k} | ${fmt(inBrowser[k])} | ${fmt(inNode[k])} |`);
