"""`python -m services.scheduler`: run one scheduler replica against `NATS_URL`."""

import asyncio

from services.scheduler.app import create_app
from services.scheduler.settings import SchedulerSettings
from shared import tracing
from shared.service import configure_logging, serve
from shared.settings import from_environment


def main() -> None:
    configure_logging("scheduler")
    tracing.configure("scheduler")
    app = create_app(from_environment(SchedulerSettings), tune_gc=True)
    asyncio.run(serve(app, "scheduler"))


if __name__ == "__main__":
    main()
