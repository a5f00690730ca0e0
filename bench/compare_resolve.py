"""Dump the edges ``resolve`` finds on the test zoo (no timestamps), to compare two versions of the code.

Usage::

    python bench/compare_resolve.py before.json   # on the old commit
    python bench/compare_resolve.py after.json    # on the new one; then compare the two files

Used to show that moving the family solver out of the registry kept every edge.
"""
import json, sys, tempfile, time
from mothertree.bench.zoo import build_zoo, default_zoo_dir
from mothertree.registry import Registry
zoo = build_zoo(default_zoo_dir("test"), preset="test")
d = tempfile.mkdtemp()
t=time.time()
reg = Registry(f"{d}/z.db")
for m in zoo.models:
    reg.index_one(m.path, name=m.name)
rep = reg.resolve()
edges = sorted([(e.parent, e.child, e.relation, round(e.direction_confidence, 6), round(e.p_value_log10, 4)) for e in reg.tree().edges])
json.dump({"report": rep.to_dict(), "edges": edges}, open(sys.argv[1], "w"), indent=1)
print(time.time()-t, rep)
