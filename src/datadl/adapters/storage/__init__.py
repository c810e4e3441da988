"""BlobStore adapters over fsspec: a local folder, fsspec's memory filesystem and S3."""

from datadl.adapters.storage.fsspec import FsspecBlobStore, check_storage_key

__all__ = ["FsspecBlobStore", "check_storage_key"]
