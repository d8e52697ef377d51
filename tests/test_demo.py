"""demo.py: predictions drawn with detectron2's Visualizer into PNGs; clear errors for bad arguments."""
import sys

import numpy as np
import pytest
from PIL import Image

from test_train_net import DEFAULT_CONFIG, REPO, tiny_opts

sys.path.insert(0, REPO)

import demo  # noqa: E402


@pytest.fixture(scope="module")
def random_weights(tmp_path_factory):
    """A checkpoint of the default model with random weights (what is drawn does not matter here)."""
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model

    import maskrcnn_plugin

    tmp = tmp_path_factory.mktemp("weights")
    cfg = maskrcnn_plugin.get_plugin_cfg()
    cfg.merge_from_file(DEFAULT_CONFIG)
    DetectionCheckpointer(build_model(cfg), save_dir=str(tmp)).save("random")
    return str(tmp / "random.pth")


def _opts(tmp_path, weights):
    opts = tiny_opts(tmp_path)
    return opts[: opts.index("OUTPUT_DIR")] + ["MODEL.WEIGHTS", weights]


def test_demo_draws_dataset_images_and_globbed_files(tmp_path, random_weights):
    out = tmp_path / "vis"
    written = demo.main(["--config-file", DEFAULT_CONFIG, "--dataset", "shapes_demo_s9_n3_px128", "--num-images",
                         "2", "--output", str(out), "--confidence-threshold", "0.0",
                         "--opts", *_opts(tmp_path, random_weights)])
    assert len(written) == 2
    for p in written:
        img = np.asarray(Image.open(p))
        assert img.ndim == 3 and img.shape[2] in (3, 4) and img.shape[:2] == (128, 128)

    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(2):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (96, 160, 3), dtype=np.uint8)).save(photos / f"p{i}.jpg")
    written = demo.main(["--config-file", DEFAULT_CONFIG, "--input", str(photos / "*.jpg"), "--output", str(out),
                         "--opts", *_opts(tmp_path, random_weights)])
    assert sorted(p.rsplit("/", 1)[1] for p in written) == ["p0.png", "p1.png"]
    assert np.asarray(Image.open(written[0])).shape[:2] == (96, 160)


def test_demo_errors_name_the_problem(tmp_path, random_weights):
    base = ["--config-file", DEFAULT_CONFIG, "--output", str(tmp_path / "vis")]
    with pytest.raises(SystemExit, match="no_such_dir"):
        demo.main(base + ["--input", str(tmp_path / "no_such_dir" / "*.png"), "--opts",
                          *_opts(tmp_path, random_weights)])
    with pytest.raises(SystemExit, match="missing.pth"):
        demo.main(base + ["--input", "x.png", "--opts", *_opts(tmp_path, str(tmp_path / "missing.pth"))])
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(SystemExit, match="bad.png"):
        demo.main(base + ["--input", str(bad), "--opts", *_opts(tmp_path, random_weights)])
