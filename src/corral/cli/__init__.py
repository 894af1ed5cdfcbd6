"""The `corral` command line, a client of the service's REST API."""
