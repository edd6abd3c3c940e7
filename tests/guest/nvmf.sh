#!/bin/sh
# Guest side of the NVMe/TCP target test alone (run-all.sh runs it with the
# rest): hugepages, the NVMe controller on vfio-pci, then tests/guest_nvmf.rs
# (which loads the fabrics modules and brings loopback up itself).
set -u
hugepages.sh setup 192 || exit 1
hugepages.sh bind "$FASTLANE_NVME" || exit 1
/bin/guest_nvmf --test-threads=1 --nocapture
rc=$?
hugepages.sh reset
exit $rc
