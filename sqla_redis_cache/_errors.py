"""The package's public exception, in a module of its own at the bottom of the package.

Every layer raises :class:`ConfigurationError` for settings that cannot work (the
configuration, the Redis deployment settings, the clients' startup check, the status API's
guard); keeping it here lets each of them import it without importing the configuration.
"""

from __future__ import annotations


class ConfigurationError(ValueError):
    """Raised at construction time for settings that cannot work."""
