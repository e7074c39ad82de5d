"""PNG views, the HTML data encoding, report assembly and the ``attnkit explain`` command."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from attnkit.explain import capture
from attnkit.explain.render_html import encode_layer, html_report
from attnkit.explain.render_png import (
    plot_audio_strip,
    plot_head_heatmaps,
    plot_image_overlay,
    plot_layer_grid,
    plot_token_highlight,
)
from attnkit.explain.report import ExplainInput, build_report
from attnkit.explain.toy import ToyClassifier

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_png_views_are_written(tmp_path: Path) -> None:
    maps = torch.rand(3, 5, 5).softmax(-1)
    tokens = [f"t{i}" for i in range(5)]
    paths = [
        plot_head_heatmaps(maps, tmp_path / "heads.png", query_labels=tokens, key_labels=tokens),
        plot_layer_grid([maps, maps[:2]], tmp_path / "grid.png"),
        plot_image_overlay(torch.rand(1, 8, 8), torch.rand(4, 4), tmp_path / "overlay.png"),
        plot_audio_strip(torch.randn(20, 6), torch.rand(20), tmp_path / "audio.png"),
        plot_token_highlight(tokens, torch.randn(5), tmp_path / "tokens.png"),
    ]
    for path in paths:
        data = path.read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 2_000, path
    with pytest.raises(ValueError, match="3 tokens but 5 scores"):
        plot_token_highlight(tokens[:3], torch.randn(5), tmp_path / "bad.png")
    with pytest.raises(ValueError, match="heads, Lq, Lk"):
        plot_head_heatmaps(maps[0], tmp_path / "bad.png")


def embedded_data(page: str) -> dict:
    match = re.search(r'<script type="application/json" id="attnkit-data">(.*?)</script>',
                      page, re.S)
    assert match is not None
    return json.loads(match.group(1))


def test_html_encoding_round_trips_dense_and_top_k() -> None:
    dense = torch.rand(2, 6, 6)
    long = torch.rand(1, 200, 200)
    page = html_report(title="t </script> x", labels={"input": [f"<{i}>" for i in range(6)],
                                                      "long": [str(i) for i in range(200)]},
                       methods={"raw": [encode_layer(name="a", maps=dense)],
                                "other": [encode_layer(name="b", maps=long, top_k=5,
                                                       query_labels="long",
                                                       key_labels="long")]})
    assert "http://" not in page and "https://" not in page  # nothing fetched from a network
    data = embedded_data(page)
    head = data["methods"][0]["layers"][0]["heads"][1]
    values = np.frombuffer(base64.b64decode(head["values"]), dtype="<f4").reshape(6, 6)
    np.testing.assert_array_equal(values, dense[1].numpy())
    sparse = data["methods"][1]["layers"][0]["heads"][0]
    assert sparse["format"] == "topk" and sparse["k"] == 5
    idx = np.frombuffer(base64.b64decode(sparse["indices"]), dtype="<u2").reshape(200, 5)
    top = np.frombuffer(base64.b64decode(sparse["values"]), dtype="<f4").reshape(200, 5)
    want_values, want_idx = long[0].topk(5, dim=-1)
    np.testing.assert_array_equal(idx, want_idx.numpy())
    np.testing.assert_array_equal(top, want_values.numpy())
    assert data["labels"]["input"][0] == "<0>"
    with pytest.raises(ValueError, match="labels have lengths"):
        html_report(title="x", labels={"input": ["a"]}, methods={"raw": [encode_layer(
            name="a", maps=dense)]})


def test_report_label_mismatch_is_a_clear_error() -> None:
    model = ToyClassifier().eval()
    tokens = torch.randint(0, 20, (1, 4))
    example = ExplainInput(inputs=(tokens,), labels={"input": ["a", "b", "c", "d"]})
    with pytest.raises(ValueError, match="class token included"):
        build_report(model, example)


class ToyLM(nn.Module):
    """A causal toy language model: (B, L) -> (B, L, V)."""

    def __init__(self) -> None:
        super().__init__()
        from attnkit import masks
        from attnkit.explain.toy import ToyBlock

        self.causal = masks.causal()
        self.embed = nn.Embedding(12, 8)
        self.blocks = nn.ModuleList(ToyBlock(dim=8, heads=2) for _ in range(2))
        self.head = nn.Linear(8, 12)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x, mask=self.causal)
        return self.head(x)


def test_report_for_a_causal_lm_and_a_mean_pooled_model() -> None:
    lm = ToyLM().eval()
    tokens = torch.randint(0, 12, (1, 7))
    report = build_report(lm, ExplainInput(inputs=(tokens,), explained_row=-1,
                                           labels={"input": [str(int(t)) for t in tokens[0]]}))
    assert list(report["methods"]) == ["raw", "rollout", "relevance"]
    rollout_values = next(a for a in report["attributions"] if "rollout" in a["method"])
    assert len(rollout_values["values"]) == 7
    with torch.no_grad(), capture(lm) as cap:
        lm(tokens)
    assert all(torch.all(r.weights.triu(1) == 0) for r in cap)  # it is causal
    mean = build_report(ToyClassifier().eval(), ExplainInput(
        inputs=(tokens,), explained_row=None, first_input=1,
        labels={"input": ["[CLS]", *[str(int(t)) for t in tokens[0]]]}))
    assert "mean of all rows" in mean["notes"]


def make_run(root: Path) -> Path:
    """A run directory (config.yaml + weights) of an untrained tiny digits ViT."""
    train_config = pytest.importorskip("attnkit.train.config")
    from attnkit.models import build_model
    from attnkit.tasks import get_task
    from attnkit.train.checkpoint import save_weights

    config = train_config.resolve_config(
        {"task": {"name": "digits"},
         "model": {"family": "vit", "d_model": 16, "num_heads": 2, "num_layers": 2,
                   "d_ff": 32, "patch_size": 2}}, family="vit")
    torch.manual_seed(0)
    model = build_model(config.model, get_task("digits"))
    run = root / "run"
    (run / "best").mkdir(parents=True)
    save_weights(model, run / "best" / "model.safetensors")
    (run / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    return run


def test_cli_explain_and_faithfulness(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                      ) -> None:
    from attnkit.cli import main

    run = make_run(tmp_path)
    out = tmp_path / "report.html"
    code = main(["explain", str(run), "--input", "test:2", "--method", "relevance",
                 "--out", str(out), "--png", str(tmp_path / "png"), "--device", "cpu"])
    assert code == 0 and str(out) in capsys.readouterr().out
    data = embedded_data(out.read_text())
    assert [m["name"] for m in data["methods"]] == ["relevance", "raw", "rollout"]
    assert data["image"]["grid"] == [4, 4] and len(data["labels"]["input"]) == 17
    assert sorted(p.name for p in (tmp_path / "png").iterdir()) == [
        "last_layer_heads.png", "layers_heads.png", "relevance_overlay.png"]
    assert main(["explain", str(run), "--input", "nope"]) == 2
    assert "test:3" in capsys.readouterr().err
    assert main(["explain", str(run), "--text", "seven"]) == 2
    assert "no text encoder" in capsys.readouterr().err
    code = main(["faithfulness", str(run), "--examples", "6", "--steps", "4", "--device", "cpu"])
    table = capsys.readouterr().out
    assert code == 0 and "| attention rollout |" in table and "random order" in table


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error for an absent device")
@pytest.mark.parametrize("command", [["explain"], ["faithfulness", "--examples", "4"]])
def test_cli_explain_and_faithfulness_take_the_device(command: list[str], tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """--device reaches the model: a device torch lacks is refused in one line naming it."""
    from attnkit.cli import main

    run = make_run(tmp_path)
    assert main([command[0], str(run), *command[1:], "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip()
    assert "'cuda' was asked for but CUDA is not available" in err and "\n" not in err
    assert main([command[0], str(run), *command[1:], "--device", "gpu0"]) == 2
    assert "'gpu0' is not a device torch knows" in capsys.readouterr().err


# -- pixels where the value is known ------------------------------------------------------------
def _pixels_of(png: Path, rgb: tuple[float, ...], tol: float = 2.5 / 255) -> np.ndarray:
    """(N, 2) row, column coordinates of the decoded PNG's pixels of colour ``rgb``."""
    import matplotlib.image

    image = matplotlib.image.imread(str(png))[..., :3]  # decoded, floats in [0, 1]
    close = (np.abs(image - np.asarray(rgb[:3])) <= tol).all(-1)
    return np.argwhere(close)


def test_layer_grid_pixels_show_each_cell_where_and_as_dark_as_its_value(tmp_path: Path) -> None:
    """A 4x4 map, 1 at (row 0, col 3), 0.5 at (row 3, col 0), 0 elsewhere: the darkest blue is
    the top-right cell, the middle blue the bottom-left one, the lightest the 14 others."""
    import matplotlib

    blues = matplotlib.colormaps["Blues"]
    grid = torch.zeros(1, 4, 4)
    grid[0, 0, 3], grid[0, 3, 0] = 1.0, 0.5
    png = plot_layer_grid([grid], tmp_path / "grid.png")
    dark, middle, light = (_pixels_of(png, blues(x)) for x in (1.0, 0.5, 0.0))
    assert len(dark) > 50 and len(middle) > 50 and len(light) > 50
    cells = np.concatenate([dark, middle, light])
    top, left = cells.min(0)
    bottom, right = cells.max(0)
    height, width = bottom - top + 1, right - left + 1

    def cell(points: np.ndarray) -> tuple[int, int]:
        row, col = points.mean(0)
        return int((row - top) * 4 // height), int((col - left) * 4 // width)

    assert cell(dark) == (0, 3)
    assert cell(middle) == (3, 0)
    # one cell each for the two marked values, fourteen for the rest
    assert len(dark) == pytest.approx(len(middle), rel=0.15)
    assert len(light) == pytest.approx(14 * len(dark), rel=0.15)


def test_token_highlight_pixels_follow_the_scores(tmp_path: Path) -> None:
    """Boxes coloured Reds(score / max positive score): 1.0 darkest, 0.5 middle, negative blank."""
    import matplotlib

    reds = matplotlib.colormaps["Reds"]
    png = plot_token_highlight(["half", "full", "minus"], torch.tensor([1.0, 2.0, -3.0]),
                               tmp_path / "tokens.png")
    half, full, blank = (_pixels_of(png, reds(x)) for x in (0.5, 1.0, 0.0))
    assert len(half) > 30 and len(full) > 30 and len(blank) > 30
    # left to right in token order
    assert half[:, 1].mean() < full[:, 1].mean() < blank[:, 1].mean()
    assert len(_pixels_of(png, reds(0.25))) < 5  # no score maps to a quarter shade
