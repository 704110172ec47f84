"""README.md's generated tables are what bench/readme_tables.py writes from their sources (the solver registry, the
CSVs in bench/results/): a solver registered or changed, or a bench rerun, without the README regenerated fails here."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def check(*args: str) -> subprocess.CompletedProcess:
    # run as a user runs it: the script's folder on sys.path, so that it imports bench/common.py
    return subprocess.run([sys.executable, "bench/readme_tables.py", "--check", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


def test_every_readme_table_is_what_the_generator_writes():
    proc = check()
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_check_names_an_out_of_date_table_and_writes_nothing(tmp_path):
    readme = tmp_path / "README.md"
    stale = (ROOT / "README.md").read_text().replace("<!-- table:solvers -->\n", "<!-- table:solvers -->\nold text\n")
    readme.write_text(stale)
    proc = check("--readme", str(readme), "solvers", "quality")
    assert proc.returncode == 1 and "out-of-date tables solvers:" in proc.stderr, proc.stdout + proc.stderr
    assert readme.read_text() == stale
