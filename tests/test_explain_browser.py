"""The HTML viewer end to end in headless Chromium (Debian ``chromium`` driven by playwright).

Never ``playwright install`` (it downloads a browser); the system browser is used.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from attnkit.explain.render_html import encode_attribution, encode_layer, write_html
from attnkit.explain.report import ExplainInput, build_report
from attnkit.explain.toy import ToyClassifier, ToySeq2Seq

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SCREENSHOTS = Path(os.environ.get("ATTNKIT_SCREENSHOTS", tempfile.gettempdir()))

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason="needs Chromium: apt-get install -y chromium")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="needs playwright: pip install 'attnkit[browser]'")
    profile = tempfile.mkdtemp(prefix="attnkit-chromium-")
    with sync_api.sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, args=FLAGS, headless=True,
            viewport={"width": 1400, "height": 1000})
        try:
            yield context
        finally:
            context.close()
            shutil.rmtree(profile, ignore_errors=True)


def watched_page(context: Any) -> tuple[Any, list[str]]:
    """A new page and the list its console errors, page errors and network requests go to."""
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.on("request", lambda req: None if req.url.startswith(("file:", "data:", "about:"))
            else errors.append(f"network request to {req.url}"))
    return page, errors


def open_page(context: Any, path: Path) -> tuple[Any, list[str]]:
    page, errors = watched_page(context)
    page.goto(path.resolve().as_uri())
    page.wait_for_function("window.attnkit && window.attnkit.ready", timeout=20_000)
    return page, errors


def canvas_digest(page: Any, canvas_id: str) -> str:
    url = page.evaluate(f"document.getElementById('{canvas_id}').toDataURL()")
    return hashlib.sha256(url.encode()).hexdigest()


def toy_report(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    model = ToyClassifier(depth=3, heads=4).eval()
    tokens = torch.randint(0, 20, (1, 12))
    example = ExplainInput(inputs=(tokens,), first_input=1, title="toy classifier",
                           labels={"input": ["[CLS]"] + [f"w{int(t)}" for t in tokens[0]]})
    return write_html(tmp_path / "toy.html", **build_report(model, example))


def test_page_loads_switches_layer_and_method_without_errors(browser: Any,
                                                             tmp_path: Path) -> None:
    page, errors = open_page(browser, toy_report(tmp_path))
    first = canvas_digest(page, "heatmap")
    page.select_option("#layer", "2")
    assert page.evaluate("window.attnkit.state.layer") == 2
    assert canvas_digest(page, "heatmap") != first, "switching layer did not change the map"
    links = canvas_digest(page, "links")
    page.select_option("#head", "1")
    assert canvas_digest(page, "links") != links, "switching head did not change the links"
    for method in ("1", "2"):  # rollout, relevance
        page.select_option("#method", method)
        assert page.evaluate("window.attnkit.state.method") == int(method)
    page.click("#heatmap", position={"x": 300, "y": 400})  # select another query row
    page.hover("#heatmap", position={"x": 100, "y": 100})
    assert "weight" in page.inner_text("#tooltip")
    page.select_option("#method", "0")  # raw: 3 layers x 4 heads
    page.click("#view-model")
    assert page.is_visible("#grid") and not page.is_visible("#heatmap")
    label_width = page.evaluate("document.getElementById('grid')._cell.labelW")
    page.click("#grid", position={"x": label_width + 78 + 10, "y": 20 + 78 + 10}, timeout=5000)
    state = "[window.attnkit.state.view, window.attnkit.state.layer, window.attnkit.state.head]"
    assert page.evaluate(state) == ["head", 1, 1]  # the tile of layer 1, head 1 opened
    assert page.locator("canvas.attribution").count() == 4  # rollout, relevance, flow, ixg
    shot = SCREENSHOTS / "attnkit_explain_toy.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    assert errors == []


def test_cross_attention_layers_render(browser: Any, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = ToySeq2Seq().eval()
    src, tgt = torch.randint(0, 20, (1, 7)), torch.randint(0, 20, (1, 5))
    example = ExplainInput(inputs=(src, tgt), explained_row=-1, title="toy seq2seq",
                           labels={"input": [f"s{int(t)}" for t in src[0]],
                                   "target": [f"t{int(t)}" for t in tgt[0]]})
    page, errors = open_page(browser, write_html(tmp_path / "s2s.html",
                                                 **build_report(model, example)))
    options = page.eval_on_selector_all("#layer option", "els => els.map(e => e.textContent)")
    assert any("(cross)" in o for o in options)
    cross = next(i for i, o in enumerate(options) if "(cross)" in o)
    page.select_option("#layer", str(cross))
    size = page.evaluate("[document.getElementById('heatmap').width,"
                         " document.getElementById('heatmap').height]")
    assert size[0] > size[1]  # 5 target rows x 7 source columns: wider than tall
    assert errors == []


def trained_seq2seq() -> tuple[Any, torch.Tensor, torch.Tensor]:
    """An attnkit Seq2SeqTransformer with its real layer names, briefly trained to copy."""
    from attnkit.models.config import ModelConfig
    from attnkit.models.seq2seq import build_seq2seq

    torch.manual_seed(0)
    model = build_seq2seq(ModelConfig(d_model=32, num_heads=2, d_ff=64, num_layers=2,
                                      dropout=0.0, positional="rope"),
                          source_vocab_size=24, target_vocab_size=24)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(40):
        src = torch.randint(4, 24, (16, 9))
        tgt = torch.cat([torch.full((16, 1), 2), src], dim=1)
        loss = torch.nn.functional.cross_entropy(model(src, tgt[:, :-1]).flatten(0, 1),
                                                 tgt[:, 1:].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    src = torch.randint(4, 24, (1, 9))
    return model.eval(), src, torch.cat([torch.tensor([[2]]), src[:, :6]], dim=1)


def test_seq2seq_report_opens_each_layer_on_its_explained_row(browser: Any,
                                                               tmp_path: Path) -> None:
    model, src, tgt = trained_seq2seq()
    text = "a source sentence\nwith a line break that must stay out of the title"
    example = ExplainInput(inputs=(src, tgt), explained_row=-1, title="copy · test:0",
                           text=text, labels={"input": [f"s{int(t)}" for t in src[0]],
                                              "target": [f"t{int(t)}" for t in tgt[0]]})
    page, errors = open_page(browser, write_html(tmp_path / "s2s-real.html",
                                                 **build_report(model, example)))
    assert page.title() == "copy · test:0" and page.inner_text("#title") == "copy · test:0"
    assert page.is_visible("#input-panel") and page.inner_text("#input-text") == text
    options = page.eval_on_selector_all("#layer option", "els => els.map(e => e.textContent)")
    target_rows = tgt.shape[1]
    for index, option in enumerate(options):
        page.select_option("#layer", str(index))
        query = page.evaluate("window.attnkit.state.query")
        if option.startswith("decoder"):  # self and cross layers: the explained target token
            assert query == target_rows - 1, (option, query)
        else:  # encoder layers: a source row, within the source
            assert 0 <= query < src.shape[1], (option, query)
    assert any("cross" in o for o in options)
    # Clicking a target row in one decoder layer keeps it in the other decoder layers.
    cross = next(i for i, o in enumerate(options) if "(cross)" in o)
    page.select_option("#layer", str(cross))
    page.click("#heatmap", position={"x": 10, "y": 5})
    assert page.evaluate("window.attnkit.state.query") == 0
    page.select_option("#layer", str(cross - 1))
    assert page.evaluate("window.attnkit.state.query") == 0
    # Model view: the label column fits the longest layer name (nothing is cut).
    page.click("#view-model")
    fits = page.evaluate("""() => {
        const grid = document.getElementById('grid'), ctx = grid.getContext('2d');
        ctx.font = '11px sans-serif';
        const names = window.attnkit.state && Array.from(document.querySelectorAll('#layer option'))
            .map((o) => o.textContent);
        return names.every((n) => ctx.measureText(n).width + 2 <= grid._cell.labelW);
    }""")
    assert fits
    page.screenshot(path=str(SCREENSHOTS / "attnkit_explain_seq2seq.png"), full_page=True)
    assert errors == []


def test_two_thousand_token_report_of_a_trained_language_model(browser: Any,
                                                               tmp_path: Path) -> None:
    """A RoPE language model trained on 64-token windows explains 2,000 tokens."""
    from attnkit.explain.examples import example_from_task
    from attnkit.models.config import ModelConfig
    from attnkit.models.decoder import build_decoder_lm
    from attnkit.tasks import Task

    torch.manual_seed(0)
    vocab, length = 12, 2000
    model = build_decoder_lm(ModelConfig(d_model=32, num_heads=2, d_ff=64, num_layers=2,
                                         dropout=0.0, max_length=64, positional="rope"),
                             vocab_size=vocab)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(30):  # a cyclic sequence: predictable, so the maps are not random
        start = torch.randint(0, 8, (8, 1))
        tokens = (start + torch.arange(65)) % 8 + 4
        loss = torch.nn.functional.cross_entropy(model(tokens[:, :-1]).flatten(0, 1),
                                                 tokens[:, 1:].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    task = Task(name="cycle", kind="language_model", modality="text", train=[], val=[], test=[],
                vocab_size=vocab, input_shape=(0,), metric="loss",
                decode=lambda ids: "".join("abcdefghijkl"[int(i)] for i in ids))
    data = torch.arange(length) % 8 + 4
    example = example_from_task(model.eval(), task, data, title="cycle · 2,000 tokens")
    start = time.perf_counter()
    report = build_report(model, example)
    build_seconds = time.perf_counter() - start
    page, errors = open_page(browser, write_html(tmp_path / "lm2000.html", **report))
    assert page.evaluate("window.attnkit.state.query") == length - 1  # the explained token
    first = canvas_digest(page, "heatmap")
    page.select_option("#layer", "1")
    assert canvas_digest(page, "heatmap") != first
    assert page.evaluate("window.attnkit.state.query") == length - 1
    assert build_seconds < 120 and errors == []


def test_two_thousand_tokens_render_quickly(browser: Any, tmp_path: Path) -> None:
    length, heads, layers = 2048, 4, 3
    g = torch.Generator().manual_seed(0)
    labels = [f"tok{i}" for i in range(length)]
    encoded = []
    for layer in range(layers):
        scores = torch.randn(heads, length, length, generator=g) * 3
        causal = torch.ones(length, length, dtype=torch.bool).tril()
        maps = scores.masked_fill(~causal, float("-inf")).softmax(-1)
        encoded.append(encode_layer(name=f"layer {layer}", maps=maps, top_k=8))
    path = write_html(tmp_path / "long.html", title="2048 tokens", labels={"input": labels},
                      methods={"raw": encoded}, query=-1,
                      attributions=[encode_attribution(method="random",
                                                       values=torch.rand(length))])
    start = time.perf_counter()
    page, errors = open_page(browser, path)
    load_seconds = time.perf_counter() - start
    first = canvas_digest(page, "heatmap")
    start = time.perf_counter()
    page.select_option("#layer", "1")
    page.evaluate("window.attnkit.lastRenderMs")
    switch_seconds = time.perf_counter() - start
    assert canvas_digest(page, "heatmap") != first
    render_ms = page.evaluate("window.attnkit.lastRenderMs")
    assert page.evaluate("window.attnkit.state.query") == length - 1  # query=-1: last row
    before = canvas_digest(page, "heatmap")
    page.check("#rowscale")  # colours relative to each row's maximum
    assert canvas_digest(page, "heatmap") != before
    page.screenshot(path=str(SCREENSHOTS / "attnkit_explain_2048.png"))
    assert load_seconds < 10, f"page took {load_seconds:.1f}s to load"
    assert switch_seconds < 3 and render_ms < 2000, (switch_seconds, render_ms)
    assert errors == []


def test_one_call_report_renders_inline_in_its_iframe_offline(browser: Any, tmp_path: Path) -> None:
    from attnkit.explain import explain
    from attnkit.models import ModelConfig, build_vit

    torch.manual_seed(0)
    model = build_vit(ModelConfig(d_model=16, num_heads=2, num_layers=2, d_ff=32,
                                  patch_size=4), image_shape=(1, 8, 8), num_classes=3)
    report = explain(model, torch.randn(1, 8, 8), method="rollout")
    notebook_cell = tmp_path / "cell.html"
    notebook_cell.write_text(f"<!DOCTYPE html><html><body><h1>cell</h1>"
                             f"{report._repr_html_()}</body></html>", encoding="utf-8")
    page, errors = watched_page(browser)
    page.goto(notebook_cell.resolve().as_uri())
    frame = page.frames[1]
    frame.wait_for_function("window.attnkit && window.attnkit.ready", timeout=20_000)
    chosen = frame.evaluate("document.getElementById('method').selectedOptions[0].textContent")
    assert "rollout" in chosen  # the method asked for is shown first
    drawn = frame.evaluate("document.getElementById('heatmap').toDataURL().length")
    assert drawn > 1000  # a drawn heatmap, not an empty canvas
    assert errors == []
