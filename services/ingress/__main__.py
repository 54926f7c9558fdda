"""`python -m services.ingress`: serve the HTTP API with Granian against `NATS_URL`."""

from granian import Granian
from granian.constants import Interfaces

from services.ingress.settings import IngressSettings
from shared.service import configure_logging
from shared.settings import from_environment


def main() -> None:
    configure_logging("ingress")
    settings = from_environment(IngressSettings)
    Granian(
        "services.ingress.app:create_app_from_environment",
        factory=True,
        address=settings.ingress_host,
        port=settings.ingress_port,
        interface=Interfaces.ASGI,
        workers=settings.ingress_workers,
        log_access=False,
        # The server's own lines go to the root handler, so they come out as JSON too.
        log_dictconfig={"loggers": {"_granian": {"handlers": [], "propagate": True}}},
    ).serve()


if __name__ == "__main__":
    main()
