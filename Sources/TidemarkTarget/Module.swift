// TidemarkTarget: see docs/dev/replication-interfaces.md
