"""Issue 14, item 8: `cnnlab predict` says what it did to each image and warns on inverted polarity."""

from __future__ import annotations

from cli_batch import write_run
from PIL import Image

from cnnlab.cli.main import main
from cnnlab.training.predict import predict


def test_conversion_and_polarity_are_reported(tmp_path, capsys):
    run = write_run(tmp_path / "dark-data", mean=0.2)  # light digits on a dark background, as MNIST
    Image.new("RGB", (50, 40), (255, 255, 255)).save(tmp_path / "paper.png")  # a drawing on white paper
    Image.new("L", (8, 8), 10).save(tmp_path / "dark.png")
    paper, dark = predict(run, [tmp_path / "paper.png", tmp_path / "dark.png"], top_k=1)
    assert paper.converted == "RGB 50x40 -> grayscale, resized to 8x8"
    assert len(paper.warnings) == 1 and "mostly light" in paper.warnings[0] and "invert" in paper.warnings[0]
    assert dark.converted == "L 8x8 (as is)" and dark.warnings == []

    light = write_run(tmp_path / "light-data", mean=0.8)  # dark objects on white, as scanned text
    assert predict(light, [tmp_path / "paper.png"])[0].warnings == []
    assert "mostly dark" in predict(light, [tmp_path / "dark.png"])[0].warnings[0]

    assert main(["predict", str(run), str(tmp_path / "paper.png")]) == 0
    out = capsys.readouterr().out
    assert "paper.png: RGB 50x40 -> grayscale, resized to 8x8" in out and "warning: the image is mostly light" in out
