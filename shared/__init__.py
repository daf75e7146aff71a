"""RadStream's common package: settings, contracts, ports and adapters, errors, observability."""
