"""The generated tables of README.md and the docs pages are what bench/readme_tables.py writes from their sources (the
solver registry, the CSVs in bench/results/): a solver registered or changed, or a bench rerun, without the tables
regenerated fails here. Every registered table is checked, each in the page that holds it."""
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def check(*args: str) -> subprocess.CompletedProcess:
    # run as a user runs it: the script's folder on sys.path, so that it imports bench/common.py
    return subprocess.run([sys.executable, "bench/readme_tables.py", "--check", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


def copy_pages(to: Path) -> Path:
    """README.md and docs/ copied under `to`, for the checker's --root."""
    shutil.copy(ROOT / "README.md", to / "README.md")
    shutil.copytree(ROOT / "docs", to / "docs", ignore=shutil.ignore_patterns("*.png"))
    return to


def generator():
    """bench/readme_tables.py as a module (imported as the script imports: bench/ on sys.path)."""
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import readme_tables
    finally:
        sys.path.remove(str(ROOT / "bench"))
    return readme_tables


def test_every_table_is_what_the_generator_writes():
    proc = check()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    tables = generator()
    # "up to date: PAGE: NAME, NAME; PAGE: NAME": each registered table was checked, in its page
    checked = {name: page for page, names in (part.split(": ") for part in
                                              proc.stdout.strip().removeprefix("up to date: ").split("; "))
               for name in names.split(", ")}
    assert checked == {name: tables.page_of(name) for name in tables.TABLES}, proc.stdout


def test_the_check_names_an_out_of_date_table_and_its_page_and_writes_nothing(tmp_path):
    root = copy_pages(tmp_path)
    page = root / "docs" / "samplers.md"
    stale = page.read_text().replace("<!-- table:solvers -->\n", "<!-- table:solvers -->\nold text\n")
    page.write_text(stale)
    readme = root / "README.md"  # a table no bench registers (yet) is left alone
    readme.write_text(readme.read_text() + "\n<!-- table:not_registered -->\nanything\n<!-- /table:not_registered -->\n")
    proc = check("--root", str(root), "solvers", "quality")
    assert proc.returncode == 1 and "out-of-date tables: docs/samplers.md: solvers (run" in proc.stderr, \
        proc.stdout + proc.stderr
    assert page.read_text() == stale


def test_a_table_in_a_page_not_its_own_is_named(tmp_path):
    root = copy_pages(tmp_path)
    tables = generator()
    assert tables.misplaced_markers(root) == []
    readme = root / "README.md"
    readme.write_text(readme.read_text() + "\n<!-- table:solvers -->\n<!-- /table:solvers -->\n")
    assert tables.misplaced_markers(root) == ["README.md: table solvers (its page is docs/samplers.md)"]
