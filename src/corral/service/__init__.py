"""The workspace service: API, scheduler, leases, and the engine that drives backends."""
