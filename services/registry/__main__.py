"""`python -m services.registry`: run one registry replica against `NATS_URL`."""

import asyncio

from services.registry.app import create_app
from services.registry.settings import RegistrySettings
from shared.service import configure_logging, serve
from shared.settings import from_environment


def main() -> None:
    configure_logging("registry")
    asyncio.run(serve(create_app(from_environment(RegistrySettings)), "registry"))


if __name__ == "__main__":
    main()
