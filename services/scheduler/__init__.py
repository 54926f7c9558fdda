"""The scheduler: parks one NATS `@at` timer per schedule trigger and turns ticks into starts."""
