"""Synthetic studies and test data, outside the runtime: phantoms, demo samples, transfer-syntax writers, builders.

Never copied into a Lambda or gateway image; the tests, the benchmarks, training and the CLI's demo use it.
"""
