"""`vlcofit doctor`: versions, devices and a self-check whose every line is ok or says why not."""
import io

import pytest

from vlcofit.cli import doctor
from vlcofit.cli.main import main

pytestmark = pytest.mark.timeout(180)


def test_doctor_reports_versions_devices_and_passes_its_self_check():
    out = io.StringIO()
    assert doctor.run_doctor(out=out)
    text = out.getvalue()
    for name in ("python", "torch", "av", "open_clip_torch", "transformers", "accelerate",
                 "torchcodec", "decord2", "ffmpeg (av)", "cpu", "cuda", "mps"):
        assert f"\n  {name} " in text, name
    assert [line.split()[1] for line in text.splitlines() if line.startswith("  ok ")] == \
        list(doctor.CHECKS)
    assert "FAIL" not in text


def test_a_failing_check_is_named_with_its_reason_and_fails_the_command(monkeypatch, capsys):
    def broken(folder):
        raise RuntimeError("no frames came back")

    monkeypatch.setattr(doctor, "CHECKS", {"decode": broken, "model": doctor.check_model})
    assert main(["doctor"]) == 2
    out, err = capsys.readouterr()
    assert "FAIL  decode   RuntimeError: no frames came back (at test_doctor.py:" in out
    assert "ok    model" in out
    assert "doctor: some checks failed" in err


def test_quick_doctor_runs_no_check(capsys):
    assert main(["doctor", "--quick"]) == 0
    out = capsys.readouterr().out
    assert "self-check" not in out and "torch" in out
