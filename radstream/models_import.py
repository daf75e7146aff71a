"""Swap real weights into the model repository: torchxrayvision's DenseNet -> chest_xray_classifier.

RadStream ships reference models trained on synthetic phantoms. A user who has real weights (for
example a torchxrayvision DenseNet-121 checkpoint they downloaded elsewhere) exports them into the
classifier slot with::

    radstream models import-torchxrayvision densenet121-res224-chex.pt --weights-name densenet121-res224-chex --allow-pickle

The export (torch) writes the ONNX file and a spec (docs/model-lifecycle.md); the import proper is the generic one,
`radstream.model_lifecycle.import_model`: checked on sample studies, a new version with its own configs and model card,
the live version untouched (`radstream models activate chest_xray_classifier <version>` makes it live). The weights'
sha256 is in the model card and in every result's provenance.

The export needs the training environment (training/requirements.txt: torch, torchxrayvision, onnx, onnxruntime),
which `make venv-train` builds as .venv-train; run from .venv (no torch), the command runs the export there
(`--export-to`) and the import here. This module itself imports without torch. Nothing is downloaded: the weights
file must be local.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from collections.abc import Sequence

from synthetic.phantoms import FINDINGS

CLASSIFIER = "chest_xray_classifier"
INPUT_SIZE = 224
OPSET = 17
# our label -> torchxrayvision pathology name
XRV_NAMES = {f: ("Effusion" if f == "Pleural Effusion" else f) for f in FINDINGS}
REPO_ROOT = Path(__file__).resolve().parent.parent
# The environment `make venv-train` builds (training/requirements.txt): the one that has torch.
TRAIN_PYTHON = REPO_ROOT / ".venv-train" / "bin" / "python"
TORCH_MODULES = ("torch", "torchxrayvision", "onnx")
SETUP_COMMAND = "make venv-train"
EXIT_REFUSED = 2


class ImportRefused(ValueError):
    """The import cannot start or cannot finish; the message says why and what to do."""


def missing_modules() -> list[str]:
    return [name for name in TORCH_MODULES if importlib.util.find_spec(name) is None]


def torch_missing_message(missing: Sequence[str]) -> str:
    return (
        f"importing torchxrayvision weights needs {', '.join(missing)}, which this Python ({sys.prefix}) does not have. "
        f"Run `{SETUP_COMMAND}` once from the repository root: it builds .venv-train from training/requirements.txt "
        "(CPU-only torch); `radstream models import-torchxrayvision` then runs the import there."
    )


def check_weights_file(weights: Path) -> None:
    if not weights.exists():
        raise ImportRefused(f"weights file {weights} does not exist")
    if not weights.is_file():
        raise ImportRefused(f"weights file {weights} is not a file")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def next_version(folder: Path) -> int:
    """One past the highest version folder (1 for an empty slot): each import is a new version."""
    versions = [int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit()] if folder.is_dir() else []
    return max(versions, default=0) + 1


_CONFIG_TEMPLATE = """# {title}
# I/O contract: docs/models.md. Dims exclude the batch dimension (max_batch_size > 0).
name: "{name}"
backend: "onnxruntime"
max_batch_size: 16
input [
  {{
    name: "image"
    data_type: TYPE_FP32
    dims: [ 1, {size}, {size} ]
  }}
]
output [
{outputs}
]
{batching}{placement}parameters: {{
  key: "radstream.normalization"
  value: {{ string_value: "{norm}" }}
}}
parameters: {{
  key: "radstream.kind"
  value: {{ string_value: "{kind}" }}
}}
parameters: {{
  key: "radstream.provenance"
  value: {{ string_value: "{provenance}" }}
}}
"""


_PRIORITY = """  # Stat (1) and urgent (2) requests are taken from the queue before routine ones (3, the default): shared/priority.py.
  priority_levels: 3
  default_priority_level: 3
"""
_BATCHING = f"""dynamic_batching {{
{_PRIORITY}  preferred_batch_size: [ 4, 8, 16 ]
  max_queue_delay_microseconds: 2000
}}
"""
# On CPU the classifier and the encoder batch best with no queue delay and no preferred sizes: the batcher still
# merges what queues while the model runs, and a lone request is not held back (benchmarks/triton_bench.py
# --variant, README Performance: 1.2-1.5x at concurrency 1 and 16). The detector measured no better either way,
# so it keeps the 2 ms delay. GPU configs do not merge requests on the server (measured on an H200: the reason is in
# the text); their batcher only takes the more urgent first.
_CPU_NO_DELAY = f"""# Measured on CPU (README Performance): no queue delay, no preferred sizes.
dynamic_batching {{
{_PRIORITY}  max_queue_delay_microseconds: 0
}}
"""
_GPU_PRIORITY_ONLY = f"""# On the GPU the dynamic batcher only orders the queue, it never merges requests (preferred_batch_size [ 1 ], no
# queue delay): ONNX Runtime's CUDA provider pays for every change of batch size from one call to the next, even
# among sizes it has run before: 83 ms a call for the classifier against 0.3-0.8 ms at any fixed size on an H200
# (8-13 ms with cudnn_conv_algo_search DEFAULT or HEURISTIC, still 10-40x), and merging hands it a different size
# almost every call. Through Triton at concurrency 16 that made batching 14-17x slower than none, p95 200-670 ms
# (README Performance). A client that wants batches sends them: 16 images a request ran 5x the images/s of one.
dynamic_batching {{
{_PRIORITY}  preferred_batch_size: [ 1 ]
  max_queue_delay_microseconds: 0
}}
"""


def _batching(kind: str, placement: str) -> str:
    if placement == "gpu":
        return _GPU_PRIORITY_ONLY
    return _CPU_NO_DELAY if kind in ("classifier", "encoder") else _BATCHING


_PLACEMENT = {
    "cpu": """# CPU: the embedded runtime, a local Triton and k8s/overlays/cpu. On GPU nodes Triton loads
# configs/gpu.pbtxt instead (--model-config-name=gpu in k8s/base): GPU instances, TensorRT.
instance_group [
  {
    kind: KIND_CPU
    count: 1
  }
]
""",
    "gpu": """# One instance on the node's GPU (g4dn.xlarge: one T4). Triton fails to load the model, and the pod stays
# unready, if there is no GPU: it never falls back to the CPU silently.
instance_group [
  {
    kind: KIND_GPU
    count: 1
  }
]
# ONNX Runtime: TensorRT where it can (engines cached under /tmp, rebuilt when a pod starts), CUDA for the
# rest. FP32, not FP16: half precision moves probabilities by ~1e-3, enough to flip a finding that sits on
# its threshold; change precision_mode only after the thresholds are re-validated at FP16. CUDA without TF32
# (use_tf32 0): on Ampere and newer GPUs ONNX Runtime's CUDA provider rounds convolutions to TF32 by default,
# which moved the classifier's probabilities by 2.5e-4 and the detector's boxes by up to 16 px against the CPU
# on an H200 (1.8e-7 and 1.5e-5 without it; README Performance). Triton maps no such switch for TensorRT:
# measure its agreement before serving from TensorRT on an Ampere or newer GPU (a T4 has no TF32).
optimization {
  execution_accelerators {
    gpu_execution_accelerator [
      {
        name: "tensorrt"
        parameters { key: "precision_mode" value: "FP32" }
        parameters { key: "max_workspace_size_bytes" value: "1073741824" }
        parameters { key: "trt_engine_cache_enable" value: "1" }
        parameters { key: "trt_engine_cache_path" value: "/tmp/trt-engines" }
      },
      {
        name: "cuda"
        parameters { key: "cudnn_conv_use_max_workspace" value: "1" }
        parameters { key: "use_tf32" value: "0" }
      }
    ]
  }
}
""",
}
GPU_CONFIG = Path("configs") / "gpu.pbtxt"  # what Triton loads on GPU nodes (services/triton/k8s/base)


def triton_config(
    name: str,
    title: str,
    size: int,
    normalization: str,
    kind: str,
    outputs: Sequence[tuple[str, str, Sequence[int], str | None]],
    provenance: str,
    placement: str = "cpu",
) -> str:
    """config.pbtxt text for one of RadStream's models (outputs: name, TYPE_*, dims, label file or None).

    placement "gpu" gives configs/gpu.pbtxt: the same model with GPU instances and TensorRT/CUDA.
    """
    blocks = []
    for oname, dtype, dims, label_file in outputs:
        lines = ["  {", f'    name: "{oname}"', f"    data_type: {dtype}", f"    dims: [ {', '.join(map(str, dims))} ]"]
        if label_file:
            lines.append(f'    label_filename: "{label_file}"')
        lines.append("  }")
        blocks.append("\n".join(lines))
    return _CONFIG_TEMPLATE.format(
        title=title,
        name=name,
        size=size,
        outputs=",\n".join(blocks),
        norm=normalization,
        kind=kind,
        provenance=provenance,
        placement=_PLACEMENT[placement],
        batching=_batching(kind, placement),
    )


_TV_STUB_LIB = None


def _import_torchxrayvision():
    """Import torchxrayvision even where torchvision's C++ ops cannot load.

    The PyPI torchvision wheel is built against CUDA torch; beside the CPU torch its ``_C`` extension
    fails to load and torchvision's import then dies registering fake kernels for ``torchvision::nms``.
    torchxrayvision's DenseNet uses no torchvision op, so we define the two op schemas (no kernels)
    and import again.
    """
    global _TV_STUB_LIB
    try:
        import torchxrayvision as xrv

        return xrv
    except RuntimeError as exc:
        if "torchvision::" not in str(exc):
            raise
    import torch

    for mod in [
        m
        for m in sys.modules
        if m == "torchvision" or m.startswith("torchvision.") or m == "torchxrayvision" or m.startswith("torchxrayvision.")
    ]:
        del sys.modules[mod]
    if _TV_STUB_LIB is None:
        lib = torch.library.Library("torchvision", "FRAGMENT")
        for schema in (
            "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
            "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
        ):
            try:
                lib.define(schema)
            except RuntimeError:
                pass  # already defined
        _TV_STUB_LIB = lib
    import torchxrayvision as xrv

    return xrv


def _state_dict_from(obj, torch):
    """A plain state dict from a state dict, a {'state_dict'|'model': ...} checkpoint or a whole module."""
    meta = {}
    if isinstance(obj, torch.nn.Module):
        if getattr(obj, "pathologies", None) is not None:
            meta["pathologies"] = list(obj.pathologies)
        obj = obj.state_dict()
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if key in obj and isinstance(obj[key], (dict, torch.nn.Module)):
                inner, inner_meta = _state_dict_from(obj[key], torch)
                return inner, {**inner_meta, **meta}
        state = {k[len("module.") :] if k.startswith("module.") else k: v for k, v in obj.items()}
        if not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise ValueError("weights file holds no state dict of tensors")
        return state, meta
    raise ValueError(f"unsupported weights object {type(obj).__name__}")


def export_torchxrayvision(
    weights: Path | None,
    out_dir: Path,
    *,
    random_init: bool = False,
    weights_name: str | None = None,
    pathologies: Sequence[str] | None = None,
    op_threshs: Sequence[float] | None = None,
    allow_pickle: bool = False,
) -> tuple[Path, Path]:
    """Export a torchxrayvision DenseNet from a local weights file to ``out_dir/model.onnx`` and its spec
    ``out_dir/spec.yaml`` (JSON, which is YAML), for ``radstream.model_lifecycle.import_model``.

    - ``weights``: a state dict, a checkpoint dict holding one, or (``allow_pickle=True``, only for
      files you trust: unpickling runs code) a whole pickled model as torchxrayvision distributes them.
    - ``random_init``: skip loading (tests); ``weights`` may then be None.
    - ``weights_name``: a torchxrayvision weights name (e.g. ``densenet121-res224-chex``) whose label list,
      operating points and input resolution are taken from torchxrayvision's registry (no download).
    - ``pathologies`` / ``op_threshs``: override the model's output labels / operating points.

    Output ``probabilities`` [N, 5] in our label order (torchxrayvision's "Effusion" is our
    "Pleural Effusion"): sigmoid of the logits, or torchxrayvision's operating-point normalisation
    (0.5 = the operating point) when operating points are known. Returns (model.onnx, spec.yaml).
    """
    if weights is None and not random_init:
        raise ValueError("weights is required unless random_init=True")
    missing = missing_modules()
    if missing:
        raise ImportRefused(torch_missing_message(missing))
    if not random_init:
        check_weights_file(Path(weights))  # type: ignore[arg-type]

    import numpy as np
    import onnxruntime as ort
    import torch

    xrv = _import_torchxrayvision()

    model = xrv.models.DenseNet(weights=None)
    labels = list(xrv.datasets.default_pathologies)
    thr = None
    source = "random initialisation (test only: meaningless outputs)"
    meta: dict = {}
    if weights_name is not None:
        entry = xrv.models.model_urls.get(weights_name)
        if entry is None:
            raise ValueError(f"unknown torchxrayvision weights name {weights_name!r}")
        if entry.get("input_resolution", INPUT_SIZE) != INPUT_SIZE:
            raise ValueError(f"{weights_name} expects {entry['input_resolution']} px input; this slot is {INPUT_SIZE}")
        labels = list(entry["labels"])
        thr = entry.get("op_threshs")
    digest = None
    if not random_init:
        weights = Path(weights)  # type: ignore[arg-type]
        digest = file_sha256(weights)
        try:
            obj = torch.load(weights, map_location="cpu", weights_only=True)
        except Exception as exc:
            if not allow_pickle:
                raise ImportRefused(
                    f"{weights} is not a plain state dict ({type(exc).__name__}); torchxrayvision's own .pt files "
                    "are pickled models: pass --allow-pickle (allow_pickle=True) if you trust the file, since unpickling runs its code"
                ) from exc
            obj = torch.load(weights, map_location="cpu", weights_only=False)
        state, meta = _state_dict_from(obj, torch)
        saved_thr = state.pop("op_threshs", None)
        if saved_thr is not None and thr is None:
            thr = saved_thr.tolist()
        model.load_state_dict(state, strict=True)
        source = f"local weights file `{weights.name}` (sha256 {digest})"
    if meta.get("pathologies") and pathologies is None and weights_name is None:
        labels = list(meta["pathologies"])
    if pathologies is not None:
        labels = list(pathologies)
    if op_threshs is not None:
        thr = list(op_threshs)
    if len(labels) != model.classifier.out_features:
        raise ValueError(f"{len(labels)} pathology names for {model.classifier.out_features} outputs")
    missing = [f for f, n in XRV_NAMES.items() if n not in labels]
    if missing:
        raise ValueError(f"the model does not predict {missing}; its pathologies: {labels}")
    index = [labels.index(XRV_NAMES[f]) for f in FINDINGS]
    op = None
    if thr is not None:
        op = [float(thr[i]) for i in index]
        if any(v != v for v in op):  # NaN: no operating point for one of ours
            op = None

    class Wrapped(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = model
            self.register_buffer("index", torch.tensor(index, dtype=torch.long))
            self.use_op = op is not None
            self.register_buffer("op", torch.tensor(op if op is not None else [0.5] * len(FINDINGS)))

        def forward(self, x):
            logits = self.net.classifier(self.net.features2(x))
            p = torch.sigmoid(torch.index_select(logits, 1, self.index))
            if self.use_op:  # torchxrayvision's op_norm, written without boolean-mask assignment
                lo = p / (self.op * 2)
                hi = 1.0 - (1.0 - p) / ((1.0 - self.op) * 2)
                p = torch.where(p < self.op, lo, hi)
            return p

    wrapped = Wrapped().eval()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = out_dir / "model.onnx"
    torch.onnx.export(
        wrapped,
        (torch.zeros(2, 1, INPUT_SIZE, INPUT_SIZE),),
        str(onnx_path),
        dynamo=False,
        opset_version=OPSET,
        input_names=["image"],
        output_names=["probabilities"],
        dynamic_axes={"image": {0: "batch"}, "probabilities": {0: "batch"}},
        do_constant_folding=True,
    )
    # the exported graph must agree with torch
    x = (np.random.default_rng(0).random((3, 1, INPUT_SIZE, INPUT_SIZE), dtype=np.float32) * 2 - 1) * 1024
    with torch.no_grad():
        ref = wrapped(torch.from_numpy(x)).numpy()
    got = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]
    if not np.allclose(ref, got, atol=1e-4):
        raise AssertionError(f"onnxruntime output differs from torch by {float(np.abs(ref - got).max())}")
    weights_desc = (
        "random initialisation (test only)" if random_init or weights is None else f"weights {Path(weights).name} sha256 {digest}"
    )
    spec = xrv_spec(labels, op, source, weights_name, getattr(xrv, "__version__", "?"), weights_desc)
    spec_path = out_dir / "spec.yaml"
    spec_path.write_text(json.dumps(spec, indent=2) + "\n")
    return onnx_path, spec_path


def xrv_spec(labels: list[str], op: list[float] | None, source: str, weights_name: str | None, xrv_version: str, weights_desc: str) -> dict:
    """The spec of an exported torchxrayvision DenseNet (docs/model-lifecycle.md): the classifier slot, 224 px, xrv."""
    mapping = "\n".join(f"| {f} | {XRV_NAMES[f]} | {labels.index(XRV_NAMES[f])} |" for f in FINDINGS)
    post = (
        "torchxrayvision operating-point normalisation (0.5 = operating point): " + json.dumps(dict(zip(FINDINGS, op))) if op else "sigmoid"
    )
    return {
        "model": CLASSIFIER,
        "kind": "classifier",
        "title": "torchxrayvision DenseNet-121 (imported weights)",
        "input": {"name": "image", "size": INPUT_SIZE, "channels": 1, "normalization": "xrv", "letterbox": True},
        "outputs": {"labels": list(FINDINGS), "thresholds": {f: 0.5 for f in FINDINGS}},
        "provenance": f"torchxrayvision DenseNet-121, {weights_desc}, not validated by RadStream".replace('"', "'").replace("\\", "/"),
        "intended_use": "Chest radiographs, as far as the weights' provider validated them; choose real thresholds on your own validation data",
        "limitations": "RadStream has not validated these weights; until they are validated for your use, treat outputs as not for clinical use",
        "notes": (
            f"- architecture: `torchxrayvision.models.DenseNet` (torchxrayvision {xrv_version})\n- source: {source}\n"
            f"- torchxrayvision weights name: {weights_name or 'not given'}\n- output post-processing: {post}\n\n"
            f"| our label | torchxrayvision pathology | model output index |\n|---|---|---|\n{mapping}\n"
        ),
    }


def import_torchxrayvision(weights: Path | None, repo: Path, *, weights_name: str | None = None, allow_pickle: bool = False) -> Path:
    """Export, then the generic import into ``repo/chest_xray_classifier`` as a new version (needs torch and the
    service packages in one Python). Returns the new version's folder."""
    import tempfile

    from radstream.model_lifecycle import import_model

    with tempfile.TemporaryDirectory(prefix="radstream-xrv-") as tmp:
        onnx_path, spec_path = export_torchxrayvision(weights, Path(tmp), weights_name=weights_name, allow_pickle=allow_pickle)
        return import_model(onnx_path, spec_path, Path(repo)).folder


def run_import(
    weights: Path,
    repo: Path,
    *,
    weights_name: str | None = None,
    allow_pickle: bool = False,
    train_python: Path | None = None,
    export_to: Path | None = None,
    out=None,
    err=None,
) -> int:
    """The `radstream models import-torchxrayvision` command: torch first, then the file, then the export and the import.

    Without torch here but with the training environment built, the export runs there (same arguments, `--export-to`
    a temporary folder) and the generic import here. `export_to`: only export (what the training environment is asked).
    """
    import tempfile

    out, err = out or sys.stdout, err or sys.stderr
    missing = missing_modules()
    train_python = TRAIN_PYTHON if train_python is None else train_python
    # Not the same environment: two venvs' pythons are links to one interpreter, so compare the environments, not the binaries.
    delegate = bool(missing) and train_python.is_file() and Path(sys.prefix).resolve() != train_python.parent.parent.resolve()
    if missing and not delegate:
        print(f"radstream: {torch_missing_message(missing)}", file=err)
        return EXIT_REFUSED
    weights, repo = Path(weights).absolute(), Path(repo).absolute()
    try:
        check_weights_file(weights)
    except ImportRefused as e:
        print(f"radstream: {e}", file=err)
        return EXIT_REFUSED
    if export_to is not None:
        try:
            export_torchxrayvision(weights, Path(export_to), weights_name=weights_name, allow_pickle=allow_pickle)
        except (ImportRefused, ValueError) as e:
            print(f"radstream: {e}", file=err)
            return EXIT_REFUSED
        return 0
    with tempfile.TemporaryDirectory(prefix="radstream-xrv-") as tmp:
        if delegate:
            argv = [str(train_python), "-m", "radstream.models_import", str(weights), "--export-to", tmp]
            argv += (["--weights-name", weights_name] if weights_name else []) + (["--allow-pickle"] if allow_pickle else [])
            env = os.environ | {"PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
            code = subprocess.run(argv, env=env, check=False).returncode
            if code:
                return code
        else:
            try:
                export_torchxrayvision(weights, Path(tmp), weights_name=weights_name, allow_pickle=allow_pickle)
            except (ImportRefused, ValueError) as e:
                print(f"radstream: {e}", file=err)
                return EXIT_REFUSED
        from radstream.model_lifecycle import ImportRefused as Refused, import_model

        try:
            imported = import_model(Path(tmp) / "model.onnx", Path(tmp) / "spec.yaml", repo)
        except Refused as e:
            print(f"radstream: {e}", file=err)
            return EXIT_REFUSED
    print(
        f"imported {weights.name} (sha256 {file_sha256(weights)}) as {CLASSIFIER} version {imported.version} in {imported.folder}; "
        f"live unchanged: `radstream models activate {CLASSIFIER} {imported.version}` makes it live",
        file=out,
    )
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("weights", help="path of the torchxrayvision DenseNet weights file (.pt)")
    parser.add_argument("--model-repository", help="Triton model repository (default: services/triton/model_repository)")
    parser.add_argument(
        "--weights-name", help="torchxrayvision weights name (e.g. densenet121-res224-chex): its labels, operating points and input size"
    )
    parser.add_argument(
        "--allow-pickle",
        action="store_true",
        help="load a pickled model (torchxrayvision publishes its weights that way); unpickling runs code: only for files you trust",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m radstream.models_import", description="import torchxrayvision weights into chest_xray_classifier"
    )
    add_arguments(parser)
    parser.add_argument(
        "--export-to", help="only export: write model.onnx and spec.yaml into this folder (the training environment's half)"
    )
    args = parser.parse_args(argv)
    repo = Path(args.model_repository) if args.model_repository else REPO_ROOT / "services" / "triton" / "model_repository"
    export_to = Path(args.export_to) if args.export_to else None
    return run_import(Path(args.weights), repo, weights_name=args.weights_name, allow_pickle=args.allow_pickle, export_to=export_to)


if __name__ == "__main__":
    sys.exit(main())
