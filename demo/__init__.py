"""The bundled demo: a synthetic dataset with a real class hierarchy and a tiny CLIP pre-trained on its corpus."""
