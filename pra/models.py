"""Remediation models (see the remediation issue)."""
