"""Graph breaks of each family under torch.compile (dynamo explain)."""
import warnings; warnings.filterwarnings("ignore")
import torch
from attnkit.models import ModelConfig, build_vit, build_encoder_classifier, build_decoder_lm, build_audio_transformer, build_seq2seq
cfg = ModelConfig(d_model=16, num_heads=2, d_ff=32, num_layers=1, dropout=0.0, max_length=32, patch_size=4)
t = torch.randint(1, 20, (2, 9)); t[1, 5:] = 0
cases = {
 "vit": (build_vit(cfg, image_shape=(1, 8, 8), num_classes=3), (torch.randn(2, 1, 8, 8),)),
 "encoder": (build_encoder_classifier(cfg, vocab_size=20, num_classes=3), (t,)),
 "audio": (build_audio_transformer(cfg, features=5, num_classes=3), (torch.randn(2, 9, 5), torch.tensor([9, 4]))),
 "decoder": (build_decoder_lm(cfg, vocab_size=20), (t,)),
 "seq2seq": (build_seq2seq(cfg, source_vocab_size=20, target_vocab_size=20, pad_id=0), (t, torch.randint(1, 20, (2, 6)))),
}
for name, (m, args) in cases.items():
    torch._dynamo.reset()
    e = torch._dynamo.explain(m)(*args)
    def where(b):
        frames = [f for f in b.user_stack if "/attnkit/" in f.filename]
        if not frames:
            return "?"
        f = frames[-1]
        return f"{f.filename.split('/attnkit/')[-1]}:{f.lineno}"
    reasons = sorted({f"{where(b)}: {str(b.reason).splitlines()[0][:100]}"
                      for b in e.break_reasons})
    print(f"{name}: graphs={e.graph_count} breaks={e.graph_break_count}")
    for r in reasons: print("   ", r)
