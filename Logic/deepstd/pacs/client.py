"""A DICOM server seen through DICOMweb (QIDO-RS, WADO-RS, STOW-RS with dicomweb-client), plus
Orthanc's REST API for what DICOMweb lacks (deleting a series, storage statistics).

Every failure becomes a one-line `PacsError`: `ServerUnreachable` (refused, unknown host, timeout:
the run stops, nothing else can work), `SeriesGone` (a series or instance the server no longer
has: that item fails, the run goes on), or `PacsError` itself (HTTP 4xx/5xx, an answer that is
not DICOMweb, a store the server refused).
"""

from __future__ import annotations

from typing import Any, Dict, Iterator, List, Optional, Sequence
from urllib.parse import urlparse

from ..errors import InputError

RAW_DATA_STORAGE = "1.2.840.10008.5.1.4.1.1.66"
#: WADO-RS: instances as stored (no transcoding: a JPEG original comes back as JPEG, read by deepstd.io)
AS_STORED = (("application/dicom", "*"),)
#: instances per STOW-RS request (one multipart body each)
STOW_BATCH = 16


class PacsError(InputError):
    """The DICOM server could not be used as asked: unreachable, wrong URL, refused, an HTTP error."""


class ServerUnreachable(PacsError):
    """No answer from the server (connection refused, unknown host, timeout): a run stops here."""


class SeriesGone(PacsError):
    """A series or instance the query listed is no longer on the server."""


def one_line(message: str) -> str:
    return " ".join(str(message).split())[:500]


class Server:
    """One DICOMweb service (`url`, e.g. http://pacs:8042/dicom-web) and, when it is Orthanc, its
    REST API (`orthanc_url`; by default `url` without a trailing /dicom-web)."""

    def __init__(
        self,
        url: str,
        timeout: float = 120.0,
        connect_timeout: float = 10.0,
        orthanc_url: Optional[str] = None,
        headers: Optional[Dict[str, str]] = None,
        retries: int = 3,
    ):
        from dicomweb_client.api import DICOMwebClient

        self.url = str(url).rstrip("/")
        parsed = urlparse(self.url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise PacsError(f"{url!r} is not a DICOMweb URL (expected http(s)://host[:port]/path)")
        try:
            _ = parsed.port
        except ValueError:
            raise PacsError(f"{url!r}: the port is not a number in 0..65535") from None
        self.timeout = float(timeout)
        self.headers = dict(headers or {})
        try:
            self.client = DICOMwebClient(self.url, headers=self.headers, timeout=(connect_timeout, timeout))
        except ValueError as exc:
            raise PacsError(f"{url!r} is not a usable DICOMweb URL ({exc})") from None
        # retried with exponential back-off: 408, 429, 503, 504 (a busy server); other errors at once
        self.client.set_http_retry_params(retry=True, max_attempts=max(1, retries), wait_exponential_multiplier=500)
        if orthanc_url is None and self.url.endswith("/dicom-web"):
            orthanc_url = self.url[: -len("/dicom-web")]
        self.orthanc_url = orthanc_url.rstrip("/") if orthanc_url else None
        self._is_orthanc: Optional[bool] = None
        self._session = self.client._session  # one connection pool for DICOMweb and REST calls

    # --- error translation --------------------------------------------------------------------
    def _fail(self, exc: BaseException, what: str, gone_on_404: bool = False) -> PacsError:
        import requests

        if isinstance(exc, PacsError):
            return exc
        where = f"the DICOM server at {self.url}"
        if isinstance(exc, requests.exceptions.Timeout):
            return ServerUnreachable(f"{where} did not answer within {self.timeout:g} s ({what})")
        if isinstance(exc, requests.exceptions.ConnectionError):
            text = str(exc)
            if "refused" in text.lower():
                reason = "connection refused: is the server running, and is the port right?"
            elif "resolve" in text.lower() or "Name or service not known" in text or "getaddrinfo" in text:
                reason = "unknown host name"
            elif "reset" in text.lower() or "aborted" in text.lower() or "RemoteDisconnected" in text:
                reason = "the connection was closed by the server"
            else:
                reason = one_line(text)[:160]
            return ServerUnreachable(f"cannot reach {where} ({what}): {reason}")
        if isinstance(exc, requests.exceptions.HTTPError):
            status = exc.response.status_code if exc.response is not None else 0
            reason = exc.response.reason if exc.response is not None else ""
            if status == 404 and gone_on_404:
                return SeriesGone(f"{what}: no longer on the server (HTTP 404)")
            if status == 404:
                return PacsError(
                    f"{where}: HTTP 404 Not Found for {what}; is the URL the DICOMweb root "
                    "(Orthanc: http://host:8042/dicom-web)?"
                )
            if status in (401, 403):
                return PacsError(f"{where}: access denied (HTTP {status} {reason}) for {what}; check the credentials")
            if status >= 500:
                return PacsError(f"{where}: server error (HTTP {status} {reason}) on {what}")
            return PacsError(f"{where}: HTTP {status} {reason} for {what}")
        if isinstance(exc, requests.exceptions.RequestException):
            return PacsError(f"{where}: {what} failed ({one_line(str(exc))[:200]})")
        if isinstance(exc, (ValueError, KeyError, TypeError)):  # an answer that is not DICOMweb JSON/multipart
            return PacsError(f"{where} did not answer {what} as a DICOMweb server does ({one_line(str(exc))[:160]})")
        return PacsError(f"{where}: {what} failed ({type(exc).__name__}: {one_line(str(exc))[:200]})")

    def _call(self, what: str, function, *args, gone_on_404: bool = False, **kwargs):
        try:
            return function(*args, **kwargs)
        except Exception as exc:
            raise self._fail(exc, what, gone_on_404) from None

    # --- QIDO-RS ------------------------------------------------------------------------------
    def search_series(self, filters: Dict[str, str]) -> List[dict]:
        """Series matching `filters` (DICOM keywords -> QIDO values), as plain dicts."""
        fields = ["NumberOfSeriesRelatedInstances", "SeriesDescription", "Modality", "StudyDate", "SeriesNumber"]
        found = self._call(
            "a series query (QIDO-RS)",
            self.client.search_for_series,
            fields=fields,
            search_filters=dict(filters),
            get_remaining=True,
        )
        if not isinstance(found, list):
            raise PacsError(f"the DICOM server at {self.url} answered a series query with something other than a list")
        out = []
        for item in found:
            study, series = _value(item, "0020000D"), _value(item, "0020000E")
            if not (study and series):
                continue
            count = _value(item, "00201209")
            out.append(
                {
                    "study_uid": str(study),
                    "series_uid": str(series),
                    "modality": str(_value(item, "00080060") or ""),
                    "description": str(_value(item, "0008103E") or ""),
                    "study_date": str(_value(item, "00080020") or ""),
                    "patient_id": str(_value(item, "00100020") or ""),
                    "instances": int(count) if count is not None else None,
                }
            )
        return out

    def search_instances(self, study_uid: str, series_uid: str) -> List[dict]:
        """[{"sop_uid", "sop_class"}] of one series."""
        found = self._call(
            f"the instance query of series {series_uid}",
            self.client.search_for_instances,
            study_instance_uid=study_uid,
            series_instance_uid=series_uid,
            fields=["SOPClassUID"],
            get_remaining=True,
        )
        return [
            {"sop_uid": str(_value(item, "00080018") or ""), "sop_class": str(_value(item, "00080016") or "")}
            for item in found or []
        ]

    # --- WADO-RS and STOW-RS ------------------------------------------------------------------
    def iter_series(self, study_uid: str, series_uid: str) -> Iterator[Any]:
        """The instances of a series as pydicom Datasets, as stored, streamed one by one."""
        what = f"series {series_uid}"
        iterator = self._call(
            what, self.client.iter_series, study_uid, series_uid, media_types=AS_STORED, gone_on_404=True
        )
        while True:
            try:
                item = next(iterator)
            except StopIteration:
                return
            except Exception as exc:
                raise self._fail(exc, what, gone_on_404=True) from None
            yield item

    def retrieve_series(self, study_uid: str, series_uid: str) -> List[Any]:
        return self._call(
            f"series {series_uid}",
            self.client.retrieve_series,
            study_uid,
            series_uid,
            media_types=AS_STORED,
            gone_on_404=True,
        )

    def retrieve_instance(self, study_uid: str, series_uid: str, sop_uid: str):
        return self._call(
            f"instance {sop_uid}",
            self.client.retrieve_instance,
            study_uid,
            series_uid,
            sop_uid,
            media_types=AS_STORED,
            gone_on_404=True,
        )

    def store(self, datasets: Sequence[Any], what: str = "a store (STOW-RS)") -> int:
        """Store datasets (in batches of `STOW_BATCH`); a PacsError unless the server reports every
        one stored. Returns how many were stored."""
        stored = 0
        for start in range(0, len(datasets), STOW_BATCH):
            batch = list(datasets[start : start + STOW_BATCH])
            reply = self._call(what, self.client.store_instances, batch)
            failed = list(getattr(reply, "FailedSOPSequence", None) or [])
            if failed:
                item = failed[0]
                reason = getattr(item, "FailureReason", None)
                raise PacsError(
                    f"the DICOM server at {self.url} refused to store {len(failed)} of {len(batch)} instances "
                    f"(first: {getattr(item, 'ReferencedSOPInstanceUID', '?')}, failure reason "
                    f"{'0x%04X' % int(reason) if reason is not None else 'not given'})"
                )
            confirmed = reply.get("ReferencedSOPSequence", None) or []
            referenced = {str(getattr(i, "ReferencedSOPInstanceUID", "")) for i in confirmed}
            missing = [ds.SOPInstanceUID for ds in batch if referenced and str(ds.SOPInstanceUID) not in referenced]
            if missing:
                raise PacsError(f"the DICOM server at {self.url} did not confirm storing instance {missing[0]}")
            stored += len(batch)
        return stored

    # --- Orthanc REST -------------------------------------------------------------------------
    def _rest(self, method: str, path: str, what: str, data: Optional[str] = None, gone_on_404: bool = False):
        if not self.orthanc_url:
            raise PacsError(f"{self.url}: no Orthanc REST URL known (give orthanc_url)")
        url = self.orthanc_url + path
        response = self._call(
            what,
            self._session.request,
            method,
            url,
            data=data,
            headers=self.headers,
            timeout=(10.0, self.timeout),
        )
        try:
            response.raise_for_status()
        except Exception as exc:
            raise self._fail(exc, what, gone_on_404) from None
        return response

    def is_orthanc(self) -> bool:
        """True when `orthanc_url` answers /system as Orthanc does."""
        if self._is_orthanc is None:
            self._is_orthanc = False
            if self.orthanc_url:
                try:
                    system = self._rest("GET", "/system", "Orthanc's /system").json()
                    self._is_orthanc = isinstance(system, dict) and "ApiVersion" in system and "DicomAet" in system
                except (PacsError, ValueError):
                    self._is_orthanc = False
        return self._is_orthanc

    def orthanc_series_id(self, series_uid: str) -> str:
        """Orthanc's identifier of a series (SeriesGone if it has none)."""
        found = self._rest("POST", "/tools/lookup", f"the Orthanc lookup of series {series_uid}", data=series_uid)
        for entry in found.json() or []:
            if isinstance(entry, dict) and entry.get("Type") == "Series":
                return str(entry["ID"])
        raise SeriesGone(f"series {series_uid}: no longer on the server")

    def series_instances(self, series_uid: str) -> List[str]:
        """SOP Instance UIDs the server holds in a series (Orthanc REST)."""
        ident = self.orthanc_series_id(series_uid)
        listing = self._rest("GET", f"/series/{ident}/instances", f"series {series_uid}", gone_on_404=True).json()
        return sorted(str((i.get("MainDicomTags") or {}).get("SOPInstanceUID", "")) for i in listing)

    def series_statistics(self, series_uid: str) -> dict:
        """Orthanc's /series/{id}/statistics (CountInstances, DiskSize, UncompressedSize, …)."""
        ident = self.orthanc_series_id(series_uid)
        return self._rest("GET", f"/series/{ident}/statistics", f"series {series_uid}", gone_on_404=True).json()

    def statistics(self) -> dict:
        """Orthanc's /statistics (whole server: counts, TotalDiskSize, …)."""
        return self._rest("GET", "/statistics", "Orthanc's /statistics").json()

    def delete_series(self, series_uid: str) -> None:
        """DELETE /series/{id} through Orthanc's REST API (DICOMweb has no standard delete)."""
        ident = self.orthanc_series_id(series_uid)
        self._rest("DELETE", f"/series/{ident}", f"deleting series {series_uid}", gone_on_404=True)


def _value(item: dict, tag: str):
    """The first value of a DICOM JSON attribute, or None (PN as its Alphabetic text)."""
    values = (item.get(tag) or {}).get("Value") if isinstance(item, dict) else None
    if not values:
        return None
    value = values[0]
    if isinstance(value, dict):
        return value.get("Alphabetic")
    return value
