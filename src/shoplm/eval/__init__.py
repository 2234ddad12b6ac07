"""Offline evaluation: ranking metrics, protocols, reports and A/B statistics."""
