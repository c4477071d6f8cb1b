"""Layer 5, course tooling: environment check, widgets, the capstone. May import every layer."""
