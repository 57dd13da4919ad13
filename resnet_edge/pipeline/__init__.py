"""The whole flow in one call, and its report: export, simplify, quantize, validate, benchmark."""
