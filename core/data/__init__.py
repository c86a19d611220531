"""The purchase log and the event log: ingest, validation, integer codes, the training matrix."""
