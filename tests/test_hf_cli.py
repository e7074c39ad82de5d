"""``--hf PATH`` on explain, faithfulness, eval, generate and train, and the one-call explain()."""

from __future__ import annotations

import json

import pytest
import torch

import attnkit.hf
from attnkit.cli import main
from attnkit.explain import Report, explain
from attnkit.models import ModelConfig, build_vit
from hf_builders import save, tiny_bert, tiny_gpt2, tiny_vit, transformers, word_tokenizer


@pytest.fixture(scope="module")
def bert_folder(tmp_path_factory):
    folder = save(tiny_bert(vocab_size=16), tmp_path_factory.mktemp("bert") / "bert")
    word_tokenizer(folder, bert=True)
    return folder


@pytest.fixture(scope="module")
def vit_folder(tmp_path_factory):
    folder = save(tiny_vit(), tmp_path_factory.mktemp("vit") / "vit")
    transformers.ViTImageProcessor(size={"height": 16, "width": 16}).save_pretrained(folder)
    return folder


def _png(path, seed):
    from PIL import Image

    pixels = torch.randint(0, 256, (20, 24, 3), generator=torch.Generator().manual_seed(seed))
    Image.fromarray(pixels.to(torch.uint8).numpy()).save(path)
    return path


def _report_data(path):
    page = path.read_text()
    assert "https://" not in page and "http://" not in page  # offline: nothing fetched
    return page


def test_explain_bert_text_with_its_tokenizer(bert_folder, tmp_path, capsys):
    out = tmp_path / "bert.html"
    assert main(["explain", "--hf", str(bert_folder), "--text", "the cat sat on the mat",
                 "--out", str(out)]) == 0
    page = _report_data(out)
    for label in ("[CLS]", "cat", "[SEP]", "attention flow", "gradient relevance",
                  "attention rollout"):
        assert label in page


def test_explain_vit_image_with_its_processor(vit_folder, tmp_path):
    out = tmp_path / "vit.html"
    image = _png(tmp_path / "x.png", 0)
    assert main(["explain", "--hf", str(vit_folder), "--image", str(image), "--out",
                 str(out), "--png", str(tmp_path / "png")]) == 0
    assert (tmp_path / "png" / "relevance_overlay.png").is_file()
    page = _report_data(out)
    assert "patch 3,3" in page and "[CLS]" in page


def test_generate_with_the_folders_tokenizer(tmp_path, capsys):
    hf = tiny_gpt2(vocab_size=16)
    folder = save(hf, tmp_path / "gpt2")
    tokenizer = word_tokenizer(folder, bert=False)
    assert main(["generate", "--hf", str(folder), "--prompt", "the dog ran",
                 "--max-new-tokens", "6"]) == 0
    ids = tokenizer("the dog ran")["input_ids"]
    expected = hf.generate(torch.tensor([ids]), max_new_tokens=6, do_sample=False,
                           pad_token_id=0, eos_token_id=None)
    assert capsys.readouterr().out.strip() == tokenizer.decode(expected[0].tolist())


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error for an absent device")
def test_hf_commands_take_the_device(bert_folder, vit_folder, tmp_path, capsys):
    """--device reaches the loaded checkpoint on every --hf command that runs a model."""
    texts = tmp_path / "texts.txt"
    texts.write_text("the cat sat on the mat\na dog ran far away\n")
    for command in (["explain", "--hf", str(bert_folder), "--text", "the cat"],
                    ["faithfulness", "--hf", str(bert_folder), "--texts", str(texts)],
                    ["eval", "--hf", str(vit_folder), "--task", "digits"],
                    ["generate", "--hf", str(bert_folder), "--prompt", "the"]):
        assert main([*command, "--device", "cuda"]) == 2, command
        assert "CUDA is not available" in capsys.readouterr().err, command
    out = tmp_path / "cpu.html"
    assert main(["explain", "--hf", str(bert_folder), "--text", "the cat", "--device", "cpu",
                 "--out", str(out)]) == 0 and out.is_file()


def test_faithfulness_on_loaded_bert_and_vit(bert_folder, vit_folder, tmp_path, capsys):
    texts = tmp_path / "texts.txt"
    texts.write_text("the cat sat on the mat\na dog ran far away\nthe cat slept\n")
    assert main(["faithfulness", "--hf", str(bert_folder), "--texts", str(texts),
                 "--steps", "4"]) == 0
    table = capsys.readouterr().out
    assert "gradient relevance (Chefer)" in table and "random order" in table
    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        _png(images / f"{i}.png", i)
    assert main(["faithfulness", "--hf", str(vit_folder), "--images", str(images),
                 "--steps", "4"]) == 0
    assert "insertion AUC" in capsys.readouterr().out


def _digits_vit(folder):
    torch.manual_seed(0)
    model = build_vit(ModelConfig(d_model=32, num_heads=2, num_layers=1, d_ff=64, dropout=0.0,
                                  patch_size=4, pooling="cls"),
                      image_shape=(1, 8, 8), num_classes=10)
    return attnkit.hf.save(model, folder)


def test_eval_and_finetune_a_checkpoint_on_a_task(tmp_path, capsys):
    folder = _digits_vit(tmp_path / "vit")
    assert main(["eval", "--hf", str(folder), "--task", "digits"]) == 0
    before = json.loads(capsys.readouterr().out)["metrics"]
    assert main(["train", "--hf", str(folder), "--task", "digits", "--epochs", "3",
                 "--out-dir", str(tmp_path / "runs"), "--no-progress",
                 "--set", "train.tensorboard=false"]) == 0
    printed = capsys.readouterr().out
    result = json.loads(printed[printed.rindex('{\n  "run_dir"'):])
    run_dir = result["run_dir"]
    assert result["hf"].endswith("hf-best")
    assert main(["eval", str(run_dir)]) == 0
    after = json.loads(capsys.readouterr().out)["metrics"]
    assert after["accuracy"] > before["accuracy"] + 0.3  # it learned from near chance
    hf = transformers.AutoModelForImageClassification.from_pretrained(result["hf"])
    assert hf.config.num_labels == 10
    assert main(["train", "--resume", run_dir, "--set", "train.epochs=4", "--no-progress"]) == 0
    assert "epoch 4" in capsys.readouterr().out  # resumed from RUN_DIR/hf + the checkpoint
    out = tmp_path / "run.html"  # --hf also takes a run directory
    assert main(["explain", "--hf", run_dir, "--input", "test:1", "--out", str(out)]) == 0
    assert "patch 1,1" in _report_data(out)


def test_one_call_explain_returns_an_inline_report(bert_folder):
    model = attnkit.hf.load(bert_folder)
    report = explain(model, "a dog ran", tokenizer=attnkit.hf.load_tokenizer(bert_folder))
    assert isinstance(report, Report)
    inline = report._repr_html_()
    assert inline.startswith("<iframe srcdoc=") and "https://" not in inline
    with pytest.raises(ValueError, match="tokenizer"):
        explain(model, "a dog ran")


def test_cli_errors_name_the_fix(tmp_path, capsys):
    assert main(["explain"]) == 2
    assert "--hf PATH" in capsys.readouterr().err
    folder = _digits_vit(tmp_path / "vit")
    assert main(["explain", "--hf", str(folder)]) == 2
    assert "--image" in capsys.readouterr().err
    assert main(["eval", "--hf", str(folder), "--task", "listops"]) == 2
    assert "images" in capsys.readouterr().err


def test_token_labels_are_readable_for_byte_level_bpe():
    tokenizers = pytest.importorskip("tokenizers", reason="pip install 'attnkit[hf]'")
    from attnkit.explain import tokenize

    bpe = tokenizers.ByteLevelBPETokenizer()
    bpe.train_from_iterator(["the cat sat on the mat"] * 20, vocab_size=280, min_frequency=1,
                            special_tokens=["<|endoftext|>"])
    ids, labels = tokenize(bpe, "the cat sat<|endoftext|>")
    assert labels == ["the", "␣cat", "␣sat", "<|endoftext|>"]
    assert len(ids) == 4
