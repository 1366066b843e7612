"""Tools around a bundle: Grad-CAM maps (geofg explain) and the ONNX export (geofg export)."""
