"""Command-line options that several `radstream` commands take, declared once."""

from __future__ import annotations

import argparse

DEFAULT_DATA_DIR = "radstream-data"


def add_data_dir(parser: argparse.ArgumentParser) -> None:
    """--data-dir: the folder holding the local buckets."""
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR, help=f"folder holding the local buckets (default: ./{DEFAULT_DATA_DIR})")
