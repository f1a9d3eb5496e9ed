"""The README's Python block runs as written, on a small MovieLens-shaped ratings.csv."""

import re
from pathlib import Path

import numpy as np

README = Path(__file__).resolve().parent.parent / "README.md"


def _python_block() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
    (block,) = [b for b in blocks if "from edlae_dask import" in b]
    return block


def _write_ratings(path: Path, n_users: int = 400, n_items: int = 320, seed: int = 0) -> None:
    """MovieLens's ratings.csv layout; movie ids 1 … n_items (so 1, 50, 260, 296 exist); ratings 0.5 … 5."""
    rng = np.random.default_rng(seed)
    lines = ["userId,movieId,rating,timestamp"]
    for u in range(1, n_users + 1):
        # users lean towards one of four blocks of movies, so the factors have structure to find
        block = rng.integers(4)
        lo, hi = 1 + block * n_items // 4, (block + 1) * n_items // 4
        liked = rng.choice(np.arange(lo, hi + 1), size=25, replace=False)
        other = rng.choice(np.arange(1, n_items + 1), size=15, replace=False)
        for m in np.union1d(liked, other):
            lines.append(f"{u},{m},{rng.choice([2.0, 3.5, 4.0, 5.0])},964982703")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_readme_python_block_runs_as_written(tmp_path, monkeypatch):
    _write_ratings(tmp_path / "ratings.csv")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(_python_block(), str(README), "exec"), namespace)  # noqa: S102 - the README is the test's input

    model, ids, scores = namespace["model"], namespace["ids"], namespace["scores"]
    assert ids.shape == scores.shape == (5, 20)
    assert np.isin(ids, model.item_ids_).all()  # original movie ids, not indices
    recs, unknown = namespace["recs"], namespace["unknown"]
    assert unknown == {"alice": 0} and len(recs["alice"][0]) == 20 and 296 not in recs["alice"][0]
    assert not np.isin(recs["alice"][0], [1, 50, 260]).any()
    assert namespace["similar"].shape == (2, 10)
    r = namespace["r"]
    assert r.items.shape[1] == 100
    # the served model and the batch scores agree on the README's users
    served_ids, _ = namespace["served"].recommend(namespace["user_rows"], N=20)
    np.testing.assert_array_equal(served_ids, ids)
    batch = r.item_ids[r.items[:5, :20].compute()]
    np.testing.assert_array_equal(batch, ids)
