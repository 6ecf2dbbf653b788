# AFRA: two commands on a fresh Debian 12 machine: `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEBS := dcmtk orthanc chromium chromium-driver
RUN_DIR ?= data/emulation

.PHONY: run test test-faults lint typecheck pytest system-deps venv image image-test test-power label \
	bench-ingest bench-memory bench-uplink bench-download screenshots clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (Debian 12: apt-get install python3 python3-venv)"; exit 1; }
	@$(PYTHON) -c 'import ensurepip' 2>/dev/null || apt-get install -y -q python3-venv
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

# Debian packages the tests use as real peers and tools, installed only when missing: DCMTK and
# Orthanc (PACS, modalities), GDCM's tools (gdcmconv: JPEG 2000 test objects), Chromium
# (pages), and for the image's pieces U-Boot for qemu (the boot script runs in it), RAUC
# (bundle signatures), mtools, dosfstools and fdisk.
system-deps:
	@missing=""; \
	command -v storescu >/dev/null || missing="$$missing dcmtk"; \
	command -v Orthanc >/dev/null || [ -x /usr/sbin/Orthanc ] || missing="$$missing orthanc"; \
	command -v gdcmconv >/dev/null || missing="$$missing libgdcm-tools"; \
	[ -x /usr/bin/chromium ] || missing="$$missing chromium"; \
	[ -x /usr/bin/chromedriver ] || missing="$$missing chromium-driver"; \
	command -v qemu-system-aarch64 >/dev/null || missing="$$missing qemu-system-arm"; \
	[ -f /usr/lib/u-boot/qemu_arm64/u-boot.bin ] || missing="$$missing u-boot-qemu"; \
	command -v mkimage >/dev/null || missing="$$missing u-boot-tools"; \
	command -v fw_printenv >/dev/null || missing="$$missing libubootenv-tool"; \
	command -v rauc >/dev/null || missing="$$missing rauc"; \
	command -v mksquashfs >/dev/null || missing="$$missing squashfs-tools"; \
	command -v mcopy >/dev/null || missing="$$missing mtools"; \
	command -v mkfs.vfat >/dev/null || missing="$$missing dosfstools"; \
	command -v sfdisk >/dev/null || missing="$$missing fdisk"; \
	command -v systemd-analyze >/dev/null || missing="$$missing systemd"; \
	[ -x /usr/sbin/rsyslogd ] || missing="$$missing rsyslog"; \
	dpkg -s rsyslog-gnutls >/dev/null 2>&1 || missing="$$missing rsyslog-gnutls"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  if [ "$$(id -u)" != 0 ]; then echo "need root to apt-get install$$missing"; exit 1; fi; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get update -q && apt-get install -y -q --no-install-recommends $$missing; \
	fi

# The ports are etc/emulation.toml's (web 8080, DICOM 11112, hub 8443); when one is taken,
# `make run WEB_PORT=8081` (DICOM_PORT=, HUB_PORT=) chooses another. The addresses to open
# are printed once the box listens on them.
run: $(STAMP)
	@mkdir -p $(RUN_DIR)
	@echo "Starting AFRA in emulation with a local reference hub (data in $(RUN_DIR)); Ctrl-C stops it."
	@$(BIN)/afra --config etc/emulation.toml --set box.data_dir=\"$(RUN_DIR)\" \
	  $(if $(WEB_PORT),--set web.port=$(WEB_PORT)) $(if $(DICOM_PORT),--set dicom.port=$(DICOM_PORT)) \
	  emulate $(if $(HUB_PORT),--hub-port $(HUB_PORT))

lint: $(STAMP)
	$(BIN)/ruff check firmware web-setup image-build tests bench
	$(BIN)/ruff format --check firmware web-setup image-build tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP) system-deps
	$(BIN)/pytest -q

test: system-deps $(STAMP) lint typecheck pytest

# The fault suite at the issue's counts (make test runs a few rounds of each), with every
# test marked `attack` wherever it lives; ends with its figures (about 30 minutes).
test-faults: system-deps $(STAMP)
	AFRA_FAULTS=full $(BIN)/pytest -q tests -m "faults or attack"

# The appliance image (image-build/build.sh installs the builder's own tools when missing).
image: $(STAMP)
	image-build/build.sh

# Boots the image under qemu and checks boot, update, rollback and refusal (about 20 minutes;
# builds the image first when build/ has none).
image-test: system-deps $(STAMP)
	PYTHONPATH=image-build:. $(BIN)/python -m afra_image.imagetest

# Power cuts: the image under qemu, SIGKILLed at random moments during boot, receive and
# upload, CUTS times (50 by default: about 70 minutes under TCG), then the books at the hub.
# Needs the built image (make image); prints the seed, replay one with SEED=<n>.
CUTS ?= 50
test-power: system-deps $(STAMP)
	PYTHONPATH=image-build:. $(BIN)/python -m afra_image.powercut --cuts $(CUTS) \
	  $(if $(SEED),--seed $(SEED))

# Writes an image onto a card or an image file for one box and prints its label:
#   make label TARGET=/dev/sdX [IMAGE=build/afra-<v>-arm64.img.xz] [SETTINGS=site.toml] [YES=1]
IMAGE ?= $(wildcard build/afra-*-arm64.img.xz)
label: $(STAMP)
	@[ -n "$(TARGET)" ] || { echo "make label TARGET=<card device or image file> [IMAGE=...] [SETTINGS=...]"; exit 2; }
	PYTHONPATH=image-build $(BIN)/python -m afra_image.flash "$(IMAGE)" "$(TARGET)" \
	  $(if $(SETTINGS),--settings "$(SETTINGS)") $(if $(YES),--yes)

bench-ingest: system-deps $(STAMP)
	$(BIN)/python bench/ingest.py $(INGEST_ARGS)

bench-memory: system-deps $(STAMP)
	$(BIN)/python bench/memory.py

bench-uplink: system-deps $(STAMP)
	@command -v curl >/dev/null || apt-get install -y -q curl
	$(BIN)/python bench/uplink.py

bench-download: system-deps $(STAMP)
	@command -v curl >/dev/null || apt-get install -y -q curl
	@command -v zip >/dev/null || apt-get install -y -q zip
	$(BIN)/python bench/download.py

# Every page of the box and the hub's patient pages at 360 and 390 px wide, in English and
# Persian, into build/screenshots/ for a person to look at (tests/web/screenshots.py: the boxes
# and the hub the phone layout tests use; fails when a page is cut or wider than the screen).
screenshots: system-deps $(STAMP)
	$(BIN)/python -m tests.web.screenshots --out build/screenshots

clean:
	rm -rf $(VENV) data build bench/out *.egg-info
