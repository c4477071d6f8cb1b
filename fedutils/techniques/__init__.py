"""Layer 3, techniques: privacy, accounting, secure aggregation, compression, robust aggregation, attacks, personalization, LoRA. Imports core and loop."""
