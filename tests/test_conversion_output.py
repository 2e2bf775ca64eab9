"""Converters never lose what a user saved: non-empty output folders are refused without overwrite, and a failed
conversion leaves the old folder as it was."""

import pytest

from ssmvl.conversion import convert_vim_to_hf, convert_vmamba_to_hf
from ssmvl.conversion.output import check_out_dir, staged_output


def test_non_empty_folder_is_refused_and_kept(tmp_path):
    out = tmp_path / "model"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="--overwrite"):
        check_out_dir(out)
    with pytest.raises(FileExistsError):
        with staged_output(out):
            pass
    assert (out / "notes.txt").read_text() == "mine"


def test_failed_conversion_leaves_old_folder_untouched(tmp_path):
    out = tmp_path / "model"
    out.mkdir()
    (out / "config.json").write_text("old")
    with pytest.raises(RuntimeError):
        with staged_output(out, overwrite=True) as tmp:
            (tmp / "config.json").write_text("new")
            raise RuntimeError("parity failed")
    assert (out / "config.json").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no staging folder left behind


def test_success_swaps_in_and_source_is_protected(tmp_path):
    out = tmp_path / "model"
    with staged_output(out) as tmp:
        (tmp / "config.json").write_text("new")
    assert (out / "config.json").read_text() == "new"
    with pytest.raises(ValueError, match="checkpoint folder"):
        check_out_dir(tmp_path, source=tmp_path / "ckpt.pth")


@pytest.mark.parametrize("module", [convert_vim_to_hf, convert_vmamba_to_hf])
def test_image_converters_refuse_non_empty_out_before_reading(module, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    argv = ["--checkpoint", str(tmp_path / "missing.pth"), "--variant", "vim-tiny" if module is convert_vim_to_hf
            else "vmamba-tiny", "--out", str(out)]
    with pytest.raises(FileExistsError):
        module.main(argv)
    assert (out / "keep.txt").read_text() == "x"


def test_card_names_the_final_folder_not_the_staging_one(tmp_path):
    from ssmvl.conversion.output import save_converted
    from ssmvl.modeling import MambaLMConfig, MambaLMForCausalLM

    model = MambaLMForCausalLM(MambaLMConfig(vocab_size=32, hidden_size=16, num_hidden_layers=1, state_size=4))
    out = save_converted(tmp_path / "my-model", model, {"max_abs_diff": 0.0}, card=dict(family="mamba_lm"))
    card = (out / "README.md").read_text()
    assert 'from_pretrained("my-model"' in card and ".converting-" not in card
    assert (out / "parity_report.json").is_file() and [p.name for p in tmp_path.iterdir()] == ["my-model"]
