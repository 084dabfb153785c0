// TidemarkWire: see docs/dev/replication-interfaces.md
