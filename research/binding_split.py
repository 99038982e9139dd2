#!/usr/bin/env python3
"""Exact match per ShapesVQA family, split by whether the scene binds the answer: for colour,
shape, size, texture and position, whether the asked-for attribute takes one value in the
scene (answerable from the scene's set of attributes alone) or several (the question's object
must be told apart); for existence and counts, by the number of objects.

    research/binding_split.py PREDS.jsonl TEST.json TEST.scenes.json

PREDS is `htc eval --out` (LLaVA answer-file JSONL); TEST and its scenes are what
`htc data shapes --split test` wrote. Standard library only.
"""
import collections
import json
import sys


def column(o):
    return min(2, o["cx"] * 3 // 336)


ATTRIBUTE = {
    "color": lambda o: o["color"],
    "shape": lambda o: o["shape"],
    "size": lambda o: o["extent"],
    "texture": lambda o: o["texture"],
    "position": column,
}


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    preds, test, scenes = sys.argv[1:]
    records = {r["id"]: r for r in json.load(open(test))}
    objects = {s["image"]: s["objects"] for s in json.load(open(scenes))}
    tally = collections.defaultdict(lambda: [0, 0])
    for line in open(preds):
        p = json.loads(line)
        r = records[p["question_id"]]
        objs = objects[r["image"]]
        gold = r["conversations"][1]["value"]
        right = p["text"].strip().lower().rstrip(".") == gold
        fam = r["family"]
        if fam in ATTRIBUTE:
            group = "one value" if len({ATTRIBUTE[fam](o) for o in objs}) == 1 else "several values"
        else:
            group = f"{len(objs)} object(s)"
        tally[(fam, group)][0] += right
        tally[(fam, group)][1] += 1
    for (fam, group), (k, n) in sorted(tally.items()):
        print(f"{fam:9s} {group:15s} {100 * k / n:5.1f}%  ({k}/{n})")


if __name__ == "__main__":
    main()
