"""Small archives for the tests of `python -m model archive score`: a hand-set bundle that needs no training, a
folder of a few tiny files (radiographs, a DICOM without extension, a picture that is not a chest, a truncated file,
a note), and a DICOMweb archive served by helpers.dicom.StubDicomWeb that can stop answering halfway."""
from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from helpers.bundles import brightness_model, write_bundle
from helpers.dicom import StubDicomWeb, chest_dx, to_bytes
from helpers.images import png_bytes, radiograph, toy_chest


def hand_set_bundles(root: Path) -> Path:
    """A bundles folder with `pneumonia-kermany` made of two hand-set 48×48 members (no training: a few seconds)."""
    root.mkdir(parents=True, exist_ok=True)
    write_bundle(root, "pneumonia-kermany", {"bright": brightness_model("bright"),
                                             "dim": brightness_model("dim", bias=-1.0)})
    return root


def image_folder(root: Path) -> dict[str, str]:
    """Write the test archive under `root`; returns {relative path: what it is}: "image" files get a probability,
    "error" files an error row, "other" files are skipped."""
    files = {}

    def put(rel: str, data: bytes, kind: str):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        files[rel] = kind

    for i in range(3):
        put(f"ward-a/chest-{i}.png", png_bytes(radiograph((96 + 8 * i, 88), pneumonia=i == 1, seed=i)), "image")
    put("ward-b/IM000001", to_bytes(chest_dx(radiograph((100, 90), seed=7))), "image")  # DICOM, no extension
    put("ward-b/toy.jpg", png_bytes(toy_chest((96, 88))), "image")  # not a chest radiograph: no label
    put("ward-b/cut.png", png_bytes(radiograph((96, 88), seed=9))[:150], "error")
    put("notes.txt", b"reader notes", "other")
    return files


class FakeDicomWeb:
    """A DICOMweb archive on a loopback port (QIDO-RS studies → series → instances, WADO-RS instances as multipart):
    `studies` maps StudyDate (YYYYMMDD) → DX datasets. `fail_after(n)`: after n more instance retrievals it answers
    503 to everything (a server going down); `recover()` brings it back. `fetched` counts instance retrievals."""

    def __init__(self, studies: dict[str, list]):
        self.instances = {}  # (study, series, sop) → bytes
        self.dates = {}
        for date, datasets in studies.items():
            for ds in datasets:
                ds.StudyDate = date
                self.instances[(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)] = to_bytes(ds)
                self.dates[ds.StudyInstanceUID] = date
        self.fetched, self.budget = 0, None
        self.stub = StubDicomWeb(self.answer)
        self.url = self.stub.url

    def fail_after(self, n: int) -> None:
        self.budget = n

    def recover(self) -> None:
        self.budget = None

    def stop(self) -> None:
        self.stub.stop()

    def answer(self, path: str):
        url = urlparse(path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        parts = url.path.removeprefix("/dicom-web/").strip("/").split("/")
        if self.budget is not None and self.budget <= 0:
            return 503, "text/plain", b"down"
        if len(parts) == 6:  # studies/X/series/Y/instances/Z
            if self.budget is not None:
                self.budget -= 1
            self.fetched += 1
            data = self.instances[(parts[1], parts[3], parts[5])]
            body = (b"--xyz\r\nContent-Type: application/dicom\r\n\r\n" + data + b"\r\n--xyz--\r\n")
            return 200, 'multipart/related; type="application/dicom"; boundary=xyz', body
        if int(query.get("offset", 0)) > 0:
            return 200, "application/dicom+json", b"[]"
        keys = self.instances
        if parts == ["studies"]:
            since = query.get("StudyDate", "-").split("-")[0]
            found = [{"0020000D": _v(s), "00080020": _v(d)} for s, d in self.dates.items() if d >= since]
        elif len(parts) == 3:  # studies/X/series
            found = [{"0020000D": _v(st), "0020000E": _v(se), "00080060": {"vr": "CS", "Value": ["DX"]}}
                     for st, se in dict.fromkeys((k[0], k[1]) for k in keys) if st == parts[1]]
        else:  # studies/X/series/Y/instances
            found = [{"00080018": _v(k[2])} for k in keys if k[:2] == (parts[1], parts[3])]
        return 200, "application/dicom+json", json.dumps(found).encode()


def _v(value: str) -> dict:
    return {"vr": "UI", "Value": [value]}


def dicom_studies(n_per_date: dict[str, int]) -> dict[str, list]:
    """{date: n} → {date: n small DX datasets, one study each}."""
    out, seed = {}, 100
    for date, n in n_per_date.items():
        out[date] = []
        for _ in range(n):
            seed += 1
            out[date].append(chest_dx(radiograph((96, 88), seed=seed)))
    return out
