"""Micrographs: reading (:mod:`.io`), a simulator with ground truth (:mod:`.simulate`) and particle
extraction (:mod:`.extract`)."""
