"""Particle pickers behind one contract (``base.py``): ``pick(micrograph) -> PickSet``, and for
trainable ones ``fit(micrographs, boxes)``. Built in: ``blob.py`` (LoG), ``template.py`` (FFT
NCC), ``cnn.py`` (PU-trained FCN with the Lightning Trainer); ``external.py`` runs Topaz,
relion_autopick or any command line."""
