"""agent.cloud.remembered: what the cloud asked for survives a restart, and a disk that
refuses to keep it is logged, not raised into the configurator."""

from __future__ import annotations

from pathlib import Path

from agent.cloud.remembered import SettingsState
from agent.testing import captured_logs


def test_values_are_read_back_after_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "settings.json"
    first = SettingsState(path)
    first.put("gw-1-setting", "GW1_40807", 600, "integer")
    first.save()

    again = SettingsState(path)

    assert {"value": 600, "form": "integer"} == again.get("gw-1-setting", "GW1_40807")
    assert not path.with_suffix(".tmp").exists()


def test_a_disk_that_refuses_the_file_is_logged_and_the_values_kept(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    state = SettingsState(blocker / "settings.json")  # its directory cannot exist
    state.put("g", "s", 1.5, None)

    with captured_logs() as logs:
        state.save()

    assert ["settings_state_not_saved"] == [e["event"] for e in logs]
    assert "error" == logs[0]["log_level"]
    assert {"value": 1.5, "form": None} == state.get("g", "s")


def test_an_unreadable_file_is_logged_and_the_agent_starts_without_it(tmp_path: Path) -> None:
    path = tmp_path / "settings.json"
    path.write_text("{not json")

    with captured_logs() as logs:
        state = SettingsState(path)

    assert ["settings_state_unreadable"] == [e["event"] for e in logs]
    assert state.get("g", "s") is None


def test_entries_of_the_wrong_shape_are_ignored_and_the_rest_kept(tmp_path: Path) -> None:
    path = tmp_path / "settings.json"
    path.write_text(
        '{"g": {"ok": {"value": 600, "form": "integer"}, "no_value": {"form": null},'
        ' "nested": {"value": [1, 2]}, "bad_form": {"value": 1, "form": 3}},'
        ' "not_a_group": "x", "also": 7}'
    )

    with captured_logs() as logs:
        state = SettingsState(path)

    assert {"value": 600, "form": "integer"} == state.get("g", "ok")
    assert [None, None, None] == [state.get("g", k) for k in ("no_value", "nested", "bad_form")]
    assert state.get("not_a_group", "x") is None
    assert [("settings_state_entries_ignored", 5)] == [(e["event"], e["count"]) for e in logs]


def test_a_file_that_is_not_an_object_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "settings.json"
    path.write_text("[1, 2, 3]")

    with captured_logs() as logs:
        state = SettingsState(path)

    assert state.get("g", "s") is None
    assert ["settings_state_entries_ignored"] == [e["event"] for e in logs]
