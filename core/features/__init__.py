"""Features: tables computed from the log, the Feast adapter, fast online reads, real-time updates."""
