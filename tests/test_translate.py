"""cnnrnn.translate restores a trained translation run and decodes as its evaluation did."""

import json
import re
import subprocess
import sys

import numpy as np
import pytest

from cnnrnn import data
from cnnrnn import train
from cnnrnn import translate
from cnnrnn.tasks import translation
from tests.helpers import REPO
from tests.train.test_translation import tiny_config


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  root = tmp_path_factory.mktemp("translate")
  c = tiny_config(str(root / "tfds"), str(root / "tokenizers"), num_train_steps=30)
  train.train_and_evaluate(c, str(root / "run"))
  return root / "run"


@pytest.fixture(scope="module")
def translator(run):
  return translate.load_translator(str(run))


@pytest.mark.slow
def test_translations_reproduce_the_runs_test_bleu(run, translator):
  records = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
  test = records[-1]
  config = json.loads((run / "config.json").read_text())
  ds = data.load("multi30k", config["dataset"]["data_dir"], config["dataset"]["manual_dir"])
  source = ds.split("test")
  sources = [source[i]["de"].decode() for i in range(len(source))]
  references = [source[i]["en"].decode() for i in range(len(source))]
  ids = translator.translate_ids(sources, batch_size=256)
  metrics = translation.translation_metrics(ids, references, translator.target_tokenizer)
  assert metrics["bleu"] == pytest.approx(test["bleu"], abs=1e-9)
  assert metrics["bleu_tok"] == pytest.approx(test["bleu_tok"], abs=1e-9)
  # In input order, whatever the batching.
  reordered = translator.translate(sources[:300][::-1], batch_size=256)
  assert reordered == [translator.target_tokenizer.decode(i) for i in ids[:300][::-1]]


@pytest.mark.slow
def test_attention_heat_map(translator, tmp_path):
  sentence = "Ein Hund läuft im Schnee."
  matrix, source, target = translator.attention(sentence)
  assert source == translator.source_tokenizer.pieces(translator.source_tokenizer.encode(sentence))
  assert target[-1] == "</s>" and matrix.shape == (len(target), len(source))
  np.testing.assert_allclose(matrix.sum(axis=1), 1.0, rtol=1e-5)  # Over real source tokens.
  translate.plot_attention(matrix, source, target, str(tmp_path / "a.png"))
  assert (tmp_path / "a.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_command_line(run, tmp_path):
  png = tmp_path / "attention.png"
  out = subprocess.run(
      [sys.executable, "-m", "cnnrnn.translate", f"--workdir={run}", "--beam_size=2",
       "--sentence=Zwei Männer stehen im Freien.", f"--attention_png={png}"],
      cwd=REPO, capture_output=True, text=True, check=True)
  assert len(out.stdout.splitlines()) == 1 and png.exists()
  bad = subprocess.run([sys.executable, "-m", "cnnrnn.translate", f"--workdir={tmp_path}"],
                       cwd=REPO, capture_output=True, text=True)
  assert bad.returncode != 0 and "config.json not found" in bad.stderr


@pytest.mark.parametrize("flags,message", [
    (dict(batch_size=0), "--batch_size=0; allowed: an integer >= 1"),
    (dict(beam_size=0), "--beam_size=0; allowed: an integer >= 1"),
    (dict(length_penalty=float("nan")), "--length_penalty=nan; allowed: a finite number >= 0"),
    (dict(max_decode_len=0), "--max_decode_len=0; allowed: an integer >= 1"),
    (dict(sentence=""), "--sentence='' is empty"),
])
def test_bad_flags_are_named(flags, message):
  values = dict(batch_size=64, beam_size=None, length_penalty=None, max_decode_len=None,
                sentence=None) | flags
  with pytest.raises(ValueError, match=re.escape(message)):
    translate.check_flags(**values)


def test_bad_input_files_are_named(tmp_path):
  latin = tmp_path / "sentences.de"
  latin.write_bytes("Grüße aus Köln\n".encode("latin-1"))
  with pytest.raises(ValueError, match=re.escape(f"--input={latin} is not UTF-8 text")):
    translate.read_sentences(None, str(latin))
  with pytest.raises(ValueError, match=re.escape(f"--input={tmp_path} is a directory")):
    translate.read_sentences(None, str(tmp_path))
  with pytest.raises(ValueError, match=re.escape(f"--input={tmp_path / 'no'}: no such file")):
    translate.read_sentences(None, str(tmp_path / "no"))
  (tmp_path / "ok.de").write_text("Ein Hund.\nZwei Katzen.\n", encoding="utf-8")
  assert translate.read_sentences(None, str(tmp_path / "ok.de")) == ["Ein Hund.", "Zwei Katzen."]
