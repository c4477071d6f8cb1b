"""Layer 5, course tooling: environment check, TFF helper-process cleanup, widgets, the capstone. May import every layer."""
