"""A job with an input and an output: count the words of a text file into counts.json.

rain submit --input examples/jobs/wordcount.py --input README.md --output counts.json \
    --wait -- python3 wordcount.py README.md
rain get JOB --to out/      # out/counts.json, checked against the hash the worker signed
"""

import collections
import json
import pathlib
import re
import sys

text = pathlib.Path(sys.argv[1]).read_text(encoding="utf-8").lower()
counts = collections.Counter(re.findall(r"[a-z']+", text))
with open("counts.json", "w") as out:
    json.dump(dict(counts.most_common(20)), out, indent=1)
print(f"{sum(counts.values())} words, {len(counts)} different; the top 20 in counts.json")
