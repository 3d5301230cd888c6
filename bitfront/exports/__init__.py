"""Files for deployment: the JSON plan, runtime configs and quantized checkpoints."""
