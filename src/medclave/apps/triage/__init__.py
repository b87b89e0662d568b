"""The crisis-triage chat: sealed conversations only the patient reopens, a deterministic crisis
screen ahead of the model, and provider alerts limited to what the patient agreed to share."""
