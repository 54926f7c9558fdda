"""`python -m services.runner`: run the runner until SIGINT or SIGTERM."""

import asyncio

from services.runner.app import create_app
from services.runner.flows import FlowModuleError, load_modules
from services.runner.http_flows import parse_networks
from services.runner.settings import RunnerSettings
from shared import tracing
from shared.service import configure_logging, serve
from shared.settings import from_environment

RUNNER_GC_THRESHOLD = 50_000


def main() -> None:
    configure_logging("runner")
    tracing.configure("runner")
    settings = from_environment(RunnerSettings)
    try:
        load_modules(settings.flow_modules)
        parse_networks(settings.runner_http_allowed_networks)
        settings.workspace_limits  # noqa: B018 (raises ValueError for a malformed entry)
    except (FlowModuleError, ValueError) as error:
        raise SystemExit(f"runner cannot start: {error}") from error
    # Fewer, larger collections: the runs in flight outlive young collections (see
    # `tune_collector`).
    asyncio.run(serve(create_app(settings), "runner", gc_threshold=RUNNER_GC_THRESHOLD))


if __name__ == "__main__":
    main()
