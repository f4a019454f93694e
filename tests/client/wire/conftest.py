"""Every test of the wire codec runs on both of its paths (tests/fixtures/codec_paths.py)."""

from tests.fixtures.codec_paths import codec_path  # noqa: F401
