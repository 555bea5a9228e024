"""Small helpers shared by every layer (no dp-gym imports here)."""
