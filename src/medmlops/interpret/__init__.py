"""Saliency maps (Captum) and their figures."""
