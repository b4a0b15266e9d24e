"""The one data format: npz/npy files, splits, folders, images; validation against the model."""

import numpy as np
import pytest

from onnxopt.data import ImageOptions, InputSpec, open_dataset, random_dataset
from onnxopt.errors import DataError

IMG = [InputSpec("input", np.dtype(np.float32), ("N", 1, 4, 4))]
TWO = [InputSpec("a", np.dtype(np.float32), ("N", 3)), InputSpec("b", np.dtype(np.int64), ("N",))]


def test_npz_keyed_by_input_name_with_labels(tmp_path):
    x = np.random.default_rng(0).standard_normal((10, 1, 4, 4)).astype(np.float32)
    np.savez(tmp_path / "d.npz", input=x, labels=np.arange(10))
    ds = open_dataset(tmp_path / "d.npz", IMG)
    assert ds.has_labels and len(ds) == 10
    batches = list(ds.batches(4))
    assert [len(b["input"]) for b in batches] == [4, 4, 2]
    assert np.array_equal(np.concatenate([b["input"] for b in batches]), x)
    assert np.array_equal(np.concatenate([b["labels"] for b in batches]), np.arange(10))


def test_single_key_for_single_input_model_and_dtype_cast(tmp_path):
    np.savez(tmp_path / "d.npz", whatever=np.ones((3, 1, 4, 4), np.float64))
    arrays = open_dataset(tmp_path / "d.npz", IMG).arrays()
    assert arrays["input"].dtype == np.float32 and arrays["input"].shape == (3, 1, 4, 4)


def test_splits(tmp_path):
    np.savez(tmp_path / "s.npz", **{"calib/input": np.zeros((5, 1, 4, 4), np.float32),
                                    "eval/input": np.ones((7, 1, 4, 4), np.float32), "eval/labels": np.zeros(7, np.int64)})
    assert len(open_dataset(f"{tmp_path / 's.npz'}:calib", IMG)) == 5
    ev = open_dataset(f"{tmp_path / 's.npz'}:eval", IMG)
    assert len(ev) == 7 and ev.has_labels
    with pytest.raises(DataError, match="choose one"):
        open_dataset(tmp_path / "s.npz", IMG)
    with pytest.raises(DataError, match="no split 'test'"):
        open_dataset(f"{tmp_path / 's.npz'}:test", IMG)


def test_multi_input_names_must_match(tmp_path):
    np.savez(tmp_path / "ok.npz", a=np.ones((2, 3), np.float32), b=np.arange(2))
    assert set(open_dataset(tmp_path / "ok.npz", TWO).arrays()) == {"a", "b"}
    np.savez(tmp_path / "bad.npz", a=np.ones((2, 3), np.float32), c=np.arange(2))
    with pytest.raises(DataError, match="no array for model input"):
        open_dataset(tmp_path / "bad.npz", TWO)
    np.savez(tmp_path / "n.npz", a=np.ones((2, 3), np.float32), b=np.arange(3))
    with pytest.raises(DataError, match="disagree on the number of samples"):
        open_dataset(tmp_path / "n.npz", TWO)


def test_shape_and_dtype_mismatch(tmp_path):
    np.savez(tmp_path / "s.npz", input=np.ones((2, 3, 4, 4), np.float32))
    with pytest.raises(DataError, match=r"shape \[2, 3, 4, 4\]"):
        open_dataset(tmp_path / "s.npz", IMG)
    np.savez(tmp_path / "t.npz", a=np.ones((2, 3), np.float32), b=np.ones(2, np.float32))
    with pytest.raises(DataError, match="dtype float32"):
        open_dataset(tmp_path / "t.npz", TWO)


def test_pickled_objects_are_refused(tmp_path):
    np.save(tmp_path / "o.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="pickled"):
        open_dataset(tmp_path / "o.npy", IMG)


def test_folder_of_files_streams_in_name_order(tmp_path):
    for i in range(3):
        np.save(tmp_path / f"part{i}.npy", np.full((2, 1, 4, 4), i, np.float32))
    ds = open_dataset(tmp_path, IMG)
    chunks = list(ds.chunks())
    assert len(chunks) == 3  # one file at a time
    got = np.concatenate([b["input"] for b in ds.batches(4)])
    assert got[:, 0, 0, 0].tolist() == [0, 0, 1, 1, 2, 2]


def test_image_folder_with_class_subfolders(tmp_path):
    from PIL import Image

    for cls, value in (("cat", 0), ("dog", 255)):
        (tmp_path / cls).mkdir()
        for i in range(2):
            Image.fromarray(np.full((8, 8), value, np.uint8)).save(tmp_path / cls / f"{i}.png")
    opts = ImageOptions(size=(4, 4), mean=(0.5,), std=(0.5,), channel_order="L")
    ds = open_dataset(tmp_path, IMG, opts)
    arrays = ds.arrays()
    assert ds.has_labels
    assert arrays["labels"].tolist() == [0, 0, 1, 1]
    assert np.allclose(arrays["input"][0], -1.0) and np.allclose(arrays["input"][3], 1.0)


def test_missing_empty_and_unsupported(tmp_path):
    with pytest.raises(DataError, match="data not found"):
        open_dataset(tmp_path / "nope.npz", IMG)
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(DataError, match="unsupported data file type"):
        open_dataset(tmp_path / "x.txt", IMG)
    np.savez(tmp_path / "e.npz", input=np.zeros((0, 1, 4, 4), np.float32))
    with pytest.raises(DataError, match="no samples"):
        open_dataset(tmp_path / "e.npz", IMG)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="holds no"):
        open_dataset(empty, IMG)


def test_nan_is_reported(tmp_path):
    x = np.zeros((2, 1, 4, 4), np.float32)
    x[1, 0, 0, 0] = np.nan
    np.savez(tmp_path / "n.npz", input=x)
    with pytest.raises(DataError, match="NaN or Inf"):
        open_dataset(tmp_path / "n.npz", IMG).check_finite()


def test_random_dataset_needs_shapes_for_non_batch_dynamic_dims():
    ds = random_dataset(IMG, n=3, batch=2)
    assert ds.arrays()["input"].shape == (6, 1, 4, 4)
    spec = [InputSpec("x", np.dtype(np.float32), ("N", 3, "H", "W"))]
    with pytest.raises(DataError, match="dynamic dim 'H'"):
        random_dataset(spec)
    assert random_dataset(spec, 1, shape_overrides={"x": (1, 3, 5, 5)}).arrays()["x"].shape == (1, 3, 5, 5)
