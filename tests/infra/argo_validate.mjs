// Validates Argo CD and Argo Rollouts objects against the schemas of their Go API types (npm's @kubernetes-models
// packages, generated from argoproj's pkg/apis v1alpha1). Reads a JSON array of objects from the file named first;
// prints a JSON array of "<kind>/<name>: <error>" strings. Types and enums are checked, not unknown keys.
import { readFileSync } from "node:fs";
import { pathToFileURL } from "node:url";
import path from "node:path";

const root = process.env.ARGO_NPM_DIR;
const models = {
  Application: "@kubernetes-models/argo-cd/argoproj.io/v1alpha1/Application.js",
  AppProject: "@kubernetes-models/argo-cd/argoproj.io/v1alpha1/AppProject.js",
  Rollout: "@kubernetes-models/argo-rollouts/argoproj.io/v1alpha1/Rollout.js",
  AnalysisTemplate: "@kubernetes-models/argo-rollouts/argoproj.io/v1alpha1/AnalysisTemplate.js",
};
const errors = [];
const docs = JSON.parse(readFileSync(process.argv[2], "utf8"));
for (const doc of docs) {
  const module = models[doc.kind];
  if (!module) { errors.push(`${doc.kind}/${doc.metadata?.name}: no model for this kind`); continue; }
  const loaded = await import(pathToFileURL(path.join(root, "node_modules", module)).href);
  const Model = loaded[doc.kind];
  try { new Model(doc).validate(); } catch (e) { errors.push(`${doc.kind}/${doc.metadata?.name}: ${e.message}`); }
}
process.stdout.write(JSON.stringify(errors));
