"""Kandinsky 2.0 (ai-forever), which diffusers never added: its conditioning stem
(`conditioning`), its pipeline over diffusers and transformers modules (`pipeline`), and the
conversion of the hub's original files into a diffusers-layout folder (`conversion`)."""
