"""Before any expensive stage: what a run will cost, and one-line refusals of runs that
cannot finish."""

from __future__ import annotations

import optuna
import pytest

from bitfront.errors import BitfrontError
from bitfront.models import load_local
from bitfront.paths import check_writable
from bitfront.planner.pipeline import Setup, search_settings
from bitfront.planner.preflight import check_disk, check_study, estimate
from bitfront.planner.study import CONFIG_ATTR, SETTINGS_ATTR, SearchConfig, StudyMismatchError
from bitfront.quant.calibration import CalibrationConfig, calibration_set
from bitfront.quant.candidates import QuantizerSettings, build_candidates
from bitfront.space.layers import layer_space

STAGES = ("calibration", "gptq", "sensitivity", "trials")


def test_the_cache_estimate_is_the_bytes_the_cache_takes(micro_pair, tmp_path):
    lm = load_local(micro_pair["pocket-ar-micro"], device="cpu")
    setup = Setup(quantizer=QuantizerSettings(group_size=32),
                  calibration=CalibrationConfig(samples=8, seq_len=64))
    space = layer_space(lm)
    cost = estimate(lm, space, setup, stages=STAGES, trials=10)
    cands = build_candidates(lm, space, calibration_set(lm, setup.calibration),
                             settings=setup.quantizer, root=tmp_path, show_progress=False)
    written = sum(f.stat().st_size for f in cands.directory.glob("*.safetensors"))
    assert cost.cache_bytes <= written <= cost.cache_bytes + 4096 * len(space.layers)
    assert set(cost.seconds) == {"calibration", "GPTQ", "sensitivity", "trials"}
    assert all(s > 0 for s in cost.seconds.values())
    model_bytes = sum(p.numel() * p.element_size() for p in lm.module.parameters())
    assert cost.memory_bytes > model_bytes
    assert "estimate: disk" in cost.text() and "peak memory" in cost.text()
    done = estimate(lm, space, setup, stages=STAGES, trials=10, cached_bytes=written)
    assert done.cache_bytes == 0 and done.seconds["GPTQ"] == 0


def test_outputs_and_disks_that_cannot_take_the_run_are_refused(tmp_path):
    with pytest.raises(BitfrontError, match="is free there"):
        check_disk(tmp_path, 1 << 62)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(BitfrontError, match="cannot write to"):
        check_writable(blocker / "out")
    check_writable(tmp_path / "new" / "dir")
    assert (tmp_path / "new" / "dir").is_dir()


def test_a_study_made_with_other_settings_is_refused_before_any_work(tmp_path):
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 's.db'}")
    made = search_settings(SearchConfig(trials=10), Setup())
    study = optuna.create_study(storage=storage, study_name="s")
    study.set_user_attr(SETTINGS_ATTR, made)
    study.set_user_attr(CONFIG_ATTR, {"model": "weights-a"})
    check_study(storage, "s", search_settings(SearchConfig(trials=99), Setup()), "weights-a")
    check_study(storage, "another-name", made, "weights-b")
    other_search = search_settings(SearchConfig(grouping="block"), Setup())
    with pytest.raises(StudyMismatchError, match=r"differs in: search\.grouping\)"):
        check_study(storage, "s", other_search, "weights-a")
    other_setup = search_settings(SearchConfig(), Setup(
        quantizer=QuantizerSettings(group_size=64)))
    with pytest.raises(StudyMismatchError, match=r"setup\.quantizer\.group_size"):
        check_study(storage, "s", other_setup, "weights-a")
    with pytest.raises(StudyMismatchError, match="another model"):
        check_study(storage, "s", made, "weights-b")
