"""The verbs: one module per `tdx-image` command, the click layer only; the work is done by
the packages below (build, validate, verify, measure, vm, host)."""
