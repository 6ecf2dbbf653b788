"""The boot script (image-build/boot/boot.cmd) in Debian's U-Boot for qemu, one power-on at
a time, with the boot state read and written by fw_printenv/fw_setenv as RAUC does."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.image.bootdisk import BootDisk, afra_lines


@pytest.fixture
def card(tmp_path: Path) -> BootDisk:
    return BootDisk(tmp_path).make()


def test_a_new_card_boots_a_and_counts_the_attempt_before_the_kernel_runs(card: BootDisk) -> None:
    assert card.state() == {"BOOT_ORDER": "A B", "BOOT_A_LEFT": "3", "BOOT_B_LEFT": "0"}
    console = card.boot()
    assert "afra: booting slot A (A 2 left, B 0 left)" in console
    assert "rauc.slot=A" in console and "root=PARTUUID=" in console
    # The kernel hangs (the power is cut): the attempt is already on the card.
    assert card.state()["BOOT_A_LEFT"] == "2"


def test_a_slot_that_keeps_hanging_is_left_for_the_other(card: BootDisk) -> None:
    card.set_state(BOOT_ORDER="B A", BOOT_B_LEFT="3")  # what `rauc install` leaves
    for left in ("2", "1", "0"):
        console = card.boot()
        assert f"afra: booting slot B (A 3 left, B {left} left)" in console
    console = card.boot()  # B is spent: the previous system starts again
    assert "afra: booting slot A (A 2 left, B 0 left)" in console
    assert card.state() == {"BOOT_ORDER": "B A", "BOOT_A_LEFT": "2", "BOOT_B_LEFT": "0"}


def test_mark_good_gives_the_slot_its_attempts_back(card: BootDisk) -> None:
    card.boot()
    card.set_state(BOOT_A_LEFT="3")  # `rauc status mark-good` after the self-test passed
    card.boot()
    assert card.state()["BOOT_A_LEFT"] == "2"


def test_a_slot_without_a_kernel_is_skipped_at_once(tmp_path: Path) -> None:
    card = BootDisk(tmp_path).make(kernels=("A",))
    card.set_state(BOOT_ORDER="B A", BOOT_B_LEFT="3")
    console = card.boot()
    assert "afra: slot B cannot start; the next boot tries the other slot" in console
    assert card.state()["BOOT_B_LEFT"] == "0"
    assert "afra: booting slot A" in card.boot()


def test_when_every_slot_is_spent_both_get_their_attempts_again(card: BootDisk) -> None:
    card.set_state(BOOT_A_LEFT="0", BOOT_B_LEFT="0")
    console = card.boot()
    assert "afra: no slot has attempts left; giving both 3 again (order A B)" in console
    assert "afra: booting slot A (A 2 left, B 3 left)" in card.boot()


def test_a_slot_marked_bad_comes_back_into_the_order_once_everything_is_spent(
    card: BootDisk,
) -> None:
    # RAUC's mark-bad took A out of the order; then B stopped starting too.
    card.set_state(BOOT_ORDER="B", BOOT_A_LEFT="0", BOOT_B_LEFT="0")
    assert "giving both 3 again (order B A)" in card.boot()
    for left in ("2", "1", "0"):
        assert f"afra: booting slot B (A 3 left, B {left} left)" in card.boot()
    assert "afra: booting slot A (A 2 left, B 0 left)" in card.boot()  # A is tried again


def test_a_damaged_copy_of_the_state_falls_back_to_the_other_copy(card: BootDisk) -> None:
    card.set_state(BOOT_ORDER="B A", BOOT_B_LEFT="3")  # generation 2, in copy 1
    card.corrupt(1)  # cut off while it was written
    console = card.boot()
    lines = afra_lines(console)
    assert "afra: bootstate.1 is damaged (bad checksum)" in lines
    # The previous state (copy 0), not the defaults: a torn write never picks a slot anew.
    assert "afra: booting slot A (A 2 left, B 0 left)" in lines
    assert card.state()["BOOT_ORDER"] == "A B"


def test_the_state_alternates_between_copies_so_one_is_always_whole(card: BootDisk) -> None:
    generations = []
    for _ in range(3):
        console = card.boot()
        saved = [line for line in afra_lines(console) if line.startswith("afra: saved")]
        generations.append(saved[-1])
    assert generations == [
        "afra: saved bootstate.1 (generation 2)",
        "afra: saved bootstate.0 (generation 3)",
        "afra: saved bootstate.1 (generation 4)",
    ]
    assert card.state()["BOOT_A_LEFT"] == "0"
