"""Time an explain report in headless Chromium: page load and layer switches.

    python -m attnkit.explain.page_timing REPORT.html [--chromium /usr/bin/chromium] [--repeats 5]

Needs the ``browser`` extra (playwright, driving the system Chromium; never downloads one).
Load = navigation start until the viewer reports ready (data decoded, first map drawn); layer
switch = selecting the next layer until the page's own render finished (``lastRenderMs`` is the
render alone). Medians over ``repeats`` loads and over every layer switch.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

__all__ = ["time_report"]

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def time_report(path: Path, *, chromium: str = "/usr/bin/chromium", repeats: int = 5
                ) -> dict[str, float]:
    """Median seconds: ``load_s``, ``layer_switch_s`` (round trip) and ``render_ms`` (in page)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as err:
        raise SystemExit("needs playwright: pip install 'attnkit[browser]'") from err
    loads, switches, renders = [], [], []
    with tempfile.TemporaryDirectory(prefix="attnkit-chromium-") as profile, \
            sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            profile, executable_path=chromium, args=FLAGS, headless=True,
            viewport={"width": 1400, "height": 1000})
        try:
            for _ in range(repeats):
                page = context.new_page()
                start = time.perf_counter()
                page.goto(path.resolve().as_uri())
                page.wait_for_function("window.attnkit && window.attnkit.ready", timeout=120_000)
                loads.append(time.perf_counter() - start)
                layers = page.eval_on_selector_all("#layer option", "els => els.length")
                for layer in range(1, layers):
                    start = time.perf_counter()
                    page.select_option("#layer", str(layer))
                    renders.append(float(page.evaluate("window.attnkit.lastRenderMs")))
                    switches.append(time.perf_counter() - start)
                page.close()
        finally:
            context.close()
    return {"load_s": statistics.median(loads),
            "layer_switch_s": statistics.median(switches) if switches else float("nan"),
            "render_ms": statistics.median(renders) if renders else float("nan"),
            "loads": len(loads), "switches": len(switches)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path)
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    if not args.report.is_file():
        parser.error(f"no report at {args.report}")
    result = time_report(args.report, chromium=args.chromium, repeats=args.repeats)
    print(", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                    for k, v in result.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
