"""The chaos tier runs on the real dev cluster: the integration fixtures apply here too."""

from tests.integration.conftest import dev_env  # noqa: F401
