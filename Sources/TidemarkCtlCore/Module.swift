// TidemarkCtlCore: see docs/dev/replication-interfaces.md
