"""Layer 3, techniques: privacy, accounting, secure aggregation, compression, robust aggregation, attacks. Imports core and loop."""
