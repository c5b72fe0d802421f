"""Readers and writers of cryo-EM files: MRC stacks/volumes, RELION STAR, cryoSPARC .cs,
picker coordinate files. Every writer goes through :func:`atomic_output`."""
