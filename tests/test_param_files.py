"""Per-notebook parameter files are current, papermill ``-f`` injects exactly one notebook's keys, and the cpu
profile equals the notebooks' own defaults key for key."""

from __future__ import annotations

import ast
import json

import nbformat
import pytest
import yaml
from click.testing import CliRunner
from papermill.cli import papermill

from longalign import config, paths, profiles

STEMS = profiles.notebook_stems()


def test_param_files_are_current():
    stale = profiles.stale_param_files()
    assert not stale, f"stale or missing parameter files {stale}: run `{profiles.REGENERATE}` and commit configs/"


def _injected(tmp_path, stem: str, param_file) -> dict:
    """Run papermill's own CLI (``--prepare-only -f``) and read back the cell it injected."""
    out = tmp_path / f"{stem}.ipynb"
    result = CliRunner().invoke(papermill, ["--prepare-only", "-f", str(param_file),
                                            str(paths.NOTEBOOKS / f"{stem}.ipynb"), str(out)])
    assert result.exit_code == 0, result.output
    cells = [c for c in nbformat.read(out, as_version=4).cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, f"{stem}: papermill injected {len(cells)} parameter cells"
    tree = ast.parse(cells[0].source)
    return {node.targets[0].id: ast.literal_eval(node.value) for node in tree.body if isinstance(node, ast.Assign)}


@pytest.mark.parametrize("profile", config.PROFILES)
def test_papermill_f_injects_exactly_the_notebook_section(tmp_path, profile):
    whole = config.load_profile(profile)  # the one source, read independently of the generated files
    for stem in STEMS:
        declared = config.parameters_cell(paths.NOTEBOOKS / f"{stem}.ipynb")
        injected = _injected(tmp_path, stem, profiles.param_file(profile, stem))
        assert injected == whole.get(stem, {}), f"configs/{profile}/{stem}.yaml injects {injected}"
        assert set(injected) <= set(declared), f"{profile}/{stem}: undeclared {set(injected) - set(declared)}"


@pytest.mark.parametrize("stem", STEMS)
def test_cpu_profile_equals_the_parameters_cell(stem):
    defaults = config.parameters_cell(paths.NOTEBOOKS / f"{stem}.ipynb")
    cpu = config.load_profile("cpu").get(stem, {})
    for key, default in defaults.items():
        assert key in cpu, f"configs/cpu.yaml [{stem}] lacks {key!r} (notebook default {default!r}); add it"
        value = cpu[key]
        assert json.dumps(value) == json.dumps(default), \
            f"{stem}.{key}: configs/cpu.yaml has {value!r}, the parameters cell has {default!r}"
    extra = set(cpu) - set(defaults)
    assert not extra, f"configs/cpu.yaml [{stem}] has keys the notebook does not declare: {sorted(extra)}"


PROFILE = """# Profile "tiny": header comment
00_a:
  # why n is 3
  n: 3  # inline
  names: [x, y]

# a comment about the next section
01_b:
  nested:
    k: 1
"""


@pytest.fixture()
def tiny_project(tmp_path, monkeypatch):
    """A configs/ and notebooks/ of two notebooks, so the generator runs on something it can break."""
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "tiny.yaml").write_text(PROFILE)
    (tmp_path / "notebooks").mkdir()
    for stem in ("00_a", "01_b", "02_c"):
        nbformat.write(nbformat.v4.new_notebook(), tmp_path / "notebooks" / f"{stem}.ipynb")
    monkeypatch.setattr(paths, "CONFIGS", tmp_path / "configs")
    monkeypatch.setattr(paths, "NOTEBOOKS", tmp_path / "notebooks")
    return tmp_path / "configs"


def test_generator_keeps_comments_and_repairs_stale_files(tiny_project):
    assert profiles.stale_param_files(("tiny",)) == ["tiny/00_a.yaml", "tiny/01_b.yaml", "tiny/02_c.yaml"]
    profiles.write_param_files(("tiny",))
    first = (tiny_project / "tiny" / "00_a.yaml").read_text()
    assert "# why n is 3\nn: 3  # inline\n" in first and "next section" not in first
    assert yaml.safe_load(first) == {"n": 3, "names": ["x", "y"]}
    assert yaml.safe_load((tiny_project / "tiny" / "01_b.yaml").read_text()) == {"nested": {"k": 1}}
    assert yaml.safe_load((tiny_project / "tiny" / "02_c.yaml").read_text()) == {}  # no section: no parameters
    assert profiles.stale_param_files(("tiny",)) == []
    (tiny_project / "tiny.yaml").write_text(PROFILE.replace("n: 3", "n: 4"))
    (tiny_project / "tiny" / "99_gone.yaml").write_text("x: 1\n")
    assert profiles.stale_param_files(("tiny",)) == ["tiny/00_a.yaml", "tiny/99_gone.yaml"]
    assert profiles.write_param_files(("tiny",)) == ["tiny/00_a.yaml", "tiny/99_gone.yaml"]
    assert profiles.read_param_file("tiny", "00_a")["n"] == 4 and not (tiny_project / "tiny" / "99_gone.yaml").exists()


def test_flow_style_section_falls_back_to_a_plain_dump(tiny_project):
    (tiny_project / "tiny.yaml").write_text("00_a: {n: 3, m: [1, 2]}\n")
    assert yaml.safe_load(profiles.render_param_file("tiny", "00_a")) == {"n": 3, "m": [1, 2]}


def test_missing_file_names_the_command(tiny_project):
    with pytest.raises(FileNotFoundError, match="write_param_files.py"):
        profiles.read_param_file("tiny", "00_a")


def test_an_extending_profile_replaces_only_the_parameters_it_names(tiny_project):
    (tiny_project / "tiny-long.yaml").write_text("extends: tiny\n00_a:\n  n: 30  # longer\n03_d:\n  k: 2\n")
    merged = config.load_profile("tiny-long")
    # a named parameter replaces the base's whole value; the others and the other sections are the base's
    assert merged == {"00_a": {"n": 30, "names": ["x", "y"]}, "01_b": {"nested": {"k": 1}}, "03_d": {"k": 2}}
    assert config.extended_profile("tiny-long") == "tiny" and config.extended_profile("tiny") is None
    profiles.write_param_files(("tiny-long",))
    text = (tiny_project / "tiny-long" / "00_a.yaml").read_text()
    assert yaml.safe_load(text) == {"n": 30, "names": ["x", "y"]} and "configs/tiny.yaml with" in text
    (tiny_project / "tiny.yaml").write_text(PROFILE.replace("names: [x, y]", "names: [z]"))
    assert "tiny-long/00_a.yaml" in profiles.stale_param_files(("tiny-long",))  # a base edit reaches it


@pytest.mark.parametrize("extends", ["tiny-loop", "self", "[tiny]"])
def test_a_bad_or_cyclic_extends_is_refused_naming_the_file(tiny_project, extends):
    (tiny_project / "self.yaml").write_text("extends: self\n")
    (tiny_project / "tiny-loop.yaml").write_text("extends: tiny-bad\n")
    (tiny_project / "tiny-bad.yaml").write_text(f"extends: {extends}\n00_a:\n  n: 1\n")
    with pytest.raises(ValueError, match=r"(tiny-bad|self|tiny-loop)\.yaml.*must name another profile"):
        config.load_profile("tiny-bad")


def test_extends_an_unknown_profile_names_it(tiny_project):
    (tiny_project / "tiny-bad.yaml").write_text("extends: nosuch\n")
    with pytest.raises(FileNotFoundError, match="no profile 'nosuch'"):
        config.load_profile("tiny-bad")
