"""data_tools.inputs, the one reader of --input for make_shards and split_shots: which files are videos, where
their fields come from, and how an unusable row is reported (by manifest line or caption file), never fatal."""

import csv
import json
from pathlib import Path

import pytest

from data_tools.inputs import list_inputs


def touch(path: Path, data: str = "not decoded here") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data)
    return path


@pytest.fixture()
def folder(tmp_path) -> Path:
    root = tmp_path / "videos"
    touch(root / "b.mp4")
    touch(root / "b.txt", "  whole file\nis the caption\n")
    touch(root / "a" / "clip.MOV")
    touch(root / "a" / "clip.json", json.dumps({"captions": ["one", "two"], "start": 0.5, "shots": [[0.5, 1]],
                                                "tags": "other keys are ignored"}))
    touch(root / "a" / "clip.txt", "the .json has captions: not read")
    touch(root / "window.mp4")
    touch(root / "window.json", json.dumps({"end": 2}))
    touch(root / "window.txt", "the .json has no caption: the .txt is it")
    touch(root / "weird.mp4")
    touch(root / "weird.json", "{'caption': 'not JSON'}")
    touch(root / "nocap.mp4")
    touch(root / "._b.mp4")  # macOS resource fork
    touch(root / ".cache" / "c.mp4")  # hidden folder
    touch(root / "notes.txt")
    return root


def test_folder_videos_sorted_with_their_caption_files(folder):
    inputs = list_inputs(folder)
    assert [(i.index, i.source) for i in inputs] == [
        (0, "a/clip.MOV"), (1, "b.mp4"), (2, "nocap.mp4"), (3, "weird.mp4"), (4, "window.mp4")]
    clip, b, nocap, weird, window = inputs
    assert clip.fields == {"captions": ["one", "two"], "start": 0.5, "shots": [[0.5, 1]]}
    assert b.fields == {"caption": "whole file\nis the caption"}
    assert window.fields == {"end": 2, "caption": "the .json has no caption: the .txt is it"}
    assert nocap.fields == {} and not nocap.problem and nocap.origin == "nocap.json or nocap.txt"
    assert b.path == folder / "b.mp4" and b.path.is_absolute()
    assert weird.reason == "bad_row" and "weird.json" in weird.problem and "not valid JSON" in weird.problem


def test_csv_manifest_paths_relative_to_it_and_json_list_cells(folder, tmp_path):
    manifest = tmp_path / "lists" / "clips.csv"
    manifest.parent.mkdir()
    rows = [{"path": "../videos/b.mp4", "captions": json.dumps(["x", "y"]), "start": "0.5", "end": "", "camera": "A"},
            {"path": str(folder / "nocap.mp4"), "caption": "absolute", "shots": "[[0, 1"},
            {"path": "", "caption": "no path"},
            {"path": "../videos/gone.mp4", "caption": "missing"},
            {"path": "../videos/notes.txt", "caption": "not a video"}]
    with manifest.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["path", "caption", "captions", "start", "end", "shots", "camera"])
        writer.writeheader()
        writer.writerows(rows)
    first, bad_cell, no_path, gone, text = list_inputs(manifest, caption_column=True)
    assert (first.source, first.path, first.origin) == ("../videos/b.mp4", folder / "b.mp4", "clips.csv:2")
    assert first.fields == {"captions": ["x", "y"], "start": "0.5", "camera": "A"}  # empty cells are absent
    assert (bad_cell.source, bad_cell.reason) == ("clips.csv:3", "bad_row")
    assert bad_cell.problem.startswith("clips.csv:3: column 'shots' is not a JSON list")
    assert (no_path.source, no_path.problem, no_path.path) == ("clips.csv:4", "clips.csv:4: no 'path'", None)
    assert (gone.reason, gone.source) == ("missing_file", "../videos/gone.mp4")
    assert text.reason == "unsupported_format" and "'txt'" in text.problem
    assert [i.index for i in (first, bad_cell, no_path, gone, text)] == [0, 1, 2, 3, 4]


def test_csv_header_must_name_the_columns(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("file,caption\nx.mp4,hi\n")
    with pytest.raises(ValueError, match=r"m\.csv.*'path'.*\['file', 'caption'\]"):
        list_inputs(manifest)
    manifest.write_text("path,text\nx.mp4,hi\n")
    assert list_inputs(manifest)[0].fields == {"text": "hi"}  # split_shots: captions are optional
    with pytest.raises(ValueError, match="'caption' or 'captions'"):
        list_inputs(manifest, caption_column=True)  # make_shards: every row would be skipped


def test_jsonl_manifest_relative_paths_extra_fields_and_bad_lines(folder, tmp_path):
    manifest = folder / "sub" / "rows.jsonl"
    lines = [json.dumps({"path": "../b.mp4", "caption": "hi", "source": "cam1", "shots": [[0, 1]]}),
             "",  # blank lines are not rows but count as lines
             "{not json",
             json.dumps(["a", "list"]),
             json.dumps({"caption": "no path"}),
             json.dumps({"path": "~/../nowhere/x.mp4"})]
    touch(manifest, "\n".join(lines) + "\n")
    good, not_json, a_list, no_path, gone = list_inputs(manifest)
    assert (good.index, good.source, good.path, good.origin) == (0, "../b.mp4", folder / "b.mp4", "rows.jsonl:1")
    assert good.fields == {"caption": "hi", "source": "cam1", "shots": [[0, 1]]} and not good.problem
    assert [(i.index, i.source, i.reason) for i in (not_json, a_list, no_path)] == [
        (1, "rows.jsonl:3", "bad_row"), (2, "rows.jsonl:4", "bad_row"), (3, "rows.jsonl:5", "bad_row")]
    assert not_json.problem.startswith("rows.jsonl:3: not valid JSON")
    assert a_list.problem == "rows.jsonl:4: holds a JSON list, expected an object"
    assert no_path.problem == "rows.jsonl:5: no 'path'"
    assert gone.reason == "missing_file" and str(gone.path) in gone.problem and "~" not in str(gone.path)


def test_input_that_is_no_folder_or_manifest_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        list_inputs(tmp_path / "nowhere")
    with pytest.raises(ValueError, match=r"\.csv or a \.jsonl"):
        list_inputs(touch(tmp_path / "list.txt"))
    touch(tmp_path / "empty" / ".hidden.mp4")
    with pytest.raises(ValueError, match="no videos found"):
        list_inputs(tmp_path / "empty")
    with pytest.raises(ValueError, match="no videos found"):
        list_inputs(touch(tmp_path / "empty.jsonl", "\n\n"))
