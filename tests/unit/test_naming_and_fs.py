"""Name normalisation and atomic writes."""

from __future__ import annotations

from pathlib import Path

import pytest

from expertkit.fsutil import atomic_directory, write_text_atomic
from expertkit.naming import normalise_model_name


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("Qwen3-0.6B", "qwen3-0-6b"),
        ("Qwen/Qwen3-0.6B", "qwen3-0-6b"),
        ("SmolLM2-135M-Instruct", "smollm2-135m-instruct"),
        ("smollm2_135m_instruct", "smollm2-135m-instruct"),
        ("/models/My Model.v2/", "my-model-v2"),
        ("SmolLM2-135M-Instruct.Q4_1.gguf", "smollm2-135m-instruct-q4-1"),
        ("..", "model"),
    ],
)
def test_normalise_model_name(name: str, expected: str) -> None:
    assert normalise_model_name(name) == expected


def test_atomic_directory_leaves_nothing_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "out"
    with pytest.raises(RuntimeError), atomic_directory(target) as tmp:
        (tmp / "half.bin").write_bytes(b"x")
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_atomic_directory_replaces_only_on_success(tmp_path: Path) -> None:
    target = tmp_path / "out"
    target.mkdir()
    (target / "old").write_text("old")
    with atomic_directory(target, replace=True) as tmp:
        (tmp / "new").write_text("new")
    assert [p.name for p in target.iterdir()] == ["new"]
    assert oct(target.stat().st_mode & 0o777) == "0o755"


def test_write_text_atomic(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b.json"
    write_text_atomic(path, "{}")
    write_text_atomic(path, '{"x": 1}')
    assert path.read_text() == '{"x": 1}'
    assert [p.name for p in path.parent.iterdir()] == ["b.json"]


def test_a_failed_figure_save_leaves_no_temp_file_and_no_open_figure(tmp_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from expertkit.fsutil import save_figure_atomic

    figure, axes = plt.subplots()
    axes.plot([0, 1], [1, 0])

    def broken(*args, **kwargs):
        raise OSError("disk full")

    figure.savefig = broken  # type: ignore[method-assign]
    with pytest.raises(OSError, match="disk full"):
        save_figure_atomic(figure, tmp_path / "curve.png")
    assert list(tmp_path.iterdir()) == []
    assert not plt.fignum_exists(figure.number)
    good, axes = plt.subplots()
    assert save_figure_atomic(good, tmp_path / "ok.png").read_bytes().startswith(b"\x89PNG")
    assert [p.name for p in tmp_path.iterdir()] == ["ok.png"]
