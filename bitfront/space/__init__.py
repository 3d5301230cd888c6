"""What can be chosen: quantizable layers, grouping, QuantSpec/BitPlan, memory, export."""
