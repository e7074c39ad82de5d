"""Which attention kinds export to ONNX, per family (tiny random models).

    python docs/scripts/interop_kinds_export.py [KIND ...]     # default: every registered kind
"""
import sys, tempfile, warnings, logging
warnings.filterwarnings("ignore")
logging.disable(logging.WARNING)
import torch
from attnkit.export import export_onnx
from attnkit.layers import list_attention_kinds
from attnkit.models import ModelConfig, build_vit, build_encoder_classifier, build_decoder_lm

rows = []
for kind in sys.argv[1:] or list_attention_kinds():
    cfg = ModelConfig(d_model=16, num_heads=2, d_ff=32, num_layers=1, dropout=0.0, max_length=32,
                      patch_size=4, attention=kind)
    cells = []
    for family in ("vit", "encoder", "decoder"):
        torch.manual_seed(0)
        try:
            if family == "vit":
                m = build_vit(cfg, image_shape=(1, 8, 8), num_classes=3)
                inputs, axes = {"x": torch.randn(2, 1, 8, 8)}, {"x": {0: "batch"}}
                other = [{"x": torch.randn(3, 1, 8, 8)}]
            elif family == "encoder":
                m = build_encoder_classifier(cfg, vocab_size=20, num_classes=3)
                t = torch.randint(1, 20, (2, 9)); t[1, 5:] = 0
                inputs, axes = {"x": t}, {"x": {0: "batch", 1: "length"}}
                other = [{"x": torch.randint(1, 20, (3, 6))}]
            else:
                m = build_decoder_lm(cfg, vocab_size=20)
                inputs, axes = {"tokens": torch.randint(0, 20, (2, 9))}, {"tokens": {0: "batch", 1: "length"}}
                other = [{"tokens": torch.randint(0, 20, (3, 6))}]
            with tempfile.TemporaryDirectory() as d:
                r = export_onnx(m, inputs, f"{d}/m.onnx", dynamic_axes=axes,
                                max_lengths={"length": 32}, check_inputs=other)
            cells.append(f"yes ({max(r.max_abs_diff.values()):.1e})")
        except Exception as e:
            msg = str(e).split(": ", 1)[-1][:90].replace("|", "/")
            cells.append(f"no: {msg}")
        print(kind, family, cells[-1], file=sys.stderr, flush=True)
    rows.append(f"| {kind} | " + " | ".join(cells) + " |")
print("| kind | ViT | encoder | decoder LM |\n|---|---|---|---|")
print("\n".join(rows))
