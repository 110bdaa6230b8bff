"""The throughput benchmark and the one-shot GPU session: tooling beside the library, not part of it."""
