// Builds dist/: the bundled client (app.js), its page and style sheet. The
// page names both files with Subresource Integrity digests, and
// dist/SHA256SUMS lists every file's SHA-256 so that what a server serves
// can be compared with a build of this source (README: "Checking the web
// client"). `node build.mjs --check` fails if the build differs from
// web/SHA256SUMS, the digests published with the source.
import { createHash } from "node:crypto";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { build } from "esbuild";

const here = new URL(".", import.meta.url).pathname;
const dist = `${here}dist`;
mkdirSync(dist, { recursive: true });

await build({
  entryPoints: [`${here}src/main.ts`],
  bundle: true,
  format: "esm",
  target: "chrome120",
  minify: true,
  legalComments: "none",
  charset: "utf8",
  outfile: `${dist}/app.js`,
  logLevel: "warning",
});

const sri = (data) => `sha384-${createHash("sha384").update(data).digest("base64")}`;
const app = readFileSync(`${dist}/app.js`);
const style = readFileSync(`${here}static/style.css`);
writeFileSync(`${dist}/style.css`, style);
const page = readFileSync(`${here}static/index.html`, "utf8").replace("%APP_SRI%", sri(app)).replace("%STYLE_SRI%", sri(style));
writeFileSync(`${dist}/index.html`, page);

const files = ["app.js", "index.html", "style.css"];
const sums = files.map((f) => `${createHash("sha256").update(readFileSync(`${dist}/${f}`)).digest("hex")}  ${f}\n`).join("");
writeFileSync(`${dist}/SHA256SUMS`, sums);
const sizes = files.map((f) => `${f} ${readFileSync(`${dist}/${f}`).length} bytes`).join(", ");
console.log(`web/dist: ${sizes}`);

if (process.argv.includes("--check")) {
  const published = readFileSync(`${here}SHA256SUMS`, "utf8");
  if (published !== sums) {
    console.error("web/SHA256SUMS differs from this build:\n" + sums + "(run `npm run build -- --publish` and commit web/SHA256SUMS)");
    process.exit(1);
  }
  console.log("the build matches web/SHA256SUMS");
}
if (process.argv.includes("--publish")) writeFileSync(`${here}SHA256SUMS`, sums);
