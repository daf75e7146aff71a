"""benchmarks/triton_bench.py's config edits: what it serves must be what it says it serves."""

from __future__ import annotations

from pathlib import Path

from benchmarks.triton_bench import Level, add_warmup, best_batches, edited_copy, read_config

REPOSITORY = Path(__file__).resolve().parents[2] / "services" / "triton" / "model_repository"


def test_warmup_all_covers_every_batch_size_with_the_models_inputs():
    config = read_config(REPOSITORY / "chest_xray_classifier")
    add_warmup(config)
    assert [w.batch_size for w in config.model_warmup] == list(range(1, config.max_batch_size + 1))
    for warmup in config.model_warmup:
        ((name, given),) = warmup.inputs.items()
        assert name == config.input[0].name and list(given.dims) == list(config.input[0].dims) and given.zero_data


def test_edits_reach_the_named_config_and_only_it(tmp_path):
    served = edited_copy(
        REPOSITORY, tmp_path / "copy", dynamic_batching=True, queue_delay_us=500, instances=2, config_name="gpu", warmup=True
    )
    for model in ("chest_xray_classifier", "anomaly_detector", "report_encoder"):
        gpu, cpu = read_config(served / model, "gpu"), read_config(served / model)
        assert gpu.dynamic_batching.max_queue_delay_microseconds == 500  # the GPU configs have none: the edit adds it
        assert [g.count for g in gpu.instance_group] == [2] and gpu.model_warmup
        assert cpu == read_config(REPOSITORY / model)  # config.pbtxt untouched
        assert gpu.optimization == read_config(REPOSITORY / model, "gpu").optimization


def test_best_batch_is_against_batch_one_of_the_same_serving():
    levels = [Level("batch1", "m", c, 100, 0, 1.0, [1.0], b) for c, b in ((1, 1), (16, 1), (16, 4))]
    levels[1].completed = 300  # 300 images/s at batch 1, concurrency 16
    levels[2].completed = 200  # 200 requests of 4 images: 800 images/s
    assert best_batches(levels) == ["batch1 m: batch 1 300.0 images/s (c=16); best batch 4 800.0 images/s (c=16): 2.67x"]


def test_provider_agreement_refuses_without_a_gpu_provider(capsys):
    import onnxruntime as ort

    from benchmarks import provider_agreement

    if "CUDAExecutionProvider" in ort.get_available_providers():  # a GPU build: it compares, and the configs agree
        assert provider_agreement.main([]) == 0
        assert "largest difference" in capsys.readouterr().out
    else:
        assert provider_agreement.main([]) == 2
        assert "no CUDA provider" in capsys.readouterr().err


def test_provider_agreement_feeds_noise_and_zeros_batched_as_the_config_allows():
    from benchmarks.provider_agreement import inputs

    config = read_config(REPOSITORY / "anomaly_detector", "gpu")
    noise, zeros = inputs(config, 16)
    assert noise["image"].shape == zeros["image"].shape == (min(16, config.max_batch_size), *config.input[0].dims)
    assert 0 <= noise["image"].min() and noise["image"].max() < 1 and not zeros["image"].any()


def test_a_cuda_variant_sets_the_gpu_configs_cuda_parameters_and_refuses_a_config_without_them(tmp_path):
    import pytest

    from benchmarks.triton_bench import apply_edits, parse_variant

    name, edits = parse_variant("heur=cuda:cudnn_conv_algo_search=HEURISTIC/use_tf32=1")
    config = read_config(REPOSITORY / "chest_xray_classifier", "gpu")
    apply_edits(config, edits)
    (cuda,) = [a for a in config.optimization.execution_accelerators.gpu_execution_accelerator if a.name == "cuda"]
    assert name == "heur" and cuda.parameters["cudnn_conv_algo_search"] == "HEURISTIC" and cuda.parameters["use_tf32"] == "1"
    assert cuda.parameters["cudnn_conv_use_max_workspace"] == "1"  # the others kept
    with pytest.raises(SystemExit, match="no cuda accelerator"):
        apply_edits(read_config(REPOSITORY / "chest_xray_classifier"), edits)
