"""bench/split_digest.py: a split's fingerprint is its scenes' bytes, and bad input is one error line."""

import subprocess
import sys
from pathlib import Path

from bench.split_digest import split_digest

SCRIPT = Path(__file__).parents[1] / "bench" / "split_digest.py"


def test_the_digest_follows_the_scenes() -> None:
    """Same scenes, same digest; another split or another scene, another digest."""
    assert split_digest("val", [0, 1], 64) == split_digest("val", [0, 1], 64)
    assert split_digest("val", [0, 1], 64) != split_digest("test", [0, 1], 64)
    assert split_digest("val", [0, 1], 64) != split_digest("val", [0, 2], 64)


def test_an_unknown_split_is_one_error_line() -> None:
    r = subprocess.run([sys.executable, str(SCRIPT), "vall", "--size", "64"], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.startswith("error: unknown split 'vall'") and "Traceback" not in r.stderr
