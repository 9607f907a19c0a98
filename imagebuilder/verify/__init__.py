"""The verifier's side, offline: a real boot's event log (a TD's CCEL or a TPM log) replayed
and checked against the TD quote of the same boot (quote.py reads quotes v4 and v5) and against
what the image measures (checks.py), event by event."""
