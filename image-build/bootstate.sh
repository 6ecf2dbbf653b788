#!/usr/bin/env bash
# bootstate.sh DIR [ORDER A_LEFT B_LEFT]: the boot state's two copies, DIR/bootstate.0 and
# DIR/bootstate.1, in U-Boot's redundant environment format (what boot.scr and
# fw_printenv/fw_setenv read). A new card boots A; B is empty until the first update, so it
# starts with no attempts. Copy 0 is generation 1 and copy 1 generation 0 (the older).
set -euo pipefail
dir=$1 order=${2:-A B} a_left=${3:-3} b_left=${4:-0}
env=$(mktemp)
trap 'rm -f "$env"' EXIT
printf 'BOOT_ORDER=%s\nBOOT_A_LEFT=%s\nBOOT_B_LEFT=%s\n' "$order" "$a_left" "$b_left" > "$env"
mkenvimage -r -s 0x1000 -o "$dir/bootstate.0" "$env"
cp "$dir/bootstate.0" "$dir/bootstate.1"
printf '\000' | dd of="$dir/bootstate.1" bs=1 seek=4 conv=notrunc status=none
