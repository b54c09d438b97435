"""The redaction stage: rules, detectors and the stage that masks values before telemetry leaves the node."""
