"""The spend ledger and its reconciliation against provider billing exports."""
