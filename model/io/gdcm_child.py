"""GDCM, kept at arm's length: on some damaged codestreams it throws an uncaught C++ exception that aborts the
interpreter, so it only ever runs in a short-lived child interpreter fed through pipes (nothing on disk), costing
about half a second per file. The parent sends ``(bytes, max_pixels, has_preamble)``; the child answers with a
pickled :class:`Decoded` or :class:`DecodeError` (or None when something unanticipated went wrong there).
"""
from __future__ import annotations

import importlib.util
import os
import pickle
import subprocess
import sys

import numpy as np
from pydicom.encaps import generate_frames

from model.io.base import Decoded, DecodeError, UnreadableImage
from model.io.dicom_values import int_attr

IN_CHILD = False
"""True inside the child interpreter: only there may pydicom's GDCM plugin (or GDCM directly) be used."""

TIMEOUT_S = 120

_CHILD_CODE = "import sys; sys.path.insert(0, {root!r}); from model.io.gdcm_child import child_main; child_main()"

_UNPICKLING_ERRORS = (pickle.UnpicklingError, EOFError, AttributeError, ImportError, IndexError, TypeError,
                      ValueError)


def installed() -> bool:
    try:
        return importlib.util.find_spec("gdcm") is not None
    except (ImportError, ValueError):
        return False


def undecodable_message(ts_name: str) -> str:
    return (
        f"This DICOM file uses {ts_name} compression, and its image could not be decoded here "
        "(the data may be damaged, or no installed decoder supports this variant of the compression)."
    )


def decode_in_child(data: bytes, max_pixels: int, has_preamble: bool, ts_name: str) -> Decoded:
    """Decode in a fresh child interpreter: a crash there must not take the app down. The child's stderr is
    discarded so that nothing it might print reaches the logs."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    payload = pickle.dumps((data, max_pixels, has_preamble), protocol=pickle.HIGHEST_PROTOCOL)
    try:
        done = subprocess.run(
            [sys.executable, "-c", _CHILD_CODE.format(root=root)],
            input=payload, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, timeout=TIMEOUT_S, check=False,
        )
        result = pickle.loads(done.stdout) if done.returncode == 0 and done.stdout else None
    except subprocess.TimeoutExpired:
        raise UnreadableImage(
            f"This DICOM file uses {ts_name} compression, and decoding it took too long; it may be damaged."
        ) from None
    except (OSError, *_UNPICKLING_ERRORS):
        result = None
    if isinstance(result, DecodeError):
        raise type(result)(result.message) from None
    if isinstance(result, Decoded):
        return result
    raise UnreadableImage(undecodable_message(ts_name))


def child_main() -> None:
    """Child-process entry point: read the request from stdin, decode with GDCM allowed, write the reply. Native
    libraries may print to stdout, so the reply goes to a private copy of the original stdout while fd 1 is
    pointed at stderr."""
    global IN_CHILD
    IN_CHILD = True
    from model.io.dicom import decode_dicom  # not at the top: model.io.dicom imports this module

    reply = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    data, max_pixels, has_preamble = pickle.loads(sys.stdin.buffer.read())
    try:
        result = decode_dicom(data, max_pixels, has_preamble=has_preamble)
    except DecodeError as err:
        result = err
    except Exception:  # the parent must get an answer whatever went wrong here; it reports "undecodable"
        result = None
    reply.write(pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL))
    reply.close()


def jpeg12_frames(ds, n_frames: int, scan: int, rows: int, cols: int):
    """Decode 12-bit monochrome JPEG Extended frames with GDCM directly, in memory (as pydicom's plugin does):
    pydicom refuses GDCM for 12-bit JPEG Extended, but GDCM >= 3.0.10 decodes it correctly. Child only."""
    import gdcm  # python-gdcm (BSD); optional

    signed = (int_attr(ds, "PixelRepresentation") or 0) == 1
    bits_stored = int_attr(ds, "BitsStored") or 12
    for index, src in enumerate(generate_frames(ds.PixelData, number_of_frames=n_frames)):
        if index >= scan:
            break
        fragment = gdcm.Fragment()
        fragment.SetByteStringValue(src)
        fragments = gdcm.SequenceOfFragments.New()
        fragments.AddFragment(fragment)
        element = gdcm.DataElement(gdcm.Tag(0x7FE0, 0x0010))
        element.SetValue(fragments.__ref__())
        image = gdcm.Image()
        image.SetNumberOfDimensions(2)
        image.SetDimensions((cols, rows, 1))
        image.SetDataElement(element)
        image.SetPhotometricInterpretation(gdcm.PhotometricInterpretation(gdcm.PhotometricInterpretation.MONOCHROME2))
        image.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.JPEGExtendedProcess2_4))
        image.SetPixelFormat(gdcm.PixelFormat(1, 16, bits_stored, bits_stored - 1, int(signed)))
        buffer = image.GetBuffer()
        raw = buffer.encode("utf-8", "surrogateescape") if isinstance(buffer, str) else bytes(buffer)
        if len(raw) < rows * cols * 2:
            raise ValueError("short frame")
        frame = np.frombuffer(raw, "<i2" if signed else "<u2", count=rows * cols).reshape(rows, cols)
        yield frame
