"""Do a GPU's findings match the CPU's? Each model of the repository on the providers its config asks for against
the CPU provider of the same ONNX Runtime, on the same images; prints max |GPU - CPU| per output.

    python -m benchmarks.provider_agreement --model-config-name gpu
    python -m benchmarks.provider_agreement --model-config-name gpu --cuda-option use_tf32=1   # what TF32 does

Run it on a GPU machine with onnxruntime-gpu before serving a config there (README Performance: ONNX Runtime's
default TF32 moved the detector's boxes by 16 px on an H200). Without a CUDA provider it says so and exits 2.
The images are uniform noise in [0, 1) and all zeros (`--images` of each), batched as the config allows.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.triton_bench import REAL_REPOSITORY, add_cuda_option, read_config, with_cuda_options  # noqa: E402
from radstream.triton_server import gpu_execution_providers, iter_models, open_onnx_session  # noqa: E402


def inputs(config, images: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    batch = max(1, min(images, config.max_batch_size or 1))
    return [
        {i.name: rng.random((batch, *i.dims), dtype=np.float32) for i in config.input},
        {i.name: np.zeros((batch, *i.dims), np.float32) for i in config.input},
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-repository", type=Path, default=REAL_REPOSITORY)
    parser.add_argument("--model-config-name", default="gpu", metavar="NAME")
    parser.add_argument("--images", type=int, default=16)
    add_cuda_option(parser, "override a CUDA provider option (repeatable), e.g. use_tf32=1")
    args = parser.parse_args(argv)
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        print(
            f"no CUDA provider in this ONNX Runtime ({ort.__version__}: {', '.join(ort.get_available_providers())}): "
            "install onnxruntime-gpu on a GPU machine",
            file=sys.stderr,
        )
        return 2
    overrides = dict(o.split("=", 1) for o in args.cuda_option)
    print(f"ONNX Runtime {ort.__version__}; configs/{args.model_config_name}.pbtxt; CUDA overrides {overrides or 'none'}")
    worst = 0.0
    for model_dir in iter_models(args.model_repository):
        config = read_config(model_dir, args.model_config_name)
        providers = with_cuda_options(gpu_execution_providers(config), overrides)
        path = str(model_dir / "1" / "model.onnx")
        cpu = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        gpu = open_onnx_session(ort, path, ort.SessionOptions(), providers, lambda m, name=model_dir.name: print(f"  {name}: {m}"))
        options = gpu.get_provider_options().get("CUDAExecutionProvider", {})
        names = [o.name for o in cpu.get_outputs()]
        diffs = dict.fromkeys(names, 0.0)
        for feeds in inputs(config, args.images):
            for name, want, got in zip(names, cpu.run(None, feeds), gpu.run(None, feeds)):
                diffs[name] = max(diffs[name], float(np.max(np.abs(got.astype(np.float64) - want))))
        worst = max(worst, *diffs.values())
        print(
            f"{model_dir.name:<22} on {gpu.get_providers()[0]} (use_tf32={options.get('use_tf32')}): "
            + ", ".join(f"{n} {d:.1e}" for n, d in diffs.items())
        )
    print(f"largest difference: {worst:.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
