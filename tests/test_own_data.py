"""Users' datasets: image folders, tfds by name, .npz files and NumPy arrays.

Generated tiny folders (PNG and JPEG, two sizes, grey and colour) go through the command
line end to end; tfds goes through its real code path with ``tfds.testing.mock_data``;
the statistics, splits and batches are checked against NumPy and Pillow.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds
from click.testing import CliRunner
from PIL import Image
from swd_keras.cli.main import cli

from swd_keras.data import ArrayDataset, DatasetError, get_dataset_info, search_data, train_data
from swd_keras.data.sources import folder
from swd_keras.data.sources import tfds as tfds_source
from swd_keras.search_job import SearchConfig, run_search
from swd_keras.training import RetrainConfig, fit_network

SEARCH = ["--epochs", "1", "--layers", "1", "--channels", "4", "--k", "2", "--batch-size", "4",
          "--limit", "8"]
TRAIN = ["--epochs", "1", "--layers", "1", "--channels", "4", "--batch-size", "4",
         "--no-auxiliary"]


def _run(*args):
    from swd_keras.cli.commands import export, run, search, train  # noqa: F401  (registers them)

    return CliRunner().invoke(cli, [str(a) for a in args])


def _error_line(result) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    return lines[-1]


def _make_folder(root: Path, classes: int = 3, per_class: int = 8, grey: str = "mixed",
                 sizes=((8, 8), (12, 10)), suffixes=(".png", ".jpg")) -> Path:
    """``classes`` class folders of ``per_class`` images of alternating sizes and types;
    ``grey``: "mixed" (every other pair grey), "all" or "none"."""
    rng = np.random.default_rng(0)
    for label in range(classes):
        folder_path = root / f"class_{label}"
        folder_path.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            height, width = sizes[i % len(sizes)]
            is_grey = grey == "all" or (grey == "mixed" and i % 4 < 2)
            shape = (height, width) if is_grey else (height, width, 3)
            pixels = np.clip(rng.normal(60 + 60 * label, 30, shape), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder_path / f"img_{i}{suffixes[i % len(suffixes)]}")
    return root


def _pixels(path: Path) -> np.ndarray:
    """A grey image's pixels (a GIF's through its palette), ``(H, W, 1)``."""
    with Image.open(path) as image:
        return np.asarray(image.convert("L"))[..., None]


def _batches(dataset) -> list:
    return list(dataset.as_numpy_iterator())


def _arrays(count=40, shape=(8, 6, 3), classes=3, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, (count, *shape), dtype=np.uint8),
            np.arange(count) % classes)


@pytest.fixture
def download_allowed(monkeypatch):
    """Makes the network check pass (tfds' download is a no-op under mock_data)."""
    monkeypatch.setattr(tfds_source, "can_reach", lambda url, timeout=3.0: True)


# ------------------------------------------------------------------------ end to end


@pytest.mark.slow
def test_image_folder_searched_retrained_evaluated_and_exported(tmp_path):
    data = _make_folder(tmp_path / "images")
    search_dir, train_dir = tmp_path / "search", tmp_path / "train"
    result = _run("search", "--dataset", data, "--image-size", 8, 8, *SEARCH,
                  "--output", search_dir)
    assert result.exit_code == 0, result.output
    assert (f"retrain it with: swd-keras train --genotype {search_dir / 'genotype.json'} "
            f"--dataset {data.resolve()} --image-size 8 8") in result.output
    record = json.loads((search_dir / "config.json").read_text())
    assert record["class_names"] == ["class_0", "class_1", "class_2"]
    assert record["num_classes"] == 3
    assert record["preprocessing"]["input_shape"] == [8, 8, 3]  # some images are colour
    assert record["config"]["dataset"] == str(data.resolve())
    assert record["config"]["image_size"] == [8, 8]
    source = record["dataset"]
    assert source["kind"] == "folder" and source["holdout"] == 0.1
    assert len(source["holdout_files"]) == 3  # round(0.1 * 8) of each class
    assert {Path(f).parts[0] for f in source["holdout_files"]} == {"class_0", "class_1",
                                                                   "class_2"}

    result = _run("train", "--genotype", search_dir / "genotype.json", "--dataset", data,
                  "--image-size", 8, 8, *TRAIN, "--output", train_dir)
    assert result.exit_code == 0, result.output
    trained = json.loads((train_dir / "config.json").read_text())
    assert trained["class_names"] == record["class_names"]
    assert trained["preprocessing"] == record["preprocessing"]  # the same training split
    assert trained["dataset"] == record["dataset"]
    results = json.loads((train_dir / "results.json").read_text())
    assert results["test_examples"] == 3

    # Without --dataset the run's own data is reopened; with it, the same images.
    expected = f"top-1 accuracy: {100 * results['test_top1']:.2f}% (3 test images)"
    result = _run("evaluate", train_dir / "model.keras")
    assert result.exit_code == 0 and expected in result.output, result.output
    result = _run("evaluate", train_dir / "model.keras", "--dataset", data, "--image-size", 16, 16)
    assert result.exit_code == 2 and "takes (8, 8, 3) images" in _error_line(result)

    # Exported with the folder's class names and its normalisation inside: ONNX Runtime on
    # raw pixels against the Keras network on NumPy-normalised ones.
    import onnxruntime

    from swd_keras.network import load_network

    result = _run("export", train_dir / "model.keras", "--format", "onnx", "--output-dir",
                  tmp_path / "exports", "--name", "folder")
    assert result.exit_code == 0, result.output
    version = tmp_path / "exports" / "folder" / "1"
    assert (version / "labels.txt").read_text().split() == record["class_names"]
    pixels = np.random.default_rng(0).integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    session = onnxruntime.InferenceSession(str(version / "model.onnx"))
    probabilities = session.run(["probabilities"], {"images": pixels})[0]
    pre = record["preprocessing"]
    x = (pixels / pre["pixel_max"] - np.array(pre["mean"])) / np.array(pre["std"])
    logits = np.asarray(load_network(train_dir / "model.keras")(x.astype("float32")))
    expected = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(probabilities, expected / expected.sum(1, keepdims=True),
                               atol=1e-4)


@pytest.mark.slow
def test_tfds_dataset_by_name_halved_and_retrained(tmp_path, download_allowed):
    data_dir = str(tmp_path / "tfds")
    with tfds.testing.mock_data(num_examples=24):
        search = search_data("tfds:fashion_mnist", 4, data_dir=data_dir, image_size=(8, 8))
        info = search.info
        assert info.input_shape == (8, 8, 1) and info.num_classes == 10
        assert info.class_names[:2] == ("T-shirt/top", "Trouser")
        assert (info.num_train, info.num_test) == (24, 24)
        (x_train, _), (x_val, _) = next(search.dataset.as_numpy_iterator())
        assert x_train.shape == x_val.shape == (4, 8, 8, 1)
        assert search.num_train_examples == search.num_val_examples == 12
        # The search's genotype is retrained in test_image_folder_...: the same code.
        retrain = RetrainConfig("swd_nas_paper", "tfds:fashion_mnist", image_size=(8, 8),
                                epochs=1, layers=5, channels=4, batch_size=8, limit=16,
                                auxiliary=False)
        results = fit_network(tmp_path / "train", retrain, data_dir=data_dir, verbose=0)
    record = json.loads((tmp_path / "train" / "config.json").read_text())
    assert record["class_names"] == list(info.class_names)
    assert record["preprocessing"]["input_shape"] == [8, 8, 1]
    assert record["dataset"]["kind"] == "tfds"
    assert record["dataset"]["name"].startswith("fashion_mnist/")
    assert results["test_examples"] == 16


# --------------------------------------------------------------------- the pipelines


def test_folder_statistics_split_and_channels_against_numpy(tmp_path):
    lossless = (".png", ".bmp", ".gif")
    data = _make_folder(tmp_path / "grey", sizes=((6, 10),), suffixes=lossless, grey="all")
    info = get_dataset_info(str(data))
    assert info.input_shape == (6, 10, 1)  # every image grey: one channel, non-square
    held = set(info.source["holdout_files"])
    train = [p for p in sorted(data.rglob("*.*")) if str(p.relative_to(data)) not in held]
    assert len(train) == info.num_train == 21 and info.num_test == 3
    pixels = np.stack([_pixels(p) for p in train]) / 255.0
    np.testing.assert_allclose(info.mean, pixels.mean(axis=(0, 1, 2)), rtol=1e-12)
    np.testing.assert_allclose(info.std, pixels.std(axis=(0, 1, 2)), rtol=1e-12)

    # The test split holds exactly the held-out files, unaugmented, in their order.
    test = train_data(str(data), 4).test_dataset()
    images = np.concatenate([batch[0] for batch in _batches(test)])
    expected = np.stack([_pixels(data / f) for f in info.source["holdout_files"]]) / 255.0
    np.testing.assert_allclose(images * info.std + info.mean, expected, atol=1e-6)

    # A test folder replaces the held-out part.
    _make_folder(data / "test", per_class=2, sizes=((6, 10),), suffixes=lossless, grey="all")
    info = get_dataset_info(str(data))
    assert (info.num_train, info.num_test) == (24, 6) and "holdout_files" not in info.source


def test_resumed_epochs_and_streamed_folders_give_the_same_batches(tmp_path, monkeypatch):
    data = str(_make_folder(tmp_path / "images"))

    def epochs(initial_epoch):
        search = search_data(data, 4, seed=3, epochs=3, initial_epoch=initial_epoch,
                             image_size=(8, 8))
        train = train_data(data, 4, seed=3, epochs=3, initial_epoch=initial_epoch,
                           image_size=(8, 8))
        return search, _batches(search.dataset), _batches(train.dataset)

    unbroken, search_batches, train_batches = epochs(0)
    steps = unbroken.steps_per_epoch
    _, resumed_search, resumed_train = epochs(2)
    for got, want in zip(resumed_search, search_batches[2 * steps:], strict=True):
        for half_got, half_want in zip(got, want, strict=True):
            np.testing.assert_array_equal(half_got[0], half_want[0])
            np.testing.assert_array_equal(half_got[1], half_want[1])
    train_steps = len(train_batches) // 3
    for got, want in zip(resumed_train, train_batches[2 * train_steps:], strict=True):
        np.testing.assert_array_equal(got[0], want[0])

    # Read from disk in every epoch (as a large folder is), the batches are the same.
    monkeypatch.setattr(folder, "IN_MEMORY_BYTES", 0)
    streamed, streamed_search, _ = epochs(0)
    assert streamed.info.mean == pytest.approx(unbroken.info.mean, rel=1e-9)
    for got, want in zip(streamed_search, search_batches, strict=True):
        np.testing.assert_allclose(got[0][0], want[0][0], atol=1e-6)
        np.testing.assert_array_equal(got[1][1], want[1][1])


def test_npz_file_and_arrays_give_the_same_data(tmp_path):
    x, y = _arrays()
    x_test, y_test = _arrays(count=6, seed=1)
    path = tmp_path / "data.npz"
    np.savez(path, x=x, y=y, x_test=x_test, y_test=y_test, class_names=np.array(["a", "b", "c"]))
    from_file = train_data(str(path), 8, seed=1)
    from_arrays = train_data(ArrayDataset(x, y, x_test, y_test, ("a", "b", "c")), 8, seed=1)
    assert from_file.info.class_names == from_arrays.info.class_names == ("a", "b", "c")
    assert from_file.info.source["kind"] == "npz" and from_file.num_test_examples == 6
    np.testing.assert_allclose(from_file.info.mean, (x / 255.0).mean(axis=(0, 1, 2)))
    np.testing.assert_allclose(from_file.info.std, (x / 255.0).std(axis=(0, 1, 2)))
    for got, want in zip(_batches(from_file.dataset), _batches(from_arrays.dataset),
                         strict=True):
        np.testing.assert_array_equal(got[0], want[0])
    test = np.concatenate([batch[0] for batch in _batches(from_file.test_dataset())])
    np.testing.assert_allclose(test * from_file.info.std + from_file.info.mean,
                               x_test / 255.0, atol=1e-6)

    # Floats in [0, 1], grey (N, H, W) arrays, resized; no test arrays: a held-out tenth.
    grey = ArrayDataset(x[..., 0] / 255.0, y)
    data = search_data(grey, 4, image_size=(4, 3))
    assert data.info.input_shape == (4, 3, 1)
    assert (data.info.num_train, data.info.num_test) == (37, 3)


def test_a_resumed_run_refuses_other_data(tmp_path):
    x, y = _arrays()
    arrays = ArrayDataset(x, y)
    config = SearchConfig(dataset=arrays, epochs=2, layers=2, channels=4, k=2, batch_size=8)
    assert config.to_json()["dataset"] == arrays.record
    run_dir = tmp_path / "run"
    # A run interrupted after its record: resuming it reopens (and checks) the data first.
    from swd_keras.data import run_record
    from swd_keras.runs import start_run

    start_run(run_dir, "search", config, **run_record(get_dataset_info(arrays), 255.0))
    written = sorted(p.name for p in run_dir.iterdir())
    with pytest.raises(DatasetError, match="pass the same ArrayDataset again"):
        run_search(run_dir=run_dir, resume=True, echo=lambda line: None)
    other = ArrayDataset(x[::-1].copy(), y)
    with pytest.raises(DatasetError, match="was started on other data"):
        run_search(run_dir=run_dir, resume=True, dataset=other, echo=lambda line: None)
    assert sorted(p.name for p in run_dir.iterdir()) == written

    path = tmp_path / "data.npz"
    np.savez(path, x=x, y=y)
    npz_run = tmp_path / "npz-run"
    config = SearchConfig(dataset=str(path), epochs=2, layers=2, channels=4, k=2, batch_size=8)
    start_run(npz_run, "search", config, **run_record(get_dataset_info(str(path)), 255.0))
    np.savez(path, x=x, y=(y + 1) % 3)  # the file changes
    result = _run("search", "--resume", npz_run)
    assert result.exit_code == 2 and "was started on other data" in _error_line(result)
    assert str(path) in _error_line(result)


# ------------------------------------------------------------------------- bad input


def _bad_inputs(tmp_path: Path):
    one_class = tmp_path / "one"
    _make_folder(one_class, classes=1)
    empty = tmp_path / "empty"
    (empty / "a").mkdir(parents=True)
    (empty / "b").mkdir()
    unreadable = _make_folder(tmp_path / "unreadable", per_class=2)
    (unreadable / "class_1" / "broken.png").write_bytes(b"not a png")
    sizes = _make_folder(tmp_path / "sizes", per_class=2)
    with_test = _make_folder(tmp_path / "with_test", per_class=2, sizes=((8, 8),))
    _make_folder(with_test / "test", per_class=1, sizes=((8, 8),))
    no_labels = tmp_path / "no_y.npz"
    np.savez(no_labels, x=np.zeros((4, 8, 8, 3), np.uint8))
    return [
        (str(one_class), {}, "dataset", "1 class folder"),
        (str(empty), {}, "dataset", "holds no images"),
        (str(unreadable), {"image_size": (8, 8)}, "dataset", "broken.png: cannot read"),
        (str(sizes), {}, "image_size", "pass --image-size H W"),
        (str(sizes), {"image_size": (0, 0)}, "image_size", "two positive integers"),
        (str(no_labels), {}, "dataset", "has no y array"),
        ("tfds:mnistt", {}, "dataset", "did you mean mnist"),
        ("tfds:ag_news_subset", {}, "dataset", "has no image feature"),
        ("tfds:div2k", {}, "dataset", "has no label (ClassLabel) feature"),
        ("no/such/thing", {}, "dataset", "tfds:NAME"),
        ("digits", {"image_size": (8, 8)}, "image_size", "has its own image size"),
        (str(no_labels), {"test_dir": str(one_class)}, "test_dir", "applies to image folders"),
        (str(with_test), {"holdout": 0.2}, "holdout", "applies only to folders without one"),
    ]


def test_bad_inputs_name_the_argument_and_write_nothing(tmp_path):
    bad = _bad_inputs(tmp_path)
    for dataset, kwargs, argument, message in bad:
        with pytest.raises(DatasetError, match=re.escape(message)) as caught:
            get_dataset_info(dataset, **kwargs)
        assert caught.value.argument == argument, (dataset, kwargs)
        assert "\n" not in str(caught.value)
    with pytest.raises(DatasetError, match="at least two classes") as caught:
        ArrayDataset(np.zeros((4, 8, 8), np.uint8), np.zeros(4, int))
    assert caught.value.argument == "y"

    # The command line: one line naming the option, exit 2, no run folder.
    for dataset, kwargs, argument, message in bad[:4]:
        size = ["--image-size", *kwargs["image_size"]] if "image_size" in kwargs else []
        output = tmp_path / f"run-{Path(dataset).name}"
        result = _run("search", "--dataset", dataset, *size, *SEARCH, "--output", output)
        assert result.exit_code == 2, result.output
        assert f"'--{argument.replace('_', '-')}'" in result.output and message in result.output
        assert not output.exists()
    for command in ("search", "run"):
        result = _run(command, "--dataset", "no/such/thing", "--output", tmp_path / command)
        assert result.exit_code == 2 and "an image folder" in _error_line(result)
        assert not (tmp_path / command).exists()
    result = _run("train", "--genotype", "swd_nas_paper", "--dataset", tmp_path / "sizes",
                  "--image-size", 0, 0, *TRAIN)
    assert result.exit_code == 2 and "--image-size" in _error_line(result)
