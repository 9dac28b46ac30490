"""benchmarks/gpu_check.sh --smoke: every stage of the prepared GPU session at toy size on the CPU, so that the script
cannot break unnoticed before a GPU is lent (issue 24)."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAGES = ("tests", "bench", "epoch_check", "ledger")


def test_gpu_check_smoke_runs_every_stage_and_writes_the_summary(tmp_path):
    out = tmp_path / "out"
    done = subprocess.run(["bash", os.path.join(ROOT, "benchmarks", "gpu_check.sh"), "--smoke", str(out)],
                          cwd=tmp_path, env={**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=900)
    log = (out / "log.txt").read_text() if (out / "log.txt").exists() else ""
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:] + log[-4000:]
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8 and all(p.is_file() for p in out.iterdir()), files
    assert {"summary.md", "tests.txt", "bench.md", "epoch_check.md", "ledger.md", "log.txt"} <= set(files)
    summary = (out / "summary.md").read_text().splitlines()
    # the README speed table's header and one row per benchmarked pair, ready to paste
    assert summary[0].startswith("| pair | device | reference img/s | fast img/s |")
    row = next(line for line in summary if line.startswith("| resnet8 → resnet8 |"))
    assert len(row.strip("|").split("|")) == len(summary[0].strip("|").split("|")) and "failed" not in row
    for stage in STAGES:
        assert any(line.startswith(f"| {stage} | passed |") for line in summary), (stage, summary)
    assert " passed" in (out / "tests.txt").read_text() and " failed" not in (out / "tests.txt").read_text()
