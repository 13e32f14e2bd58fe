"""Storage errors.

StorageError
 ├── StorageUnavailable   the backend cannot be reached or timed out: retry later
 └── UnknownBackend       the URL names no backend this build knows
"""


class StorageError(Exception):
    pass


class StorageUnavailable(StorageError):
    pass


class UnknownBackend(StorageError):
    pass
