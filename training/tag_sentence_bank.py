"""Write the asserts/negates tags (synthetic.phantoms.SENTENCE_TAGS) into a committed sentence bank.

    .venv/bin/python training/tag_sentence_bank.py [services/triton/model_repository/report_encoder/1/sentence_bank.json]

Deterministic and without torch: texts and embeddings stay exactly as trained; only the tags are
(re)written. train_reference_models.py writes the same tags when it builds a bank.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from synthetic.phantoms import SENTENCE_TAGS  # noqa: E402

DEFAULT_BANK = Path(__file__).resolve().parent.parent / "services/triton/model_repository/report_encoder/1/sentence_bank.json"


def tag_bank(path: Path) -> int:
    bank = json.loads(path.read_text())
    unknown = [s["text"] for s in bank["sentences"] if s["text"] not in SENTENCE_TAGS]
    if unknown:
        raise SystemExit(f"{path}: no tags known for {unknown}; add them to synthetic.phantoms.SENTENCE_TAGS")
    tagged = []
    for s in bank["sentences"]:
        asserts, negates = SENTENCE_TAGS[s["text"]]
        tagged.append({"text": s["text"], "asserts": list(asserts), "negates": list(negates), "embedding": s["embedding"]})
    path.write_text(json.dumps({**bank, "sentences": tagged}) + "\n")
    return len(tagged)


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_BANK
    print(f"tagged {tag_bank(target)} sentences in {target}")
