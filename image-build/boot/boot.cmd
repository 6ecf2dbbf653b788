# AFRA boot script (U-Boot; `mkimage -T script` makes boot.scr of it).
#
# Two systems, A and B, each a kernel partition (FAT: Image, initrd.img) and a root
# partition (EROFS):   A = kernel 2, root 4;   B = kernel 3, root 5.
#
# The boot state is RAUC's: BOOT_ORDER ("A B" tries A first) and BOOT_A_LEFT, BOOT_B_LEFT
# (attempts left). It is kept twice on the boot partition, bootstate.0 and bootstate.1, in
# U-Boot's redundant environment format ([crc32][generation][variables]), which
# fw_printenv/fw_setenv (libubootenv, and so RAUC) read and write through /etc/fw_env.config.
# Both sides read the copy with the good checksum and the later generation and write the
# other one, so a write cut off by a power loss leaves the previous state, never none.
#
# Every boot takes one attempt from the first slot in BOOT_ORDER that has any left and writes
# the state back before the kernel loads: a hang anywhere later (the watchdog resets the
# board) still counts. When the booted system has passed its self-test it runs
# `rauc status mark-active`, which puts the slot first and gives it its attempts back; a slot
# whose attempts run out is skipped and the other one boots. Counters stay at 9 or below:
# `setexpr` writes hex and `test -gt` reads decimal (RAUC's boot-attempts is 3).
#
# Debian's u-boot-rpi (Raspberry Pi 4, SD card or USB; the Pi firmware's device tree) and
# u-boot-qemu (qemu -M virt; virtio; qemu's device tree) both run it: distro boot sets
# devtype, devnum and distro_bootpart before it runs this script. Lines starting "afra:" are
# what the tests read on the serial console.

setenv afra_attempts 3
setenv afra_size 0x1000
setexpr afra_isize ${afra_size} - 1
# Scratch memory for the state: the initrd is loaded elsewhere, later.
setexpr afra_b0 ${ramdisk_addr_r} + 0
setexpr afra_b1 ${ramdisk_addr_r} + 0x10000
setexpr afra_tmp ${ramdisk_addr_r} + 0x20000
setenv afra_part ${devtype} ${devnum}:${distro_bootpart}

# -- read: both copies, the older imported first so the newer wins when it is whole -------
setenv afra_ld0 0
setenv afra_ld1 0
setenv afra_f0 0
setenv afra_f1 0
if fatload ${afra_part} ${afra_b0} bootstate.0 ${afra_size}; then
    setenv afra_ld0 1
    setexpr afra_p ${afra_b0} + 4
    setexpr.b afra_f0 *${afra_p}
fi
if fatload ${afra_part} ${afra_b1} bootstate.1 ${afra_size}; then
    setenv afra_ld1 1
    setexpr afra_p ${afra_b1} + 4
    setexpr.b afra_f1 *${afra_p}
fi
# The later generation, as libubootenv decides it: the higher one, and 0 comes after ff.
setenv afra_new 0
if itest ${afra_f1} -gt ${afra_f0}; then
    setenv afra_new 1
fi
if itest ${afra_f0} == ff && itest ${afra_f1} == 0; then
    setenv afra_new 1
fi
if itest ${afra_f1} == ff && itest ${afra_f0} == 0; then
    setenv afra_new 0
fi
if test ${afra_new} = 1; then
    setenv afra_order "0 1"
else
    setenv afra_order "1 0"
fi

# A copy is [crc][generation][variables]; `env import -c` wants [crc][variables], so the
# checksum is moved up one byte over the generation before the import.
setenv afra_import 'cp.b ${afra_b} ${afra_tmp} 4; setexpr afra_p ${afra_b} + 1; cp.b ${afra_tmp} ${afra_p} 4; env import -c ${afra_p} ${afra_isize} BOOT_ORDER BOOT_A_LEFT BOOT_B_LEFT'

setenv BOOT_ORDER
setenv BOOT_A_LEFT
setenv BOOT_B_LEFT
setenv afra_cur none
setenv afra_curf 0
for afra_n in ${afra_order}; do
    if test ${afra_n} = 0; then
        setenv afra_b ${afra_b0}
        setenv afra_ld ${afra_ld0}
        setenv afra_f ${afra_f0}
    else
        setenv afra_b ${afra_b1}
        setenv afra_ld ${afra_ld1}
        setenv afra_f ${afra_f1}
    fi
    if test ${afra_ld} = 1; then
        if run afra_import; then
            setenv afra_cur ${afra_n}
            setenv afra_curf ${afra_f}
        else
            echo "afra: bootstate.${afra_n} is damaged (bad checksum)"
        fi
    else
        echo "afra: bootstate.${afra_n} is missing"
    fi
done
if test "${afra_cur}" = "none"; then
    echo "afra: no readable boot state; starting from the defaults"
fi
test -n "${BOOT_ORDER}" || setenv BOOT_ORDER "A B"
test -n "${BOOT_A_LEFT}" || setenv BOOT_A_LEFT ${afra_attempts}
test -n "${BOOT_B_LEFT}" || setenv BOOT_B_LEFT ${afra_attempts}
echo "afra: boot state from copy ${afra_cur} (generation ${afra_curf}): order ${BOOT_ORDER}, A ${BOOT_A_LEFT} left, B ${BOOT_B_LEFT} left"

# -- write: into the copy that is not current, one generation on -----------------------
setenv afra_save 'if test ${afra_cur} = 0; then setenv afra_w 1; else setenv afra_w 0; fi; if itest ${afra_curf} == ff; then setenv afra_curf 0; else setexpr afra_curf ${afra_curf} + 1; fi; setexpr afra_p ${afra_b0} + 1; env export -c -s ${afra_isize} ${afra_p} BOOT_ORDER BOOT_A_LEFT BOOT_B_LEFT; cp.b ${afra_p} ${afra_tmp} 4; cp.b ${afra_tmp} ${afra_b0} 4; setexpr afra_p ${afra_b0} + 4; mw.b ${afra_p} ${afra_curf}; if fatwrite ${afra_part} ${afra_b0} bootstate.${afra_w} ${afra_size}; then setenv afra_cur ${afra_w}; echo "afra: saved bootstate.${afra_w} (generation ${afra_curf})"; else echo "afra: could not write bootstate.${afra_w}"; fi'

# -- choose: the first slot in the order with attempts left ------------------------------
setenv afra_slot
for BOOT_SLOT in "${BOOT_ORDER}"; do
    if test -n "${afra_slot}"; then
        # chosen; the rest of the order waits for another boot
    elif test "${BOOT_SLOT}" = "A"; then
        if test ${BOOT_A_LEFT} -gt 0; then
            setexpr BOOT_A_LEFT ${BOOT_A_LEFT} - 1
            setenv afra_slot A
            setenv afra_kernel_part 2
            setenv afra_root_part 4
        fi
    elif test "${BOOT_SLOT}" = "B"; then
        if test ${BOOT_B_LEFT} -gt 0; then
            setexpr BOOT_B_LEFT ${BOOT_B_LEFT} - 1
            setenv afra_slot B
            setenv afra_kernel_part 3
            setenv afra_root_part 5
        fi
    fi
done

if test -z "${afra_slot}"; then
    # Both slots back in the order (RAUC's mark-bad takes a slot out of it), the one first
    # in it still first, and each with its attempts again.
    setenv afra_first
    for BOOT_SLOT in "${BOOT_ORDER}"; do
        if test -z "${afra_first}"; then
            setenv afra_first ${BOOT_SLOT}
        fi
    done
    if test "${afra_first}" = "B"; then
        setenv BOOT_ORDER "B A"
    else
        setenv BOOT_ORDER "A B"
    fi
    echo "afra: no slot has attempts left; giving both ${afra_attempts} again (order ${BOOT_ORDER})"
    setenv BOOT_A_LEFT ${afra_attempts}
    setenv BOOT_B_LEFT ${afra_attempts}
    run afra_save
    reset
fi

echo "afra: booting slot ${afra_slot} (A ${BOOT_A_LEFT} left, B ${BOOT_B_LEFT} left)"
run afra_save

# -- boot -------------------------------------------------------------------------------
part uuid ${devtype} ${devnum}:${afra_root_part} afra_root_uuid
if test "${board}" = "rpi"; then
    setenv afra_console "console=ttyS1,115200 console=tty1"
else
    setenv afra_console "console=ttyAMA0,115200"
fi
# The device tree the firmware (Pi) or qemu handed to U-Boot.
if test -n "${fdt_addr}"; then
    setenv afra_fdt ${fdt_addr}
else
    setenv afra_fdt ${fdtcontroladdr}
fi

if fatload ${devtype} ${devnum}:${afra_kernel_part} ${kernel_addr_r} Image; then
    # The initrd goes well past the kernel's end (booti may move the kernel to its text
    # offset; the boards' default addresses leave too little room for Debian's kernel).
    setexpr afra_initrd ${kernel_addr_r} + ${filesize}
    setexpr afra_initrd ${afra_initrd} + 0x2000000
    setexpr afra_initrd ${afra_initrd} / 0x200000
    setexpr afra_initrd ${afra_initrd} * 0x200000
    if fatload ${devtype} ${devnum}:${afra_kernel_part} ${afra_initrd} initrd.img; then
        setenv bootargs "${afra_console} root=PARTUUID=${afra_root_uuid} rootfstype=erofs ro rootwait panic=10 rauc.slot=${afra_slot}"
        echo "afra: starting slot ${afra_slot}: ${bootargs}"
        booti ${kernel_addr_r} ${afra_initrd}:${filesize} ${afra_fdt}
    fi
fi

# Only reached when the slot's kernel could not be loaded or started: take its remaining
# attempts so that the next boot starts the other slot.
echo "afra: slot ${afra_slot} cannot start; the next boot tries the other slot"
if test "${afra_slot}" = "A"; then
    setenv BOOT_A_LEFT 0
else
    setenv BOOT_B_LEFT 0
fi
run afra_save
reset
