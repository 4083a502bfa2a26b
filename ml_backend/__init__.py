"""Label Studio ML backend for two-stage eDALD pixel-level active learning."""
