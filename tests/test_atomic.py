"""medmlops.atomic: a concurrent reader never sees a half-written manifest, splits file or resolved params."""

from __future__ import annotations

import threading

import pandas as pd
import pytest

from medmlops.atomic import write_atomically, write_text_atomically


def test_the_old_file_stays_whole_until_the_new_one_replaces_it(tmp_path):
    path = tmp_path / "manifest.csv"
    write_text_atomically(path, "sample_id\na\n")
    seen = []

    def write(tmp):
        tmp.write_text("sample_id\n")  # half written ...
        seen.append(path.read_text())  # ... and a reader now still gets the old file
        tmp.write_text("sample_id\na\nb\n")

    write_atomically(path, write)
    assert seen == ["sample_id\na\n"] and path.read_text() == "sample_id\na\nb\n"
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.csv"]  # no temporary file left


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "splits.csv"
    write_text_atomically(path, "old")

    def fail(tmp):
        tmp.write_text("par")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomically(path, fail)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["splits.csv"]


def test_readers_racing_a_rewriting_writer_always_parse_a_whole_csv(tmp_path):
    """What two parallel fold steps did: one rewrites the manifest while the other reads it (EmptyDataError in
    CI with a plain to_csv)."""
    from medmlops.training.splits import load_splits, save_splits

    path = tmp_path / "splits.csv"
    frame = pd.DataFrame({"sample_id": [f"s{i}" for i in range(2000)], "fold": 0, "split": "train"})
    save_splits(frame, path)
    stop, errors = threading.Event(), []

    def rewrite():
        while not stop.is_set():
            save_splits(frame, path)

    writer = threading.Thread(target=rewrite)
    writer.start()
    try:
        for _ in range(200):
            try:
                assert len(load_splits(path)) == 2000
            except Exception as exc:  # noqa: BLE001 - collected and reported below
                errors.append(exc)
    finally:
        stop.set()
        writer.join()
    assert not errors, errors[:3]
