"""The wheel carries every module, every environment YAML (a wheel install registers every id) and the
shipped controllers."""

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_wheel_carries_every_module_and_every_yaml(tmp_path):
    process = subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation",
                              "-q", "-w", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert process.returncode == 0, process.stderr[-2000:]
    (wheel,) = tmp_path.glob("dp_gym-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {str(p.relative_to(ROOT)) for p in [*ROOT.glob("dp_gym/**/*.py"), *ROOT.glob("agents/**/*.py")]}
    assert modules and modules <= names, sorted(modules - names)
    yamls = {"dp_gym/" + str(p.relative_to(ROOT)) for p in ROOT.glob("envs_configs/**/*.yaml")}
    assert len(yamls) >= 13 and yamls <= names, sorted(yamls - names)
    shipped = {str(p.relative_to(ROOT)) for p in ROOT.glob("agents/pretrained/*/*/*") if p.suffix in (".zip", ".json")}
    assert shipped and shipped <= names, sorted(shipped - names)
