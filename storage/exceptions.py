"""Storage errors.

StorageError
 ├── StorageUnavailable   the backend cannot be reached or timed out: retry later
 └── UnknownBackend       the URL names no backend this build knows
      └── BadStorageURL    the URL names a backend but says something wrong (a bad parameter,
                           rf larger than the cluster, rf different from the keyspace's)
"""


class StorageError(Exception):
    pass


class StorageUnavailable(StorageError):
    pass


class UnknownBackend(StorageError):
    pass


class BadStorageURL(UnknownBackend):
    pass
