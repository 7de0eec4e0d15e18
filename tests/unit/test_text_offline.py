"""The bundled text model loads and encodes with the network disabled.

A child interpreter (cwd: the repository root) starts with Hugging Face's offline switches, an
empty ``HF_HOME`` and every way out to the network (``socket.socket.connect``,
``socket.create_connection``, ``socket.getaddrinfo``) replaced by one that raises ``OSError``,
then imports :mod:`features.text` and embeds a few strings: any attempt to fetch the model
makes it exit non-zero.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from features.text import EMBEDDING_DIM

REPO_ROOT = Path(__file__).resolve().parents[2]
TEXTS = ["cordless drill", "battery powered drill", "bath towel"]

CHILD = """
import json, socket, sys

def refuse(*args, **kwargs):
    raise OSError("network disabled: " + repr(args[:2]))

socket.socket.connect = refuse
socket.create_connection = refuse
socket.getaddrinfo = refuse
try:
    socket.create_connection(("127.0.0.1", 9))
except OSError as err:
    guarded = "network disabled" in str(err)
else:
    guarded = False

from features import text

vectors = text.embed(json.loads(sys.argv[1]))
print(json.dumps({"guarded": guarded, "vectors": vectors.tolist()}))
"""


def test_text_model_loads_and_encodes_offline(tmp_path: Path) -> None:
    env = os.environ | {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                        "HF_HOME": str(tmp_path / "hf-home")}
    child = subprocess.run([sys.executable, "-c", CHILD, json.dumps(TEXTS)], cwd=REPO_ROOT,
                           env=env, capture_output=True, text=True, timeout=120)
    assert child.returncode == 0, child.stderr
    out = json.loads(child.stdout.strip().splitlines()[-1])
    assert out["guarded"], "the child's network guard is not in place"
    v = np.asarray(out["vectors"], dtype=np.float32)
    assert v.shape == (len(TEXTS), EMBEDDING_DIM)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-4)
    drill, battery_drill, towel = v
    assert drill @ battery_drill > drill @ towel
