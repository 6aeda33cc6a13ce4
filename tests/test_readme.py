"""The README's promises: its test command is what CI runs, and its pandas example runs."""
import contextlib
import io
import re

from tests.conftest import REPO_ROOT

README = (REPO_ROOT / "README.md").read_text()


def _bash_commands() -> list[str]:
    block = re.search(r"```bash\n(.*?)```", README, re.S).group(1)
    return [line for line in block.splitlines() if line.strip()]


def test_readme_starts_with_install_and_test_commands():
    install, test = _bash_commands()[:2]
    assert "pip install -e ." in install and install.endswith("i2e build")
    assert "pytest" in test


def test_ci_runs_exactly_the_readme_test_command():
    ci = (REPO_ROOT / ".ci" / "run").read_text().splitlines()
    assert _bash_commands()[1] in ci


def test_pandas_example_runs_on_a_real_build(demo_build, monkeypatch):
    out, _ = demo_build
    code = re.search(r"```python\n(.*?)```", README, re.S).group(1)
    code = code.replace('out = "i2e_out"', f'out = "{out}"')
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(code, "README.md", "exec"), {})
    text = printed.getvalue()
    assert "image_entity_score" in text and "duplicate_sha256" in text
