"""Synthetic DICOM files (a whole patient and study around a picture; a bare Secondary Capture) and a throwaway
Orthanc, for the tests of the input guard, the DICOM outputs and the PACS round trip."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from io import BytesIO
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from helpers.servers import free_port

DX_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
ORTHANC = "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"


def chest_dx(pixels: np.ndarray, *, patient_id: str = "TEST-0001", patient_name: str = "Doe^Jane",
             study_uid: str | None = None, body_part: str = "CHEST", modality: str = "DX",
             view: str = "PA") -> Dataset:
    """An uncompressed DX dataset holding `pixels` (uint8, H×W) with patient, study and series attributes."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = DX_STORAGE
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = DX_STORAGE
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = patient_name, patient_id, "20200101", "F"
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.StudyID, ds.AccessionNumber, ds.StudyDate, ds.StudyTime = "1", "ACC1", "20240102", "101010"
    ds.ReferringPhysicianName = ""
    ds.SeriesNumber, ds.InstanceNumber = 1, 1
    ds.Modality, ds.BodyPartExamined, ds.ViewPosition = modality, body_part, view
    ds.PatientOrientation = ["L", "F"]
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.Manufacturer = "Synthetic"
    pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = pixels.tobytes()
    return ds


def secondary_capture(arr: np.ndarray, **elements) -> bytes:
    """An 8-bit MONOCHROME2 Secondary Capture of `arr`, Modality DX unless `elements` say otherwise."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = arr.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(arr, np.uint8).tobytes()
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def to_bytes(ds: Dataset) -> bytes:
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


class Orthanc:
    """A throwaway Orthanc with the DICOMweb plugin on a free loopback port, one user, storage in `folder`."""

    def __init__(self, folder: Path, user: str = "torax", password: str = "s3cret"):
        self.folder, self.user, self.password = Path(folder), user, password
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/dicom-web"
        self.process = None

    def start(self, timeout: float = 120.0) -> Orthanc:
        config = {"Name": "torax-test", "HttpPort": self.port, "DicomServerEnabled": False,
                  "DicomPort": free_port(), "StorageDirectory": str(self.folder / "db"),
                  "IndexDirectory": str(self.folder / "db"), "RemoteAccessAllowed": False,
                  "AuthenticationEnabled": True, "RegisteredUsers": {self.user: self.password},
                  "Plugins": [DICOMWEB_PLUGIN], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
                  "HttpCompressionEnabled": False, "StorageCompression": False}
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "orthanc.json").write_text(json.dumps(config))
        self.log = open(self.folder / "orthanc.log", "wb")
        self.process = subprocess.Popen([ORTHANC, str(self.folder / "orthanc.json")], stdout=self.log,
                                        stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited: {(self.folder / 'orthanc.log').read_text()[-2000:]}")
            if self.answers():
                return self
            time.sleep(0.2)
        self.stop()
        raise RuntimeError("Orthanc did not answer in time")

    def answers(self) -> bool:
        import requests

        try:
            return requests.get(f"{self.url}/studies", auth=(self.user, self.password), timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if getattr(self, "log", None):
            self.log.close()

    def clear(self) -> None:
        """Delete every patient, so a test sharing this server starts from an empty PACS."""
        import requests

        base, auth = self.url.removesuffix("/dicom-web"), (self.user, self.password)
        for patient in requests.get(f"{base}/patients", auth=auth, timeout=30).json():
            requests.delete(f"{base}/patients/{patient}", auth=auth, timeout=30).raise_for_status()

    def client(self):
        from dicomweb_client.api import DICOMwebClient
        from dicomweb_client.session_utils import create_session_from_user_pass

        return DICOMwebClient(self.url, session=create_session_from_user_pass(self.user, self.password))

    def store(self, *datasets: Dataset) -> None:
        self.client().store_instances(list(datasets))


def orthanc_available() -> bool:
    return Path(ORTHANC).exists() and Path(DICOMWEB_PLUGIN).exists() and shutil.which(ORTHANC) is not None \
        and os.access(ORTHANC, os.X_OK)


class StubDicomWeb:
    """A misbehaving DICOMweb server on a loopback port: `answer(path) -> (status, content type, body)` answers every
    GET (without Content-Length when not `length`: the body ends when the connection closes), `requests` counts
    them. With `tls` (paths from `tls_files`) it speaks HTTPS, asking for a client certificate when `client_ca`."""

    def __init__(self, answer, tls: dict | None = None, client_ca: bool = False, length: bool = True):
        import ssl
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        stub = self
        self.requests = 0

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                stub.requests += 1
                status, content_type, body = answer(self.path)
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                if length:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        scheme = "http"
        if tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(tls["server_cert"], tls["server_key"])
            if client_ca:
                context.verify_mode = ssl.CERT_REQUIRED
                context.load_verify_locations(tls["ca"])
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
            scheme = "https"
        self.url = f"{scheme}://127.0.0.1:{self.server.server_address[1]}/dicom-web"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def tls_files(folder: Path) -> dict:
    """A throwaway CA, a server certificate for 127.0.0.1 and a client certificate, both signed by it (PEM files)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    paths = {}

    def issue(name, key, issuer_name, issuer_key, ca=False, san=None):
        builder = x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])) \
            .issuer_name(issuer_name).public_key(key.public_key()).serial_number(x509.random_serial_number()) \
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1)) \
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    def write(stem, cert, key):
        paths[f"{stem}_cert" if stem != "ca" else "ca"] = folder / f"{stem}.crt"
        (folder / f"{stem}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        paths[f"{stem}_key"] = folder / f"{stem}.key"
        (folder / f"{stem}.key").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Torax test CA")])
    ca = issue("Torax test CA", ca_key, ca_name, ca_key, ca=True)
    write("ca", ca, ca_key)
    for stem, san in (("server", [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), ("client", None)):
        key = ec.generate_private_key(ec.SECP256R1())
        write(stem, issue(f"torax-{stem}", key, ca_name, ca_key, san=san), key)
    return {k: str(v) for k, v in paths.items()}
