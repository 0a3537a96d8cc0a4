"""The README's reference-results section is generated from the committed folders (tools/readme_results.py)
and is not stale; the tool rewrites it between its markers and sees a changed result."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "readme_results.py"


def tool():
    spec = importlib.util.spec_from_file_location("readme_results", TOOL)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod          # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def test_readme_results_section_is_up_to_date():
    proc = subprocess.run([sys.executable, str(TOOL), "--check"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr + "\n(run: python tools/readme_results.py)"


def test_section_follows_the_folder(tmp_path):
    rr = tool()
    src = ROOT / "results/reference/issue16_track1/acc1000"
    folder = tmp_path / "results/ref"
    folder.mkdir(parents=True)
    for f in src.glob("fp16_acc1000.*"):
        shutil.copy(f, folder)
    block = rr.Block("results/ref", "The float model.", ("table1", "evaluations"))
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\nbefore\n{rr.BEGIN}\nold text\n{rr.END}\nafter\n")
    text = rr.replace_section(readme.read_text(), rr.render((block,), tmp_path), readme)
    assert text.startswith("# x\n\nbefore\n") and text.endswith(f"{rr.END}\nafter\n")
    assert "old text" not in text and "26.20 ± 1.38" in text and "#### Table 1" in text
    assert "| fp16_acc1000 | mmlu_continuation | 1,000 of 14,042 |" in text
    # a changed result changes the section
    record = folder / "fp16_acc1000.json"
    data = json.loads(record.read_text())
    data["metrics"]["pretrain"]["arc_easy"]["acc_norm"] = 0.5
    data["metrics"]["pretrain"]["arc_easy"]["table_value"] = 0.5
    record.write_text(json.dumps(data))
    changed = rr.replace_section(text, rr.render((block,), tmp_path), readme)
    assert changed != text and "50.00 ±" in changed


def test_missing_markers_is_one_line_error(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# no markers\n")
    proc = subprocess.run([sys.executable, str(TOOL), "--check", "--readme", str(readme)], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1 and "BEGIN GENERATED" in proc.stderr
