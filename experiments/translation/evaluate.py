"""Greedy vs beam BLEU of trained translation runs on Multi30k test2016, and examples.

  python experiments/translation/evaluate.py --workdirs=workdirs/translation/transformer,... \
      --beam_sizes=1,4 --out=workdirs/translation/beam.json

Decodes the raw test2016 source sentences with `cnnrnn.translate.load_translator` (the run's
model, tokenisers and decoding settings; only the beam size changes) and scores them with
the translation task's own `translation_metrics` (sacreBLEU 13a detokenised cased, and BLEU
on lowercased word tokens), so the beam-1 row must equal the run's own test evaluation.

To compare runs with different tokenisers on one scale, each row also holds BLEU on the
detokenised translations re-tokenised both ways, against the references tokenised the same
way: `bleu_tok_moses` (lowercased Moses tokens) and `bleu_tok_spacy` (lowercased spaCy
tokens, bentrevett/pytorch-seq2seq's protocol).
"""

import gzip
import json
import os
import time

from absl import app
from absl import flags

from cnnrnn import translate
from cnnrnn.data import tokenizers
from cnnrnn.tasks.translation import tokenized_bleu
from cnnrnn.tasks.translation import translation_metrics

_WORKDIRS = flags.DEFINE_list("workdirs", None, "Translation workdirs.", required=True)
_BEAM_SIZES = flags.DEFINE_list("beam_sizes", ["1", "4"], "Beam sizes (1: greedy).")
_DATA = flags.DEFINE_string("data", "../shared/datasets/multi30k", "Multi30k raw files.")
_OUT = flags.DEFINE_string("out", None, "JSON lines file to append results to.", required=True)
_CHECKPOINTS = flags.DEFINE_list("checkpoints", ["latest"],
                                 "Checkpoints to decode: 'latest', 'best' (the best validation "
                                 "BLEU, runs with checkpoint.keep_best) or step numbers.")
_EXAMPLES = flags.DEFINE_list("examples", ["0", "10", "100", "500", "999"],
                              "Test sentence indices printed with their translations.")


def _lines(path: str) -> list[str]:
  with gzip.open(path, "rt", encoding="utf-8") as f:
    return f.read().splitlines()


def main(argv):
  del argv
  source = _lines(os.path.join(_DATA.value, "test_2016_flickr.de.gz"))
  reference = _lines(os.path.join(_DATA.value, "test_2016_flickr.en.gz"))
  for workdir in _WORKDIRS.value:
    for checkpoint, beam in [(c, int(b)) for c in _CHECKPOINTS.value for b in _BEAM_SIZES.value]:
      translator = translate.load_translator(workdir, checkpoint, beam_size=beam)
      start = time.perf_counter()
      ids = translator.translate_ids(source, batch_size=100)
      seconds = time.perf_counter() - start
      metrics = translation_metrics(ids, reference, translator.target_tokenizer)
      hyps = [translator.target_tokenizer.decode(i) for i in ids]
      for name, words in (("moses", tokenizers.moses_tokens), ("spacy", tokenizers.spacy_tokens)):
        metrics[f"bleu_tok_{name}"] = tokenized_bleu(
            [" ".join(words(h, "en")) for h in hyps],
            [" ".join(words(r, "en")) for r in reference]).score
      row = {"workdir": workdir, "checkpoint": checkpoint, "beam_size": beam,
             "length_penalty": translator.task.length_penalty, "decode_seconds": seconds,
             **metrics,
             "examples": [{"index": int(k), "source": source[int(k)],
                           "reference": reference[int(k)], "translation": hyps[int(k)]}
                          for k in _EXAMPLES.value]}
      print(json.dumps(row, ensure_ascii=False), flush=True)
      with open(_OUT.value, "a", encoding="utf-8") as f:
        f.write(json.dumps(row, ensure_ascii=False) + "\n")


if __name__ == "__main__":
  app.run(main)
