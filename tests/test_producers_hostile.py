"""Producers' torch.save files under mutation: reading them raises a FormatError (or succeeds), nothing else.

Two kinds of damage: bytes flipped anywhere in the zip container, and bytes flipped inside the pickle with the zip
re-sealed (correct CRCs), so the mutations reach torch's restricted unpickler, the numpy allow-list and the field
checks of each reader.
"""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from codec.errors import FormatError
from codec.softlabels.augment import load_fkd_batch
from codec.softlabels.fkd import read_fkd_label_file
from codec.video.lvdd import read_lvdd_synthetic


def _sre2l() -> bytes:
    np.random.seed(0)
    cx = np.random.randint(8)
    bbox = [np.clip(cx - 2, 0, 8), np.clip(cx - 3, 0, 8), np.clip(cx + 2, 0, 8), np.clip(cx + 3, 0, 8)]  # numpy int64
    obj = [torch.rand(3, 4), torch.tensor([True, False, True]), torch.randperm(3), float(np.random.beta(1, 1)), bbox,
           torch.randn(3, 5).half()]
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _fkd() -> bytes:
    lab = np.zeros((3, 2, 2), np.float16)
    lab[:, 0] = [0, 1]
    lab[:, 1] = [0.5, 0.25]
    buf = io.BytesIO()
    torch.save([np.float16(np.random.rand(3, 4) * 0.5), np.array([True, False, True]), lab], buf)
    return buf.getvalue()


def _lvdd() -> bytes:
    g = torch.Generator().manual_seed(0)
    q = [torch.linalg.qr(torch.randn(d, d, generator=g))[0] for d in (2, 4, 3)]
    buf = io.BytesIO()
    torch.save({"cores": [torch.randn(2, 3, 2, generator=g)], "factors": [[q[0], q[1][:, :3], q[2][:, :2]]]}, buf)
    return buf.getvalue()


# torch warns about the protocol byte a mutation may change before refusing the pickle
pytestmark = pytest.mark.filterwarnings("ignore:Detected pickle protocol")

READERS = {"sre2l": (_sre2l, load_fkd_batch), "fkd": (_fkd, lambda p: read_fkd_label_file(p, 6, "marginal_smoothing")),
           "lvdd": (_lvdd, read_lvdd_synthetic)}


def _reseal(data: bytes, pickle_bytes: bytes) -> bytes:
    zin = zipfile.ZipFile(io.BytesIO(data))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
        for info in zin.infolist():
            z.writestr(info.filename, pickle_bytes if info.filename.endswith("data.pkl") else zin.read(info.filename))
    return out.getvalue()


def _pickle(data: bytes) -> bytes:
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        return z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))


@pytest.mark.parametrize("kind", sorted(READERS))
def test_unmutated_files_read(kind, tmp_path):
    make, read = READERS[kind]
    p = tmp_path / "f.tar"
    p.write_bytes(make())
    read(str(p))


@pytest.mark.parametrize("kind", sorted(READERS))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_files_raise_only_format_errors(kind, tmp_path, data):
    make, read = READERS[kind]
    base = make()
    inside = data.draw(st.booleans())
    raw = bytearray(_pickle(base) if inside else base)
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    p = tmp_path / "m.tar"
    p.write_bytes(_reseal(base, bytes(raw)) if inside else bytes(raw))
    try:
        read(str(p))
    except FormatError:
        pass
