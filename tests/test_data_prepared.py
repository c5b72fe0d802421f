"""Preprocessing (data/prepared.py): the phase-flip decision is the table's or the user's, said
in the log, and never a silent guess."""

from __future__ import annotations

import logging

import pandas as pd
import pytest
import torch

from ackmeans_torch.data.prepared import PreparedSource, PreprocessOptions
from ackmeans_torch.data.source import ArraySource
from ackmeans_torch.errors import InputError

CTF = {"rlnDefocusU": 1e4, "rlnDefocusV": 1e4, "rlnDefocusAngle": 0.0, "rlnVoltage": 300.0,
       "rlnSphericalAberration": 2.7, "rlnAmplitudeContrast": 0.1}


def _source(**columns) -> ArraySource:
    images = torch.randn(4, 32, 32, generator=torch.Generator().manual_seed(0))
    return ArraySource(images, pd.DataFrame({k: [v] * 4 for k, v in columns.items()}),
                       pixel_size=2.0)


def test_a_ctf_table_without_the_flipped_flag_is_refused_not_guessed():
    """ASPIRE and old RELION tables carry a CTF but no rlnCtfDataArePhaseFlipped: flipping them
    would flip already-flipped images twice, so the user is asked, naming the setting."""
    with pytest.raises(InputError, match="preprocess.phase_flip=true .* or false"):
        PreparedSource(_source(**CTF), PreprocessOptions())


@pytest.mark.parametrize("flag, options, flipped, reason", [
    (0, PreprocessOptions(), True, "rlnCtfDataArePhaseFlipped = 0"),
    (1, PreprocessOptions(), False, "rlnCtfDataArePhaseFlipped = 1"),
    (None, PreprocessOptions(phase_flip=False), False, "preprocess.phase_flip=false"),
    (None, PreprocessOptions(phase_flip=True), True, "preprocess.phase_flip=true"),
])
def test_the_decision_follows_the_table_or_the_user_and_is_logged(caplog, flag, options,
                                                                   flipped, reason):
    columns = dict(CTF) if flag is None else {**CTF, "rlnCtfDataArePhaseFlipped": flag}
    with caplog.at_level(logging.INFO, logger="ackmeans_torch.data.prepared"):
        prepared = PreparedSource(_source(**columns), options)
    assert prepared._flip is flipped and prepared.phase_flipped is (flipped or flag == 1)
    assert f"phase flip: {'yes' if flipped else 'no'} ({reason})" in caplog.text


def test_flipping_without_ctf_columns_is_refused():
    with pytest.raises(InputError, match="lack CTF columns"):
        PreparedSource(_source(rlnImagePixelSize=2.0), PreprocessOptions(phase_flip=True))
