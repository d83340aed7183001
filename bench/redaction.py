"""PII redaction: Continuum's redactor against Presidio's pattern recognizers, on the same texts, one core.

The peer is presidio-analyzer's AnalyzerEngine with its no-op NLP engine (no spaCy model is installed
here, and a pattern-only deployment needs none) and the recognizers for the same entities: Email, Phone
(phonenumbers), CreditCard (Luhn), Iban (checksum), UsSsn, Ip, plus a custom PatternRecognizer for SECRET
built from our key formats (Presidio ships none). Measured:
- texts/s on ~200-character PII-rich texts (two canaries each) and on clean support-desk texts, in CPU
  seconds of this single-threaded process; best of interleaved rounds; both sides analyse every text (ours
  also redacts);
- recall and precision per entity on the canary corpus (each canary in a sentence, JSON, a code block and
  punctuation) plus the negatives and generated support-desk texts, whose every detection is a false
  positive. A canary is found when detections of its entity overlap it and, masked, leave no trace of it.
Writes bench/results/redaction.json. Run: `python bench/redaction.py` (needs the `bench` extra).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from continuum_pipeline.privacy.redact import _SECRETS, KINDS, Redactor  # noqa: E402
from continuum_pipeline_tests.pii_canaries import (  # noqa: E402
    CANARIES,
    NEGATIVES,
    canary_texts,
    support_desk_texts,
)


def presidio_analyzer():
    import logging

    from presidio_analyzer import AnalyzerEngine, Pattern, PatternRecognizer, RecognizerRegistry
    from presidio_analyzer.nlp_engine import NoOpNlpEngine
    from presidio_analyzer.predefined_recognizers import (
        CreditCardRecognizer,
        EmailRecognizer,
        IbanRecognizer,
        IpRecognizer,
        PhoneRecognizer,
        UsSsnRecognizer,
    )

    logging.getLogger("presidio-analyzer").setLevel(logging.ERROR)
    logging.getLogger("tldextract").setLevel(logging.CRITICAL)  # offline: it falls back to its bundled list
    secret = PatternRecognizer(supported_entity="SECRET", name="SecretRecognizer",
                               patterns=[Pattern("secret", _SECRETS.pattern, 0.9)],
                               global_regex_flags=_SECRETS.flags)  # case-sensitive, as ours
    registry = RecognizerRegistry(supported_languages=["en"])
    for recognizer in (EmailRecognizer(), PhoneRecognizer(), CreditCardRecognizer(), IbanRecognizer(),
                       UsSsnRecognizer(), IpRecognizer(), secret):
        registry.add_recognizer(recognizer)
    engine = AnalyzerEngine(registry=registry, nlp_engine=NoOpNlpEngine(models=[{"lang_code": "en",
                                                                                  "model_name": "none"}]))

    def find(text: str) -> list[tuple[int, int, str]]:
        return [(r.start, r.end, r.entity_type) for r in engine.analyze(text, language="en", entities=list(KINDS))]

    find("warm up: a@example.com")  # tldextract loads its suffix list on first use
    return find


def workloads(n_clean: int, n_rich: int, seed: int = 3) -> tuple[list[str], list[str]]:
    """~200-character texts: clean ones from support-desk sentences; PII-rich ones with two canaries among
    support-desk sentences."""
    rng = random.Random(seed)
    desk = support_desk_texts(400)
    canaries = [v for values in CANARIES.values() for v in values if "\n" not in v]

    def filler(n: int) -> str:
        out = ""
        while len(out) < n:
            out += rng.choice(desk) + " "
        return out[:n]

    clean = [filler(200) for _ in range(n_clean)]
    rich = []
    for _ in range(n_rich):
        a, b = rng.sample(canaries, 2)
        gap = max(20, (200 - len(a) - len(b)) // 3)
        rich.append(f"{filler(gap)} {a} {filler(gap)} {b} {filler(gap)}"[:max(200, len(a) + len(b) + 3 * 20 + 4)])
    return clean, rich


def throughput(fn, texts: list[str]) -> float:
    """texts/s of one round in CPU seconds of this process (time.process_time): single-threaded, and other
    jobs on a shared machine do not skew it."""
    t = time.process_time()
    for text in texts:
        fn(text)
    return len(texts) / (time.process_time() - t)


def accuracy(find, negatives: list[str]) -> dict[str, dict[str, float]]:
    """Per entity: recall over the canary texts, precision over every detection (canary texts + negatives)."""
    hits = {k: 0 for k in KINDS}
    total = {k: 0 for k in KINDS}
    detections = {k: 0 for k in KINDS}
    true_detections = {k: 0 for k in KINDS}
    for text, kind, value in canary_texts():
        at = text.find(value)
        if at < 0:  # inside JSON the value is escaped: locate the escaped form
            value = json.dumps(value)[1:-1]
            at = text.find(value)
        start, end = at, at + len(value)
        total[kind] += 1
        found = find(text)
        # A hit: detections of the canary's kind overlap it, and with them masked the value is gone (a URL's
        # credentials are the secret, its host may stay; a card must be covered whole).
        right = sorted(s for s in found if s[2] == kind and s[0] < end and s[1] > start)
        masked = text
        for s_, e_, _ in reversed(right):
            masked = masked[:s_] + "\x00" + masked[e_:]
        hits[kind] += bool(right) and value not in masked
        for s in found:
            if s[2] in detections:
                detections[s[2]] += 1
                true_detections[s[2]] += s[2] == kind and s[0] < end and s[1] > start
    for text in negatives:
        for s in find(text):
            if s[2] in detections:
                detections[s[2]] += 1
    return {k: {"recall": hits[k] / total[k], "precision": (true_detections[k] / detections[k]) if detections[k]
                else 1.0, "canaries": total[k], "false_positives": detections[k] - true_detections[k]}
            for k in KINDS}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clean", type=int, default=5000, help="clean texts (ours); Presidio gets a fifth")
    parser.add_argument("--rich", type=int, default=2000, help="PII-rich texts (ours); Presidio gets a tenth")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    ours = Redactor()
    presidio = presidio_analyzer()
    clean, rich = workloads(args.clean, args.rich)
    negatives = NEGATIVES + support_desk_texts(1500)

    # Rounds interleave the two sides, so both meet the same machine; the best round of each counts.
    runs = {"ours_clean": (ours.redact, clean), "ours_rich": (ours.redact, rich),
            "presidio_clean": (presidio, clean[: max(50, args.clean // 5)]),
            "presidio_rich": (presidio, rich[: max(50, args.rich // 10)])}
    speed = {name: 0.0 for name in runs}
    for _ in range(args.rounds):
        for name, (fn, texts) in runs.items():
            speed[name] = max(speed[name], throughput(fn, texts))
    import pyarrow as pa

    column = pa.array(clean * 10)
    t = time.process_time()
    flagged = ours.flags(column)
    speed["ours_flags_clean"] = len(column) / (time.process_time() - t)

    acc_ours = accuracy(ours.find, negatives)
    acc_presidio = accuracy(presidio, negatives)

    mean_len = {"clean": sum(map(len, clean)) / len(clean), "rich": sum(map(len, rich)) / len(rich)}
    print(f"texts: {len(clean):,} clean ({mean_len['clean']:.0f} chars), {len(rich):,} PII-rich "
          f"({mean_len['rich']:.0f} chars, 2 canaries each); one core (CPU time), best of {args.rounds} "
          "interleaved rounds")
    print(f"{'texts/s':<30}{'Continuum':>12}{'Presidio':>12}{'ratio':>9}")
    for name in ("clean", "rich"):
        a, b = speed[f"ours_{name}"], speed[f"presidio_{name}"]
        print(f"{name:<30}{a:>12,.0f}{b:>12,.0f}{a / b:>8.1f}x")
    print(f"{'flags() pre-filter, clean':<30}{speed['ours_flags_clean']:>12,.0f}{'':>12}"
          f"   ({flagged.mean():.1%} of clean texts flagged for the exact pass)")
    print(f"\n{'entity':<16}{'canaries':>9}{'recall':>9}{'precision':>11}{'FP':>5}   |"
          f"{'Presidio recall':>16}{'precision':>11}{'FP':>5}")
    for k in KINDS:
        o, p = acc_ours[k], acc_presidio[k]
        print(f"{k:<16}{o['canaries']:>9}{o['recall']:>9.3f}{o['precision']:>11.3f}{o['false_positives']:>5}   |"
              f"{p['recall']:>16.3f}{p['precision']:>11.3f}{p['false_positives']:>5}")
    n = sum(acc_ours[k]["canaries"] for k in KINDS)
    recall = sum(acc_ours[k]["recall"] * acc_ours[k]["canaries"] for k in KINDS) / n
    recall_p = sum(acc_presidio[k]["recall"] * acc_presidio[k]["canaries"] for k in KINDS) / n
    print(f"{'all':<16}{n:>9}{recall:>9.3f}{'':>16}   |{recall_p:>16.3f}")
    print(f"(negatives: {len(negatives):,} texts — the corpus's NEGATIVES and generated support-desk texts; "
          "Presidio's SECRET uses our key patterns)")
    targets = {">=10x_presidio_rich": speed["ours_rich"] / speed["presidio_rich"] >= 10,
               ">=5k_clean_texts_per_s": speed["ours_clean"] >= 5000,
               "recall>=0.99": recall >= 0.99}
    print("targets:", ", ".join(f"{k} {'met' if v else 'MISSED'}" for k, v in targets.items()))
    out = Path(__file__).parent / "results" / "redaction.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"texts_per_s": speed, "mean_chars": mean_len, "accuracy": {
        "continuum": acc_ours, "presidio": acc_presidio}, "recall": recall, "presidio_recall": recall_p,
        "flagged_clean_share": float(flagged.mean()), "targets": targets}, indent=2))


if __name__ == "__main__":
    main()
