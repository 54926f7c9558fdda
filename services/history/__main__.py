"""`python -m services.history`: run one history replica against `NATS_URL`."""

import asyncio

from services.history.app import create_app
from services.history.settings import HistorySettings
from shared.service import configure_logging, serve
from shared.settings import from_environment


def main() -> None:
    configure_logging("history")
    asyncio.run(serve(create_app(from_environment(HistorySettings)), "history"))


if __name__ == "__main__":
    main()
