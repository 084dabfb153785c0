// TidemarkServerCore: see docs/dev/replication-interfaces.md
