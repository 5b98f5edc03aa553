"""A plain `pip install .` carries the task catalogue and the labelling page."""

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).parents[1]


def test_wheel_holds_the_catalogue_and_the_page(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp_path)], check=True, timeout=300)
    (wheel,) = tmp_path.glob("rlhf_control-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for suite in ("classic", "mujoco", "atari"):
        assert f"rlhf_control/envs/{suite}.toml" in names
    for page in ("index.html", "app.js", "style.css"):
        assert f"rlhf_control/web/static/{page}" in names
    assert "rlhf_control/cli.py" in names
