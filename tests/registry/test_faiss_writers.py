"""Two processes writing the same registry's FAISS files at once end with the files' ids equal to SQL's."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import faiss
import numpy as np
from sqlalchemy import select

from mothertree.registry import Registry
from mothertree.registry._faiss_index import LOCK_NAME, index_ids
from mothertree.registry._models import utc_now
from mothertree.registry._schema import Fingerprint, Model

#: Each writer commits a row and updates FAISS this many times, removing every third of its rows.
ROUNDS = 30

WRITER = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    import numpy as np
    from mothertree.registry import Registry
    from mothertree.registry._schema import Fingerprint
    from sqlalchemy import delete

    url, model_id, go, rounds = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
    rng = np.random.default_rng(model_id)
    reg = Registry(url, upgrade=False)
    mine = []
    while not go.exists():
        time.sleep(0.01)
    for i in range(rounds):
        vec = rng.standard_normal(16).astype(np.float32)
        with reg.session() as s:
            row = Fingerprint(model_id=model_id, kind="aligned", level="model", dim=16, vector=vec.tobytes())
            s.add(row)
            s.flush()
            fid = row.id
        mine.append(fid)
        gone = []
        if i % 3 == 2:
            gone = [mine.pop(0)]
            with reg.session() as s:
                s.execute(delete(Fingerprint).where(Fingerprint.id == gone[0]))
        reg.vectors.update(add=[(fid, "aligned", "model", vec)], remove=gone)
    reg.close()
    """
)


def _model(s, name: str) -> int:
    m = Model(name=name, source=f"/nowhere/{name}", file_format="safetensors", architecture="llama", num_parameters=1,
              content_digest=name, indexed_at=utc_now())
    s.add(m)
    s.flush()
    return m.id


def test_two_processes_writing_faiss_at_once_end_in_step_with_sql(db_url, tmp_path, monkeypatch):
    monkeypatch.setenv("MOTHERTREE_HOME", str(tmp_path / "home"))
    with Registry(db_url) as reg, reg.session() as s:
        ids = [_model(s, "a"), _model(s, "b")]
    go = tmp_path / "go"
    env = {**os.environ, "MOTHERTREE_HOME": str(tmp_path / "home")}
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, db_url, str(mid), str(go), str(ROUNDS)], env=env,
                         stderr=subprocess.PIPE, text=True)
        for mid in ids
    ]
    time.sleep(3)  # both imported and waiting: start them together
    go.touch()
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
    with Registry(db_url, upgrade=False) as reg:
        key = ("aligned", "model", 16)
        with reg.session() as s:
            sql_ids = sorted(s.scalars(select(Fingerprint.id)))
        assert len(sql_ids) == 2 * (ROUNDS - ROUNDS // 3)
        on_disk = faiss.read_index(str(reg.vectors.path(key)))  # the file as the writers left it
        assert sorted(index_ids(on_disk).tolist()) == sql_ids
        assert reg.vectors.drift() == ()
        assert (reg.vectors.home / LOCK_NAME).exists()
        scores, found = reg.vectors.search(key, np.ones(16, np.float32), 100)
        assert sorted(found[0].tolist()) == sql_ids and not reg.vectors.notices
