"""The package itself: importing it is cheap, and the layout installs as documented."""

from __future__ import annotations

import subprocess
import sys


def test_import_sparsebench_is_cheap():
    code = ("import sys, sparsebench; heavy = [m for m in ('torch', 'transformer_lens', 'pandas', 'matplotlib') "
            "if m in sys.modules]; print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"import sparsebench pulled in: {out.stdout.strip()}"


def test_top_level_folders_install_under_the_package():
    import sparsebench.baselines
    import sparsebench.leaderboard
    import sparsebench.mechanisms
    import sparsebench.tasks

    for mod in (sparsebench.tasks, sparsebench.mechanisms, sparsebench.baselines, sparsebench.leaderboard):
        assert mod.__name__.startswith("sparsebench.")
    out = subprocess.run([sys.executable, "-c", "import tasks"], capture_output=True, text=True,
                         cwd="/")  # no bare top-level module named `tasks` is installed
    assert out.returncode != 0
